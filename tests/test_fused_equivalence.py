"""Fused trials are exact: a member trained in a group of K = 4 matches the same trial
trained alone by the ordinary `Trainer` on the same batch order (CPU, float tolerance),
and no member's hyperparameters reach another member."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from tunetrack.models import (
    Classifier,
    EarlyStoppingConfig,
    ModelConfig,
    TrainConfig,
    Trainer,
    create,
)
from tunetrack.models.fused_fields import CPU_FUSE_MAX_MACS
from tunetrack.models.fused_net import fusing_pays, step_macs
from tunetrack.models.fused_train import FusedTrainer, Member

CPU = torch.device("cpu")
TOL = dict(rel=1e-4, abs=1e-5)


def _members(family: str, optimizer: str, scheduler: str, batch_norm: bool = True
             ) -> list[Member]:
    """Four members that differ in everything a member may differ in."""
    model = ModelConfig(family=family, depth=2, width=8 if family == "cnn" else 16,
                        batch_norm=batch_norm)
    # batch 20: the 66 train samples end in a short batch of 6. A last batch of 2 (batch 16)
    # leaves batch-norm's input gradient at rounding noise (two samples normalise to +-1
    # whatever they are), which Adam's m / sqrt(v) turns into lr-sized steps whose sign the
    # last bit decides: the grouped and the plain matmuls then drift apart by 1e-3
    train = TrainConfig(device="cpu", batch_size=20, max_epochs=4, optimizer=optimizer,
                        scheduler=scheduler, step_size=1)
    recipes = [  # init, dropout | lr, weight decay, momentum, nesterov, l1, smoothing, seed, knob
        ("default", 0.0, 1e-2, 0.0, 0.9, False, 0.0, 0.0, 0, 0.5),
        ("xavier_uniform", 0.3, 3e-3, 1e-3, 0.8, True, 1e-4, 0.1, 1, 0.3),
        ("kaiming_normal", 0.1, 2e-2, 0.0, 0.5, False, 0.0, 0.0, 2, 0.9),
        ("orthogonal", 0.0, 5e-3, 1e-2, 0.0, False, 1e-3, 0.2, 3, 0.7),
    ]
    scale = 0.1 if optimizer == "rmsprop" else 1.0  # steps of ~lr per weight whatever the grad
    return [Member(replace(model, init=init, dropout=dropout),
                   replace(train, lr=lr * scale, weight_decay=wd, momentum=m,
                           nesterov=nesterov, l1=l1, label_smoothing=ls, seed=seed,
                           step_gamma=knob, exp_gamma=knob, plateau_factor=knob,
                           onecycle_pct_start=knob / 2))
            for init, dropout, lr, wd, m, nesterov, l1, ls, seed, knob in recipes]


def _solo(member: Member, splits, group_seed: int, callbacks=()):
    """The member alone, by the ordinary trainer, on the group's batch order."""
    model = create(member.model, splits.input_shape, splits.n_classes, splits.mean, splits.std,
                   seed=member.train.seed)
    trainer = Trainer(model, member.train, splits, device=CPU, callbacks=callbacks)
    trainer.gen = torch.Generator().manual_seed(group_seed)  # the group's data stream
    trainer.aug_gen = torch.Generator().manual_seed(group_seed + 1)
    return trainer.fit(), trainer.model


def _assert_same_history(fused, solo) -> None:
    assert len(fused.history) == len(solo.history)
    assert fused.stop_reason == solo.stop_reason and fused.best_epoch == solo.best_epoch
    for f, s in zip(fused.history, solo.history, strict=True):
        assert f.epoch == s.epoch
        assert f.lr == pytest.approx(s.lr, rel=1e-12)
        for key in ("train_loss", "val_loss", "train_accuracy", "val_accuracy"):
            assert getattr(f, key) == pytest.approx(getattr(s, key), **TOL), (key, f.epoch)


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module, tol: float = 1e-4) -> None:
    """Float tolerance relative to the value too: BatchNorm running variances reach ~5, where
    a summation-order difference (torch 2.4's CPU kernels: 1.9422 vs 1.9424) exceeds 1e-4."""
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.allclose(sa[key].float(), sb[key].float(), atol=tol, rtol=tol), key


def _fit(members, splits, **kwargs):
    results = FusedTrainer(members, splits, device=CPU, **kwargs).fit()
    return {r.member.train.seed: r for r in results}


CASES = [("mlp", "adam", "none"), ("mlp", "sgd", "step"), ("mlp", "rmsprop", "plateau"),
         ("cnn", "adamw", "onecycle"), ("cnn", "sgd", "cosine"), ("mlp", "adamw", "exponential")]


def test_members_may_differ_in_optimizer_and_schedule(splits):
    kinds = [("sgd", "onecycle"), ("adam", "step"), ("rmsprop", "cosine"), ("adamw", "plateau")]
    members = [replace(m, train=replace(m.train, optimizer=o, scheduler=sched,
                                        lr=m.train.lr * (0.1 if o == "rmsprop" else 1)))
               for m, (o, sched) in zip(_members("cnn", "adam", "none"), kinds, strict=True)]
    fused = _fit(members, splits)
    for member in members:
        fit, model = _solo(member, splits, group_seed=0)
        _assert_same_history(fused[member.train.seed].fit, fit)
        # RMSprop divides by the root of the squared gradients' average: where a gradient
        # is near zero, a last-bit difference between the grouped and the plain
        # convolution (one thread, Intel Xeon: 4.6e-4 after 20 steps) becomes part of a
        # step of ~lr (here 1e-3); a leaked hyperparameter moves the weights far more
        tol = 2e-3 if member.train.optimizer == "rmsprop" else 1e-4
        _assert_same_weights(fused[member.train.seed].model, model, tol=tol)


@pytest.mark.parametrize(("family", "optimizer", "scheduler"), CASES)
def test_member_matches_solo_training(splits, family, optimizer, scheduler):
    members = _members(family, optimizer, scheduler)
    fused = _fit(members, splits)
    for member in members:
        fit, model = _solo(member, splits, group_seed=members[0].train.seed)
        got = fused[member.train.seed]
        _assert_same_history(got.fit, fit)
        assert type(got.model) is Classifier  # what nets.create returns
        _assert_same_weights(got.model, model)


@pytest.mark.parametrize("family", ["cnn", "mlp"])  # through autograd / on the tape
def test_augmentation_and_mixup_are_shared_and_exact(splits, family):
    augment = dict(crop_padding=1, rotation=10.0, mixup_alpha=0.4)
    members = _members(family, "adam", "none")
    members = [replace(m, train=replace(m.train, augment=replace(m.train.augment, **augment)))
               for m in members]
    fused = _fit(members, splits)
    for member in members:
        _assert_same_history(fused[member.train.seed].fit, _solo(member, splits, 0)[0])


def test_hyperparameters_do_not_leak_between_slots(splits):
    """Slot 0 gets an absurd lr, dropout 0.9, L1 and smoothing; the others are unchanged."""
    members = _members("mlp", "sgd", "none")
    calm = _fit(members, splits)
    wild = replace(members[0], model=replace(members[0].model, dropout=0.9),
                   train=replace(members[0].train, lr=5.0, l1=0.5, label_smoothing=0.5,
                                 weight_decay=0.5, momentum=0.99))
    poisoned = _fit([wild, *members[1:]], splits)
    assert poisoned[0].fit.history[-1].train_loss != pytest.approx(
        calm[0].fit.history[-1].train_loss, rel=1e-2)  # slot 0 really trained differently
    for member in members[1:]:
        seed = member.train.seed
        _assert_same_history(poisoned[seed].fit, calm[seed].fit)
        _assert_same_history(poisoned[seed].fit, _solo(member, splits, 0)[0])
        _assert_same_weights(poisoned[seed].model, calm[seed].model, tol=1e-6)


def test_a_diverging_member_stops_alone(splits):
    members = _members("mlp", "sgd", "none", batch_norm=False)
    members[2] = replace(members[2], train=replace(members[2].train, lr=1e6, momentum=0.0))
    fused = _fit(members, splits)
    assert fused[2].fit.stop_reason == "non_finite" and "lr=1e+06" in fused[2].fit.message
    for member in (members[0], members[1], members[3]):
        _assert_same_history(fused[member.train.seed].fit, _solo(member, splits, 0)[0])


class StopAt:
    def __init__(self, epoch: int):
        self.epoch, self.seen = epoch, []

    def on_epoch_end(self, result) -> bool:
        self.seen.append(result.epoch)
        return result.epoch >= self.epoch


def test_per_member_stop_early_stopping_and_best_weights(splits):
    """One member stopped by its callback (as a pruner would), one by patience; the group
    shrinks and the others train on exactly as alone."""
    members = _members("mlp", "adam", "none")
    pruned = StopAt(1)
    members[0] = replace(members[0], callbacks=[pruned],
                         train=replace(members[0].train, max_epochs=6))
    patient = EarlyStoppingConfig(patience=1, min_delta=10.0)  # never improves enough
    members[1] = replace(members[1], train=replace(members[1].train, early_stopping=patient,
                                                   max_epochs=6))
    members[2] = replace(members[2], train=replace(members[2].train, max_epochs=6))
    members[3] = replace(members[3], train=replace(members[3].train, max_epochs=6))
    order = []
    results = FusedTrainer(members, splits, device=CPU,
                           on_done=lambda r: order.append(r.member.train.seed)).fit()
    fused = {r.member.train.seed: r for r in results}
    assert pruned.seen == [0, 1] and fused[0].fit.stop_reason == "callback"
    assert fused[1].fit.stop_reason == "early_stopping" and fused[1].fit.epochs_run == 2
    assert sorted(order[:2]) == [0, 1]  # handed out as they finished, before the rest
    for member in members:
        fit, model = _solo(member, splits, 0, [StopAt(1)] if member is members[0] else [])
        _assert_same_history(fused[member.train.seed].fit, fit)
        _assert_same_weights(fused[member.train.seed].model, model)  # best epoch restored


def test_finished_slots_are_refilled(splits):
    members = _members("mlp", "adam", "none")
    for i in (0, 1):  # two members stop early (as pruned trials do), at epochs 0 and 1
        members[i] = replace(members[i], callbacks=[StopAt(i)])
    queue = [replace(m, train=replace(m.train, seed=10 + i))
             for i, m in enumerate(_members("mlp", "adam", "none")[:3])]
    widths = []
    trainer = FusedTrainer(members, splits, device=CPU,
                           refill=lambda: queue.pop(0) if queue else None,
                           on_done=lambda r: widths.append(trainer.net.k))
    results = trainer.fit()
    assert [r.member.train.seed for r in results[:2]] == [0, 1]
    assert sorted(r.member.train.seed for r in results) == [0, 1, 2, 3, 10, 11, 12]
    assert widths[:4] == [4, 4, 4, 4]  # slots were refilled, not dropped, while trials waited
    for r in results[2:]:
        assert r.fit.epochs_run == 4 and r.fit.stop_reason == "max_epochs"
        assert r.fit.history[-1].train_loss < r.fit.history[0].train_loss  # it learned
    for member in members[2:]:  # refills did not disturb the members already there
        _assert_same_history(next(r for r in results if r.member is member).fit,
                             _solo(member, splits, 0)[0])


def test_on_epoch_sees_the_whole_group_epoch_before_any_members_callbacks(splits):
    """`on_epoch` (where the search side reports a group epoch to Optuna at once) gets every
    member still training, with the results their callbacks then get, and only those."""
    log = []

    class Logged(StopAt):
        def on_epoch_end(self, result) -> bool:
            log.append(("callback", self.epoch, result.epoch, result.val_loss))
            return super().on_epoch_end(result)

    members = [replace(m, callbacks=[Logged(i)])
               for i, m in enumerate(_members("mlp", "adam", "none")[:3])]
    FusedTrainer(members, splits, device=CPU, on_epoch=lambda rows: log.append(
        ("epoch", [(m.callbacks[0].epoch, r.epoch, r.val_loss) for m, r in rows]))).fit()
    rounds = [i for i, entry in enumerate(log) if entry[0] == "epoch"]
    assert [len(log[i][1]) for i in rounds] == [3, 2, 1]  # one stops at each epoch
    for i in rounds:
        rows = log[i][1]
        after = log[i + 1:i + 1 + len(rows)]  # then each of them, in slot order
        assert [("callback", *row) for row in rows] == after


def test_extracted_member_predicts_what_the_group_predicts(splits):
    members = _members("cnn", "adam", "none")
    trainer = FusedTrainer(members, splits, device=CPU)
    trainer.net.eval()
    with torch.no_grad():
        fused = trainer.net(splits.val.x)
        for k in range(len(members)):
            alone = trainer.net.extract(k).eval()(splits.val.x)
            assert torch.allclose(alone, fused[k], atol=1e-5)


def test_members_must_share_the_graph_and_the_data_stream(splits):
    from tunetrack.models import TunetrackError

    members = _members("mlp", "adam", "none")
    members[1] = replace(members[1], model=replace(members[1].model, width=32),
                         train=replace(members[1].train, batch_size=8))
    with pytest.raises(TunetrackError, match=r"model\.width, train\.batch_size"):
        FusedTrainer(members, splits, device=CPU)
    resnet = [replace(m, model=replace(m.model, family="resnet")) for m in members[2:]]
    with pytest.raises(TunetrackError, match=r"model\.family must be one of mlp, cnn"):
        FusedTrainer(resnet, splits, device=CPU)


def test_step_macs_counts_linear_and_conv_multiply_adds():
    mlp = ModelConfig(family="mlp", depth=3, width=32)
    assert step_macs(mlp, (1, 8, 8), 10, batch_size=16) == (64 * 32 + 2 * 32 * 32 + 32 * 10) * 16
    cnn = ModelConfig(family="cnn", depth=1, width=4, kernel_size=3, pool="max")
    # conv 1->4, 3x3, padding 1 on 8x8: 4*64 outputs x 9 each; then pool, head 4 -> 10
    assert step_macs(cnn, (1, 8, 8), 10, batch_size=2) == (4 * 64 * 9 + 4 * 10) * 2


def test_fusing_pays_on_cpu_for_small_members_only():
    small = ModelConfig(family="mlp", depth=2, width=64)
    big = ModelConfig(family="mlp", depth=3, width=512)
    assert fusing_pays(small, (1, 8, 8), 10, 64, CPU)
    assert not fusing_pays(big, (1, 8, 8), 10, 128, CPU)
    assert step_macs(big, (1, 8, 8), 10, 128) > CPU_FUSE_MAX_MACS
    assert fusing_pays(big, (1, 8, 8), 10, 128, torch.device("cuda"))  # no GPU needed


# ---- every config field is shared by the group or applied per member -------------------

# a member field -> (what both members set so the field acts, the second member's value)
MEMBER_CASES: dict[str, tuple[dict, object]] = {
    "model.init": ({}, "orthogonal"),
    "model.dropout": ({}, 0.4),
    "train.optimizer": ({}, "sgd"),
    "train.lr": ({}, 3e-2),
    "train.momentum": ({"optimizer": "sgd"}, 0.5),
    "train.nesterov": ({"optimizer": "sgd"}, True),
    "train.weight_decay": ({"optimizer": "sgd"}, 0.3),
    "train.l1": ({}, 3e-3),
    "train.label_smoothing": ({}, 0.3),
    "train.scheduler": ({}, "exponential"),
    "train.step_size": ({"scheduler": "step"}, 2),
    "train.step_gamma": ({"scheduler": "step"}, 0.1),
    "train.exp_gamma": ({"scheduler": "exponential"}, 0.3),
    "train.cosine_eta_min": ({"scheduler": "cosine", "lr": 1e-3}, 5e-2),
    "train.onecycle_pct_start": ({"scheduler": "onecycle"}, 0.9),
    "train.plateau_factor": ({"scheduler": "plateau", "plateau_patience": 0,
                                "optimizer": "sgd", "lr": 1.0}, 0.1),
    "train.plateau_patience": ({"scheduler": "plateau", "plateau_patience": 0,
                                "optimizer": "sgd", "lr": 1.0}, 2),
    "train.early_stopping": ({}, EarlyStoppingConfig(patience=1, min_delta=0.5)),
    "train.seed": ({}, 7),
}
SHARED_VALUES = {"family": "cnn", "class_path": "acme.Net", "init_args": {"width": 3},
                 "depth": 3, "width": 9, "activation": "tanh",
                 "batch_norm": True, "kernel_size": 5, "pool": "avg", "width_multiplier": 3.0,
                 "max_epochs": 2, "batch_size": 8, "augment": {"flip": True},
                 "eval_batch_size": 7, "amp": False, "compile": True, "device": "mps",
                 "stream": True}


def _field_names(kind) -> set[str]:
    from dataclasses import fields

    return {f.name for f in fields(kind)}


def test_every_field_is_shared_per_member_or_unread_exactly_once():
    from tunetrack.models import fused_fields as ff

    model = [*ff.SHARED_MODEL_FIELDS, *ff.MEMBER_MODEL_FIELDS, *ff.UNREAD_MODEL_FIELDS]
    train = [*ff.SHARED_TRAIN_FIELDS, *ff.MEMBER_TRAIN_FIELDS]
    assert sorted(model) == sorted(_field_names(ModelConfig))  # a new field must be placed
    assert sorted(train) == sorted(_field_names(TrainConfig))
    member = {f"model.{n}" for n in ff.MEMBER_MODEL_FIELDS} | {
        f"train.{n}" for n in ff.MEMBER_TRAIN_FIELDS}
    assert set(MEMBER_CASES) == member  # each is trained apart below
    assert set(SHARED_VALUES) == {*ff.SHARED_MODEL_FIELDS, *ff.SHARED_TRAIN_FIELDS}


@pytest.mark.parametrize("field", sorted(SHARED_VALUES))
def test_a_group_refuses_members_that_differ_in_a_shared_field(field):
    from tunetrack.models.fused_fields import SHARED_MODEL_FIELDS
    from tunetrack.models.fused_train import group_differences

    section = "model" if field in SHARED_MODEL_FIELDS else "train"
    value = SHARED_VALUES[field]
    if field == "augment":
        from tunetrack.models import AugmentConfig

        value = AugmentConfig(**value)
    first = Member(ModelConfig(), TrainConfig())
    other = (replace(first, model=replace(first.model, **{field: value})) if section == "model"
             else replace(first, train=replace(first.train, **{field: value})))
    assert group_differences([first, first]) == []
    assert group_differences([first, other]) == [f"{section}.{field}"]


@pytest.mark.parametrize("field", sorted(MEMBER_CASES))
def test_a_member_field_applies_to_its_member_alone(splits, field):
    """Two members that differ in `field` only: each matches its own trial alone, and the
    two trials alone differ (so a fused path that ignored the field would fail here)."""
    section, name = field.split(".")
    both, value = MEMBER_CASES[field]
    model = ModelConfig(family="mlp", depth=2, width=16, batch_norm=True)
    train = replace(TrainConfig(device="cpu", batch_size=20, max_epochs=4, step_size=1),
                    **both)
    first = Member(model, train)
    second = (Member(replace(model, **{name: value}), train) if section == "model"
              else Member(model, replace(train, **{name: value})))
    fused = FusedTrainer([first, second], splits, device=CPU).fit()
    by_member = {id(r.member): r for r in fused}
    alone = [_solo(m, splits, group_seed=first.train.seed)[0] for m in (first, second)]
    for member, solo in zip((first, second), alone, strict=True):
        _assert_same_history(by_member[id(member)].fit, solo)
    assert [(r.lr, r.train_loss) for r in alone[0].history] != [
        (r.lr, r.train_loss) for r in alone[1].history], f"{field}: no effect to check"


@pytest.mark.parametrize("family", ["mlp", "cnn"])
def test_the_unread_model_fields_change_nothing_in_a_fusable_family(splits, family):
    from tunetrack.models.fused_fields import UNREAD_MODEL_FIELDS

    other = {"backbone": "vgg11_bn", "freeze": 2, "backbone_lr_factor": 0.1,
             "weights": "DEFAULT", "preprocess": "imagenet", "input_size": 32}
    assert set(other) == set(UNREAD_MODEL_FIELDS)
    cfg = ModelConfig(family=family, depth=2, width=8, batch_norm=True, dropout=0.2)
    x = splits.val.x
    base = create(cfg, splits.input_shape, splits.n_classes, splits.mean, splits.std, seed=3)
    for name, value in other.items():
        changed = create(replace(cfg, **{name: value}), splits.input_shape, splits.n_classes,
                         splits.mean, splits.std, seed=3)
        _assert_same_weights(changed, base, tol=0.0)
        assert torch.equal(changed.eval()(x), base.eval()(x)), name
