"""The user's own network, dataset and metric: by import path, by plugin name, by object.

Each test writes its own module under a unique name (Python caches imported modules by
name, and a test must never see another test's code)."""

from __future__ import annotations

import itertools
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from tunetrack.models.user_code import code_dirs, import_path_of
from tunetrack.search.cli import app
from tunetrack.search.study_file import StudyFileError

runner = CliRunner(env={"COLUMNS": "200", "TUNETRACK_STORAGE": None, "OPTUNA_STORAGE": None,
                        "MLFLOW_TRACKING_URI": None})
_names = itertools.count()

CODE = '''
import numpy as np
import torch
from torch import nn


class WideNet(nn.Module):
    def __init__(self, num_classes, in_shape, hidden=32, blocks=1):
        super().__init__()
        c, h, w = in_shape
        layers = [nn.Flatten(), nn.Linear(c * h * w, hidden), nn.ReLU()]
        for _ in range(blocks - 1):
            layers += [nn.Linear(hidden, hidden), nn.ReLU()]
        self.net = nn.Sequential(*layers, nn.Linear(hidden, num_classes))

    def forward(self, x):
        return self.net(x)


class Broken(WideNet):
    def forward(self, x):
        raise RuntimeError("shapes do not fit\\nsecond line: the real cause")


def blobs(n=240, classes=3, seed=0):
    """Three separable classes of 1x6x6 images, with names."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    x = torch.rand(n, 1, 6, 6, generator=g) * 0.2 + y.view(-1, 1, 1, 1) * 0.3
    ds = torch.utils.data.TensorDataset(x, y)
    ds.classes = ["a", "b", "c"][:classes]
    return ds


def given_splits():
    return {"train": blobs(150, seed=1), "val": blobs(45, seed=2), "test": blobs(45, seed=3)}


def not_a_dataset():
    return 42


def top2(y_true, y_prob):
    return float((np.argsort(-y_prob, 1)[:, :2] == y_true[:, None]).any(1).mean())


top2.direction = "maximize"


def raising_metric(y_true, y_prob):
    raise ValueError("no positives")


def nan_metric(y_true, y_prob):
    return float("nan")
'''


@pytest.fixture
def own(tmp_path) -> tuple[Path, str]:
    """(folder, module name) of the user's code, next to where the study file goes."""
    name = f"acme_{next(_names)}_{tmp_path.name[-8:].replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(CODE)
    return tmp_path, name


def study(module: str, **sections) -> dict:
    raw = {"name": "own", "seed": 0,
           "model": {"class_path": f"{module}.WideNet", "init_args": {"hidden": 32}},
           "dataset": {"class_path": f"{module}.blobs"},
           "train": {"max_epochs": 3, "lr": 0.01},
           "search": {"n_trials": 2, "sampler": "random"},
           "tracking": {"enabled": False}}
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return raw


def write(folder: Path, raw: dict) -> str:
    file = folder / "study.yaml"
    file.write_text(yaml.safe_dump(raw))
    return str(file)


def run(file: str, *args: str):
    return runner.invoke(app, ["run", file, "--no-progress", *args])


def test_a_user_network_and_dataset_train_with_searched_init_args(own, monkeypatch):
    folder, module = own
    (folder / "elsewhere").mkdir()
    monkeypatch.chdir(folder / "elsewhere")  # it resolves from the study file's folder
    raw = study(module, model={"init_args": {"hidden": {"int": [8, 64], "log": True},
                                             "blocks": {"int": [1, 2]}}},
                search={"n_trials": 3})
    from tunetrack.search.runner import run_study
    from tunetrack.search.study_file import load_study_file

    spec = load_study_file(write(folder, raw))
    study_ = run_study(spec)
    complete = [t for t in study_.trials if t.state.name == "COMPLETE"]
    assert len(complete) == 3
    assert all({"model.init_args.hidden", "model.init_args.blocks"} <= set(t.params)
               for t in complete)
    assert study_.best_value >= 0.9  # separable blobs


def test_the_network_gets_num_classes_and_in_shape_and_class_names_come_from_the_dataset(own):
    folder, module = own
    from tunetrack.models import create, load_splits
    from tunetrack.models.config import DataConfig, ModelConfig

    with code_dirs([folder]):
        splits = load_splits(DataConfig(class_path=f"{module}.blobs"))
        net = create(ModelConfig(class_path=f"{module}.WideNet", init_args={"hidden": 5}),
                     splits.input_shape, splits.n_classes)
    assert splits.classes == ["a", "b", "c"] and splits.input_shape == (1, 6, 6)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (168, 36, 36)
    assert net.body.net[-1].out_features == 3 and net.body.net[1].out_features == 5


def test_a_mapping_of_three_datasets_is_used_as_given(own):
    folder, module = own
    from tunetrack.models import load_splits
    from tunetrack.models.config import DataConfig

    with code_dirs([folder]):
        splits = load_splits(DataConfig(class_path=f"{module}.given_splits"))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (150, 45, 45)


@pytest.mark.parametrize(("model", "line"), [
    ({"init_args": {"hiden": 8}},
     "model.init_args.hiden: WideNet takes no argument 'hiden'; it takes blocks, hidden, "
     "in_shape, num_classes"),
    ({"class_path": "{m}.Nope"}, "model.class_path: {m} has no 'Nope' (from '{m}.Nope')"),
    ({"class_path": "nowhere_at_all.Net"},
     "model.class_path: cannot import 'nowhere_at_all.Net': ModuleNotFoundError: No module "
     "named 'nowhere_at_all'"),
])
def test_validate_and_run_refuse_a_bad_network_in_one_line_writing_nothing(own, model, line,
                                                                           monkeypatch):
    folder, module = own
    model = {k: v.format(m=module) if isinstance(v, str) else v for k, v in model.items()}
    file = write(folder, study(module, model=model, tracking={"enabled": True}))
    line = line.format(m=module)
    result = runner.invoke(app, ["validate", file])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.output
    assert line in result.stderr
    monkeypatch.chdir(folder)
    before = sorted(p.name for p in folder.iterdir())
    result = run(file)
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.output
    assert line in result.stderr
    assert sorted(p.name for p in folder.iterdir() if p.name != "__pycache__") == [
        p for p in before if p != "__pycache__"]  # no tunetrack.db, no mlflow.db


def test_a_required_argument_nobody_passes_is_named(own):
    folder, module = own
    from tunetrack.search.study_file import load_study_file

    (folder / f"{module}_needs.py").write_text(
        "from torch import nn\ndef net(depth, num_classes):\n    return nn.Flatten()\n")
    raw = study(module, model={"class_path": f"{module}_needs.net", "init_args": {}})
    with pytest.raises(StudyFileError, match=r"model.init_args: net needs argument 'depth'"):
        load_study_file(write(folder, raw))


def test_a_dataset_callable_returning_the_wrong_type_stops_the_run_in_one_line(own,
                                                                                monkeypatch):
    folder, module = own
    monkeypatch.chdir(folder)
    file = write(folder, study(module, dataset={"class_path": f"{module}.not_a_dataset"}))
    result = run(file)
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.output
    assert (f"dataset {module}.not_a_dataset: returned a int, not a torch Dataset"
            in result.stderr)


def _trials(file: str, folder: Path):
    import optuna

    storage = f"sqlite:///{folder}/o.db"
    result = run(file, "--storage", storage)
    return result, optuna.load_study(study_name="own", storage=storage).trials


@pytest.mark.parametrize(("metric", "reason"), [
    ("raising_metric", "metric raising_metric: ValueError: no positives"),
    ("nan_metric", "metric nan_metric returned nan (it must be a finite number)"),
])
def test_a_metric_that_raises_or_returns_nan_fails_its_trials_and_the_study_goes_on(
        own, metric, reason, monkeypatch):
    folder, module = own
    monkeypatch.chdir(folder)
    file = write(folder, study(module, search={
        "metric": {"class_path": f"{module}.{metric}", "direction": "maximize"}}))
    _, trials = _trials(file, folder)
    assert [t.state.name for t in trials] == ["FAIL", "FAIL"]  # both ran
    assert {t.user_attrs["reason"] for t in trials} == {reason}


def test_an_error_inside_the_users_forward_fails_the_trial_with_its_last_line(own,
                                                                            monkeypatch):
    folder, module = own
    monkeypatch.chdir(folder)
    file = write(folder, study(module, model={"class_path": f"{module}.Broken"}))
    _, trials = _trials(file, folder)
    assert [t.state.name for t in trials] == ["FAIL", "FAIL"]
    assert {t.user_attrs["reason"] for t in trials} == {
        "RuntimeError: second line: the real cause"}


def test_a_user_metric_is_the_study_value_and_is_reported_on_test(own, monkeypatch):
    folder, module = own
    monkeypatch.chdir(folder)
    file = write(folder, study(module, search={"metric": {"class_path": f"{module}.top2"}}))
    result, trials = _trials(file, folder)
    assert result.exit_code == 0, result.output
    assert "maximize top2" in runner.invoke(app, ["validate", file]).output
    for trial in trials:
        assert trial.state.name == "COMPLETE"
        assert 0.5 <= trial.value <= 1.0  # top-2 recall of 3 classes is >= top-1's
        assert 0.5 <= trial.user_attrs["test_top2"] <= 1.0
        assert set(trial.intermediate_values) == {0, 1, 2}  # reported every epoch


def test_a_user_metric_without_a_direction_is_refused(own):
    folder, module = own
    from tunetrack.search.study_file import load_study_file

    raw = study(module, search={"metric": {"class_path": f"{module}.raising_metric"}})
    with pytest.raises(StudyFileError, match=r"search.metric: raising_metric needs a direction"):
        load_study_file(write(folder, raw))


@pytest.mark.parametrize("name", ["macro_f1", "balanced_accuracy", "auroc", "log_loss"])
def test_each_built_in_score_is_scikit_learns(name):
    from sklearn import metrics as skm

    from tunetrack.models.metrics import SCORES

    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 200)
    logits = rng.normal(size=(200, 4)) + np.eye(4)[y] * 1.5  # better than chance
    prob = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    expected = {
        "macro_f1": lambda: skm.f1_score(y, prob.argmax(1), average="macro"),
        "balanced_accuracy": lambda: skm.balanced_accuracy_score(y, prob.argmax(1)),
        "auroc": lambda: skm.roc_auc_score(y, prob, multi_class="ovr"),
        "log_loss": lambda: skm.log_loss(y, prob),
    }[name]()
    assert SCORES[name](y, prob) == pytest.approx(expected, abs=1e-12)
    assert 0.25 < expected < (1.5 if name == "log_loss" else 1.0)


def test_a_built_in_score_is_what_the_trainer_reports_every_epoch(splits):
    from sklearn.metrics import f1_score

    from tunetrack.models import Trainer, create
    from tunetrack.models.config import ModelConfig, TrainConfig
    from tunetrack.models.metrics import SCORES

    model = create(ModelConfig(width=16), splits.input_shape, splits.n_classes, seed=0)
    trainer = Trainer(model, TrainConfig(max_epochs=2, amp=False), splits,
                      scores={"macro_f1": SCORES["macro_f1"]})
    fit = trainer.fit()
    assert all("macro_f1" in h.scores for h in fit.history)
    pred = trainer.evaluate(splits.val).predictions.numpy()  # the best (last kept) weights
    assert fit.best.value("macro_f1") == pytest.approx(
        f1_score(splits.val.y.numpy(), pred, average="macro",
                 labels=list(range(splits.n_classes)), zero_division=0), abs=1e-9)


def test_an_unknown_metric_name_lists_what_is_allowed():
    from tunetrack.search.config import SearchSpec

    with pytest.raises(ValueError, match=r"unknown metric 'f1'; allowed: val_accuracy.*macro_f1"):
        SearchSpec(metric="f1")


def test_the_python_api_takes_objects_and_a_dict(own, workdir):
    """A class defined here (an import path of its own) and a lambda metric (none)."""
    folder, module = own
    from tunetrack.search import run_study

    with code_dirs([folder]):
        mod = __import__(module)

        def dataset():
            return mod.blobs(n=150)

        metric = lambda y_true, y_prob: float((y_prob.argmax(1) == y_true).mean())  # noqa: E731
        metric.direction = "maximize"
        raw = study(module)
        del raw["model"]["class_path"], raw["dataset"]
        done = run_study(raw, model=mod.WideNet, dataset=dataset, metric=metric,
                         n_trials=1)
    trial = done.trials[0]
    assert trial.state.name == "COMPLETE" and trial.value > 0.5  # chance: 1/3
    assert trial.user_attrs["test_user_metric"] > 0.5
    assert import_path_of(mod.WideNet) == f"{module}.WideNet"
    assert import_path_of(metric).startswith("<local>.")


def test_plugins_register_networks_datasets_and_metrics_by_name(tmp_path, monkeypatch, workdir):
    """A tiny installed package (a dist-info with entry points, as pip writes it)."""
    site = tmp_path / "site"
    pkg = site / "acme_plugin_pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(CODE)
    info = site / "acme_plugin_pkg-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-plugin-pkg\n"
                                   "Version: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent("""\
        [tunetrack.models]
        acme_wide = acme_plugin_pkg:WideNet
        [tunetrack.datasets]
        acme_blobs = acme_plugin_pkg:blobs
        [tunetrack.metrics]
        acme_top2 = acme_plugin_pkg:top2
        """))
    monkeypatch.syspath_prepend(str(site))
    raw = {"name": "plug", "model": {"family": "acme_wide", "init_args": {"hidden": 16}},
           "dataset": {"name": "acme_blobs"}, "train": {"max_epochs": 2, "lr": 0.01},
           "search": {"metric": "acme_top2", "n_trials": 1}, "tracking": {"enabled": False}}
    from tunetrack.search import run_study
    from tunetrack.search.study_file import parse_study

    spec = parse_study(raw)
    assert spec.search.objective_list[0].resolved_direction == "maximize"
    done = run_study(spec)
    assert done.trials[0].state.name == "COMPLETE"
    assert "test_acme_top2" in done.trials[0].user_attrs
    with pytest.raises(StudyFileError, match=r"model.family: unknown value 'acme_nope'; "
                                             r"allowed: .*acme_wide"):
        parse_study({**raw, "model": {"family": "acme_nope"}})


def test_a_user_metric_can_be_one_of_several_objectives(own, monkeypatch):
    folder, module = own
    monkeypatch.chdir(folder)
    file = write(folder, study(module, search={
        "objectives": [{"class_path": f"{module}.top2"}, {"metric": "params"}],
        "sampler": "nsga2"}))
    result, trials = _trials(file, folder)
    assert result.exit_code == 0, result.output
    assert all(t.state.name == "COMPLETE" and len(t.values) == 2 for t in trials)
    assert all(0.5 <= t.values[0] <= 1 and t.values[1] > 100 for t in trials)
