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
