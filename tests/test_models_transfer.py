"""Transfer learning (`model.family: torchvision`): weights, frozen stages, lr groups, errors.

"Pretrained" weights are a seeded random-init state_dict saved to a file (nothing is ever
downloaded); the data is a tiny on-disk ImageFolder with mixed image modes and sizes.
"""

from __future__ import annotations

import copy

import pytest
import torch

from tunetrack.models import (
    DataConfig,
    ModelConfig,
    TrainConfig,
    Trainer,
    TunetrackError,
    choices,
    create,
    load_splits,
    nets,
)
from tunetrack.models.optimizers import param_groups
from tunetrack.models.transfer import (
    BACKBONES,
    IMAGENET_MEAN,
    TransferNet,
    cached_weights_path,
    stages,
)

from .transfer_support import CLASSES, make_image_folder, save_weights

SLOW_TO_BUILD = {"vgg11_bn", "vgg16_bn"}  # ~3 s each: 100M-parameter classifier init


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="module")
def splits(folder):
    return load_splits(DataConfig(name="imagefolder", path=str(folder), image_size=32,
                                  val_fraction=0.25, test_fraction=0.25))


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return save_weights(tmp_path_factory.mktemp("weights") / "resnet18.pth", "resnet18")


def _tv(**model) -> ModelConfig:
    return ModelConfig(family="torchvision", **{"backbone": "resnet18", **model})


def _net(model) -> TransferNet:
    return model.body


# ------------------------------------------------------------------------ data


def test_imagefolder_with_mixed_modes_and_sizes_loads_as_rgb(splits):
    assert splits.classes == list(CLASSES)
    assert splits.input_shape == (3, 32, 32)  # RGB / L / RGBA / P, 6 sizes -> one shape
    assert len(splits.train) + len(splits.val) + len(splits.test) == 36
    for split in (splits.train, splits.val, splits.test):
        assert split.x.min() >= 0 and split.x.max() <= 1


# ------------------------------------------------------------------ the network


def test_pretrained_weights_are_loaded_and_the_head_is_new(splits, weights):
    model = create(_tv(weights=str(weights)), splits.input_shape, 3, splits.mean, splits.std)
    file = torch.load(weights, weights_only=True)
    own = _net(model).backbone.state_dict()
    assert "fc.weight" not in own  # the file's 1000-class head is dropped ...
    for key, value in own.items():
        assert torch.equal(value, file[key]), key
    assert _net(model).head.out_features == 3  # ... and a head for 3 classes is new
    assert model(splits.val.x[:2]).shape == (2, 3)
    # a weights file is no ImageNet preset by itself: the dataset's statistics normalise
    assert model.normalize.mean.flatten().tolist() == pytest.approx(splits.mean)
    assert _net(model).input_size is None


def test_training_changes_only_unfrozen_params_and_frozen_bn_stats_stay(splits, weights):
    model = create(_tv(weights=str(weights), freeze=2), splits.input_shape, 3, splits.mean,
                   splits.std, seed=0)
    before = copy.deepcopy(model.state_dict())
    cfg = TrainConfig(max_epochs=2, batch_size=8, optimizer="sgd", lr=0.05, momentum=0.9,
                      weight_decay=1e-3, device="cpu")
    Trainer(model, cfg, splits).fit()
    after = model.state_dict()
    frozen = ("body.backbone.conv1.", "body.backbone.bn1.", "body.backbone.layer1.")
    for key, value in after.items():
        if key.startswith(frozen):  # weights, BN running mean/var and batch counters
            assert torch.equal(value, before[key]), key
    changed = [k for k in after if not k.startswith(frozen) and not k.startswith("normalize")
               and after[k].is_floating_point() and not torch.equal(after[k], before[k])]
    for needle in ("layer2.0.conv1.weight", "layer4.1.bn2.running_mean", "head.weight"):
        assert any(needle in k for k in changed), needle
    # every trainable float tensor of the unfrozen part moved
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all(name in changed for name in trainable)
    assert not any(name.startswith(frozen) for name in trainable)


def test_frozen_stages_stay_in_eval_mode_under_train(weights):
    net = _net(create(_tv(weights=str(weights), freeze=3), (3, 32, 32), 3))
    net.train()
    for name in ("conv1", "bn1", "layer1", "layer2"):
        assert not net.backbone.get_submodule(name).training, name
        assert not any(m.training for m in net.backbone.get_submodule(name).modules())
    assert net.backbone.layer3.training and net.head.training and net.training
    net.eval()
    assert not any(m.training for m in net.modules())
    assert all(not p.requires_grad for p in net.backbone.layer2.parameters())
    assert all(p.requires_grad for p in net.backbone.layer3.parameters())


def test_optimizer_groups_leave_frozen_params_out_and_scale_the_backbone_lr(splits, weights):
    model = create(_tv(weights=str(weights), freeze=4, backbone_lr_factor=0.1),
                   splits.input_shape, 3, splits.mean, splits.std)
    cfg = TrainConfig(max_epochs=1, batch_size=8, lr=0.01, scheduler="onecycle", device="cpu")
    trainer = Trainer(model, cfg, splits)
    groups = trainer.optimizer.param_groups
    head, backbone = ({id(p) for p in g["params"]} for g in groups)
    assert head == {id(p) for p in _net(model).head.parameters()}
    assert backbone == {id(p) for p in _net(model).backbone.layer4.parameters()}
    # OneCycleLR got one peak per group: the backbone's stays 10x lower
    assert [g["max_lr"] for g in groups] == pytest.approx([0.01, 0.001])
    assert groups[1]["lr"] == pytest.approx(groups[0]["lr"] * 0.1)
    trainer.fit()
    assert groups[1]["lr"] == pytest.approx(groups[0]["lr"] * 0.1)


def test_other_families_keep_one_group_at_train_lr(splits):
    model = create(ModelConfig(family="cnn", width=4, depth=1), splits.input_shape, 3)
    groups = param_groups(model, 0.02)
    assert len(groups) == 1 and groups[0]["lr"] == 0.02
    assert len(groups[0]["params"]) == len(list(model.parameters()))


def test_linear_probe_trains_only_the_head(splits):
    n_stages = len(stages("mobilenet_v3_small"))
    model = create(ModelConfig(family="torchvision", backbone="mobilenet_v3_small",
                               freeze=n_stages), splits.input_shape, 3)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"body.head.weight", "body.head.bias"}
    fit = Trainer(model, TrainConfig(max_epochs=1, batch_size=8, device="cpu"), splits).fit()
    assert fit.epochs_run == 1


def test_init_applies_to_the_head_only_when_pretrained(weights):
    def rows_orthonormal(w: torch.Tensor) -> bool:
        w = w.flatten(1)
        return torch.allclose(w @ w.T, torch.eye(len(w)), atol=1e-5)

    pretrained = _net(create(_tv(weights=str(weights), init="orthogonal"), (3, 32, 32), 3))
    assert rows_orthonormal(pretrained.head.weight)
    file = torch.load(weights, weights_only=True)
    assert torch.equal(pretrained.backbone.conv1.weight, file["conv1.weight"])
    scratch = _net(create(_tv(init="orthogonal"), (3, 32, 32), 3))
    assert rows_orthonormal(scratch.backbone.conv1.weight)  # the whole network
    assert rows_orthonormal(scratch.head.weight)


def test_grayscale_input_is_repeated_to_rgb_inside_the_model(weights):
    # dataset statistics: 1-channel normalise, then the channel is repeated
    gray = create(_tv(weights=str(weights)), (1, 16, 16), 3, [0.4], [0.2]).eval()
    x = torch.rand(4, 1, 16, 16)
    assert gray(x).shape == (4, 3)
    rgb = copy.deepcopy(gray)
    rgb.normalize = nets.Normalize([0.4] * 3, [0.2] * 3)
    assert torch.allclose(gray(x), rgb(x.repeat(1, 3, 1, 1)))
    # ImageNet statistics: the 3-channel mean/std broadcast over the gray channel
    imagenet = create(_tv(weights=str(weights), preprocess="imagenet", input_size=16),
                      (1, 16, 16), 3, [0.4], [0.2]).eval()
    assert torch.equal(imagenet(x), imagenet(x.repeat(1, 3, 1, 1)))


def test_digits_sized_gray_images_work_with_resnet18():
    model = create(_tv(), (1, 8, 8), 10, [0.3], [0.4], seed=0)
    assert model(torch.rand(2, 1, 8, 8)).shape == (2, 10)


def test_input_size_resizes_inside_the_model(weights):
    model = create(_tv(weights=str(weights), input_size=40), (3, 24, 24), 3).eval()
    seen = []
    _net(model).backbone.conv1.register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
    model(torch.rand(2, 3, 24, 24))
    assert seen == [torch.Size([2, 3, 40, 40])]


# -------------------------------------------------------- torchvision weights names


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty torchvision cache in tmp_path (TORCH_HOME), never the user's."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch" / "hub" / "checkpoints"


def test_enum_weights_not_cached_name_the_exact_path(hub):
    with pytest.raises(TunetrackError) as info:
        create(_tv(weights="IMAGENET1K_V1"), (3, 32, 32), 3)
    msg = str(info.value)
    assert str(hub / "resnet18-f37072fd.pth") in msg
    assert "model.weights" in msg and "never downloads" in msg and "\n" not in msg


@pytest.mark.parametrize("name", ["IMAGENET1K_V1", "DEFAULT", "ResNet18_Weights.IMAGENET1K_V1"])
def test_enum_weights_load_from_the_cache_with_the_imagenet_preset(hub, weights, name):
    import torchvision

    cached = save_weights(cached_weights_path(
        torchvision.models.ResNet18_Weights.IMAGENET1K_V1), "resnet18")
    assert cached.parent == hub
    model = create(_tv(weights=name), (3, 32, 32), 3, [0.5] * 3, [0.1] * 3)
    assert model.normalize.mean.flatten().tolist() == pytest.approx(IMAGENET_MEAN)
    assert _net(model).input_size == 224  # the preset's crop size ...
    assert torch.equal(_net(model).backbone.conv1.weight,
                       torch.load(weights, weights_only=True)["conv1.weight"])
    small = create(_tv(weights=name, input_size=32), (3, 32, 32), 3)
    assert _net(small).input_size == 32  # ... unless the study says otherwise


def test_weights_path_may_name_the_backbone(weights):
    template = str(weights.parent / "{backbone}.pth")
    model = create(_tv(weights=template), (3, 32, 32), 3)
    assert _net(model).head.out_features == 3


# ---------------------------------------------------------------------- errors


def _error(cfg: ModelConfig, shape=(3, 32, 32)) -> str:
    with pytest.raises(TunetrackError) as info:
        create(cfg, shape, 3)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def test_unknown_backbone_lists_the_allowed_ones():
    msg = _error(_tv(backbone="resnet19"))
    assert "model.backbone 'resnet19'" in msg and "did you mean 'resnet18'" in msg
    assert all(name in msg for name in choices.BACKBONES)


def test_freeze_too_large_names_field_backbone_and_maximum():
    msg = _error(_tv(freeze=6))
    assert "model.freeze 6" in msg and "resnet18" in msg and "0..5" in msg
    assert "stem, layer1, layer2, layer3, layer4" in msg


def test_weights_of_another_architecture_name_the_keys(tmp_path):
    resnet34 = save_weights(tmp_path / "resnet34.pth", "resnet34")
    msg = _error(_tv(weights=str(resnet34)))
    assert "does not fit backbone resnet18" in msg
    assert "missing" not in msg and "unexpected keys (layer1.2.conv1.weight, " in msg
    vgg_like = tmp_path / "other.pth"
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3),
                "conv1.weight": torch.zeros(8, 3, 3, 3)}, vgg_like)
    msg = _error(_tv(weights=str(vgg_like)))
    assert "1 unexpected keys (features.0.weight)" in msg
    assert "1 keys of another shape, file vs model (conv1.weight [8, 3, 3, 3] vs " \
        "[64, 3, 7, 7])" in msg
    assert "missing keys (bn1.weight, bn1.bias, bn1.running_mean, ...)" in msg


@pytest.mark.parametrize(("content", "needle"), [
    (None, "is not a file"),
    (b"not a torch file", "cannot load"),
    ([1, 2, 3], "does not hold a state_dict"),
])
def test_unreadable_weights_files(tmp_path, content, needle):
    path = tmp_path / "w.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    assert needle in _error(_tv(weights=str(path)))


def test_unknown_weights_name_lists_the_names():
    msg = _error(_tv(weights="IMAGENET1K_V7"))
    assert "IMAGENET1K_V1" in msg and "DEFAULT" in msg


@pytest.mark.parametrize(("model", "needle"), [
    ({"freeze": -1}, "model.freeze must be >= 0"),
    ({"backbone_lr_factor": 0.0}, "model.backbone_lr_factor must be > 0"),
    ({"preprocess": "imagenet1k"}, "unknown model.preprocess"),
    ({"backbone": "convnext_tiny"}, "at least 32x32 px, it would get 8x8"),
    ({"input_size": 0}, "model.input_size must be >= 1"),
])
def test_bad_numbers_and_sizes(model, needle):
    assert needle in _error(_tv(**model), shape=(3, 8, 8))


# ---------------------------------------------------------------- every backbone


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.slow) if n in SLOW_TO_BUILD else n for n in BACKBONES
])
def test_every_backbone_builds_runs_and_has_disjoint_covering_stages(name):
    """Minimum input side: 32 px for vgg and convnext (5 halvings), any for the others."""
    size = max(BACKBONES[name].min_size, 8)
    model = create(ModelConfig(family="torchvision", backbone=name), (3, size, size), 3)
    assert model.eval()(torch.rand(1, 3, size, size)).shape == (1, 3)
    backbone = _net(model).backbone
    owner: dict[int, str] = {}
    for stage in stages(name):
        for path in stage.modules:
            for p in backbone.get_submodule(path).parameters():
                assert id(p) not in owner, (stage.name, owner.get(id(p)))
                owner[id(p)] = stage.name
    assert set(owner) == {id(p) for p in backbone.parameters()}  # head excluded: it is new


def test_registries_match_the_published_choices():
    assert tuple(BACKBONES) == choices.BACKBONES
    assert "torchvision" in nets.FAMILIES and "torchvision" in choices.FAMILIES
