"""Checkpoints: a save/load round trip predicts identically, and loading never unpickles code."""

from __future__ import annotations

import pytest
import torch

from tunetrack.models import (
    DataConfig,
    ModelConfig,
    TrainConfig,
    Trainer,
    TrialConfig,
    TunetrackError,
    create,
    load_checkpoint,
    load_splits,
    save_checkpoint,
)


@pytest.fixture(scope="module")
def trained():
    data = DataConfig(name="synthetic", n_samples=120, n_classes=3, shape=(2, 6, 6))
    splits = load_splits(data)
    cfg = TrialConfig(
        data=data,
        model=ModelConfig(family="cnn", depth=2, width=8, batch_norm=True, dropout=0.1,
                          init="kaiming_normal"),
        train=TrainConfig(max_epochs=2, device="cpu", batch_size=16),
    )
    torch.manual_seed(0)
    model = create(cfg.model, splits.input_shape, splits.n_classes, splits.mean, splits.std,
                   seed=0)
    Trainer(model, cfg.train, splits).fit()
    return model.eval(), cfg, splits


def test_round_trip_predicts_identically(trained, tmp_path):
    model, cfg, splits = trained
    path = save_checkpoint(tmp_path / "sub" / "model.pt", model, cfg, splits.classes,
                           splits.input_shape)
    assert path.is_file()
    loaded, loaded_cfg, classes = load_checkpoint(path)
    assert classes == splits.classes
    assert loaded_cfg == cfg  # the whole trial config comes back (shape tuple included)
    assert not loaded.training  # returned in eval mode
    with torch.no_grad():
        before, after = model(splits.test.x), loaded(splits.test.x)
    assert torch.equal(before, after)
    # normalisation statistics and batch-norm running stats travel with the weights
    assert loaded.normalize.mean.flatten().tolist() == pytest.approx(splits.mean)
    bn = [m for m in loaded.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bn and all(int(m.num_batches_tracked) > 0 for m in bn)
    # and a freshly created (untrained) net does not predict the same: the test can fail
    fresh = create(cfg.model, splits.input_shape, splits.n_classes).eval()
    with torch.no_grad():
        assert not torch.allclose(fresh(splits.test.x), before)


def test_load_passes_weights_only(trained, tmp_path, monkeypatch):
    model, cfg, splits = trained
    path = save_checkpoint(tmp_path / "m.pt", model, cfg, splits.classes, splits.input_shape)
    seen = []
    real_load = torch.load

    def spy(*args, **kwargs):
        seen.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    load_checkpoint(path)
    assert seen == [True]


CALLS: list[str] = []


def _side_effect(tag: str) -> str:
    CALLS.append(tag)
    return tag


class Payload:
    """Unpickling this runs `_side_effect`: what a malicious checkpoint would do."""

    def __reduce__(self):
        return (_side_effect, ("executed",))


def test_load_refuses_pickled_code(trained, tmp_path):
    model, cfg, splits = trained
    path = save_checkpoint(tmp_path / "m.pt", model, cfg, splits.classes, splits.input_shape)
    raw = torch.load(path, weights_only=True)
    raw["classes"] = Payload()
    evil = tmp_path / "evil.pt"
    torch.save(raw, evil)
    CALLS.clear()
    with pytest.raises(Exception, match=r"(?i)weights_only|unpickl|global"):
        load_checkpoint(evil)
    assert CALLS == []


def test_missing_checkpoint_raises(tmp_path):
    with pytest.raises(TunetrackError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


@pytest.mark.parametrize("weights", ["file", "DEFAULT"])
def test_transfer_checkpoint_loads_after_the_pretrained_file_is_gone(weights, tmp_path,
                                                                     monkeypatch):
    """The checkpoint holds every weight: the file the trial started from is not needed, and
    the network comes back with the same normalisation and input size (gray 16 px input:
    a file means the dataset's 1-channel statistics, a weights name ImageNet's and 224 px)."""
    import torchvision

    from tunetrack.models.transfer import cached_weights_path

    from .transfer_support import save_weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # never the user's cache
    if weights == "file":
        pretrained = save_weights(tmp_path / "w" / "resnet18.pth")
        value = str(tmp_path / "w" / "{backbone}.pth")
    else:
        pretrained = save_weights(cached_weights_path(
            torchvision.models.ResNet18_Weights.DEFAULT))
        value = weights
    shape, classes = (1, 16, 16), ["a", "b", "c"]
    cfg = TrialConfig(data=DataConfig(name="synthetic", shape=shape),
                      model=ModelConfig(family="torchvision", weights=value, freeze=2),
                      train=TrainConfig())
    model = create(cfg.model, shape, len(classes), [0.4], [0.2], seed=0).eval()
    path = save_checkpoint(tmp_path / "m.pt", model, cfg, classes, shape)
    pretrained.unlink()
    with pytest.raises(TunetrackError, match=r"model\.weights"):  # building it needs the file
        create(cfg.model, shape, len(classes))
    loaded, loaded_cfg, _ = load_checkpoint(path)
    assert loaded_cfg == cfg
    assert loaded.body.frozen == model.body.frozen
    imagenet = weights != "file"
    assert loaded.body.input_size == model.body.input_size == (224 if imagenet else None)
    assert len(loaded.normalize.mean.flatten()) == (3 if imagenet else 1)
    x = torch.rand(4, *shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
