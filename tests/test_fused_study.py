"""`search.fuse: K` end to end: groups formed through Optuna, every member an ordinary trial
(its own parameters, pruning, MLflow child run with the group tag, a model `promote` uses),
bad values refused by `validate` with nothing written, grid falling back to K = 1."""

from __future__ import annotations

import optuna
import pytest
import yaml
from mlflow import MlflowClient
from typer.testing import CliRunner

from tunetrack.models.fused_fields import is_shared
from tunetrack.search.cli import app
from tunetrack.search.fused_groups import GROUP_ATTR, GROUP_TAG

from .studyfiles import tiny_study

runner = CliRunner(env={"COLUMNS": "200"})


def _write(tmp_path, name="fused", **overrides):
    raw = tiny_study(name, **overrides)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _run(file, storage, *args):
    result = runner.invoke(app, ["run", str(file), "--no-progress", "--storage", storage, *args])
    assert result.exit_code == 0, result.output
    return result


@pytest.mark.parametrize(("fuse", "needle"), [
    (0, "search.fuse: must be >= 1 (1 = off, K = up to K trials trained as one model) but "
        "got 0"),
    (-2, "search.fuse: must be >= 1"),
    ("four", "search.fuse: Input should be a valid integer"),
])
def test_bad_fuse_is_one_line_from_validate_and_run_writes_nothing(tmp_path, uri, fuse, needle):
    file = _write(tmp_path, search={"fuse": fuse}, tracking={"enabled": True})
    validate = runner.invoke(app, ["validate", str(file)])
    assert validate.exit_code == 2 and validate.stderr.count("\n") == 1
    assert needle in validate.stderr
    storage = f"sqlite:///{tmp_path}/optuna.db"
    optuna.storages.RDBStorage(storage)
    result = runner.invoke(app, ["run", str(file), "--storage", storage, "--tracking-uri", uri])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1 and needle in result.stderr
    assert optuna.get_all_study_summaries(storage) == []
    assert MlflowClient(uri).search_runs(
        [e.experiment_id for e in MlflowClient(uri).search_experiments()]) == []


def test_fuse_needs_a_family_that_fuses(tmp_path):
    file = _write(tmp_path, model={"family": "resnet", "depth": 1, "width": 8},
                  search={"fuse": 4})
    result = runner.invoke(app, ["validate", str(file)])
    assert result.exit_code == 2
    assert ("search.fuse: fusing 4 trials needs model.family mlp or cnn but the study trains "
            "resnet; use fuse: 1") in result.stderr
    unfused = _write(tmp_path, "plain", model={"family": "resnet", "depth": 1, "width": 8})
    override = runner.invoke(app, ["run", str(unfused), "--fuse", "4"])
    assert override.exit_code == 2 and override.stderr.startswith("error: --fuse: fusing 4")
    assert not (tmp_path / "tunetrack.db").exists()
    zero = runner.invoke(app, ["run", str(unfused), "--fuse", "0"])
    assert zero.exit_code == 2


def test_validate_says_how_the_study_fuses(tmp_path):
    result = runner.invoke(app, ["validate", str(_write(tmp_path, search={"fuse": 4}))])
    assert result.exit_code == 0 and "note: search.fuse: up to 4 trials train at once" in \
        result.stdout
    assert "note: search.fuse: on a CPU only architectures of at most 4 M multiply-adds" in \
        result.stdout


def test_fused_study_members_are_ordinary_trials(tmp_path):
    from tunetrack.search.fused_study import GROUP_SPAN

    k = 2
    n = GROUP_SPAN * k + 2  # one full group, then a new one
    file = _write(tmp_path, n_trials=n, search={"fuse": k, "sampler": "random"})
    storage = f"sqlite:///{tmp_path}/optuna.db"
    _run(file, storage)
    study = optuna.load_study(study_name="fused", storage=storage)
    trials = study.trials
    assert len(trials) == n  # the budget counts every member
    assert all(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
               for t in trials)
    groups: dict[str, list] = {}
    for t in trials:
        groups.setdefault(t.user_attrs[GROUP_ATTR], []).append(t)
        assert "train.lr" in t.params and "model.width" in t.params  # a full parameter set
        assert t.user_attrs["epochs_run"] >= 1
    for members in groups.values():
        shared = [{k: v for k, v in t.params.items() if is_shared(k)} for t in members]
        assert all(s == shared[0] for s in shared)  # the group's shared part
    lrs = [t.params["train.lr"] for t in trials]
    assert len(set(lrs)) == len(lrs)  # the recipe is each trial's own
    assert sorted(map(len, groups.values())) == [2, GROUP_SPAN * k]  # refills, then a new group
    completed = [t for t in trials if t.state.name == "COMPLETE"]
    assert completed and all(0 < t.user_attrs["test_accuracy"] <= 1 for t in completed)
    for t in completed:  # intermediate values: one per epoch, reported by each trial itself
        assert sorted(t.intermediate_values) == list(range(t.user_attrs["epochs_run"]))
    status = runner.invoke(app, ["status", "fused", "--storage", storage])
    assert status.exit_code == 0 and "COMPLETE" in status.stdout


def test_a_model_based_samplers_random_start_up_trains_unfused(tmp_path):
    file = _write(tmp_path, n_trials=5, search={"fuse": 3, "sampler": "tpe",
                                                "n_startup_trials": 2})
    storage = f"sqlite:///{tmp_path}/optuna.db"
    _run(file, storage)
    trials = optuna.load_study(study_name="fused", storage=storage).trials
    assert [GROUP_ATTR in t.user_attrs for t in trials] == [False, False, True, True, True]
    assert {t.user_attrs[GROUP_ATTR] for t in trials[2:]} == {"g2"}


def test_on_cpu_a_group_too_big_to_gain_trains_unfused(tmp_path, caplog):
    """Width 512 x 3 at batch 128 is ~71 M multiply-adds per member step on digits, far
    above CPU_FUSE_MAX_MACS: every trial trains alone, and the log says why; the same
    study at width 16 fuses."""
    model = {"family": "mlp", "depth": 3, "width": 512, "activation": "relu"}
    big = _write(tmp_path, "big", n_trials=3, max_epochs=1, model=model,
                 search={"fuse": 3, "sampler": "random"})
    storage = f"sqlite:///{tmp_path}/optuna.db"
    with caplog.at_level("INFO", logger="tunetrack.search.fused_study"):
        _run(big, storage)
    trials = optuna.load_study(study_name="big", storage=storage).trials
    assert len(trials) == 3 and all(GROUP_ATTR not in t.user_attrs for t in trials)
    assert "trial 0 trains unfused: its members would take more than 4 M multiply-adds" \
        in caplog.text
    small = _write(tmp_path, "small", n_trials=3, max_epochs=1, model={**model, "width": 16},
                   search={"fuse": 3, "sampler": "random"})
    _run(small, storage)
    trials = optuna.load_study(study_name="small", storage=storage).trials
    assert [t.user_attrs.get(GROUP_ATTR) for t in trials] == ["g0"] * 3


def test_grid_sampler_falls_back_to_unfused(tmp_path, caplog):
    file = _write(tmp_path, n_trials=2, search={"fuse": 4, "sampler": "grid"},
                  model={"family": "mlp", "depth": 1, "width": {"choice": [16, 32]}},
                  train={"max_epochs": 2, "batch_size": 128, "optimizer": "adam",
                         "lr": 1e-2})
    note = runner.invoke(app, ["validate", str(file)])
    assert note.exit_code == 0 and "the grid sampler hands out whole parameter sets" in \
        note.stdout
    storage = f"sqlite:///{tmp_path}/optuna.db"
    _run(file, storage)
    study = optuna.load_study(study_name="fused", storage=storage)
    assert len(study.trials) == 2
    assert all(GROUP_ATTR not in t.user_attrs for t in study.trials)


def test_fused_trials_are_tracked_and_promoted_like_any_other(tmp_path, uri):
    file = _write(tmp_path, n_trials=3, max_epochs=3, search={"fuse": 3, "sampler": "random"},
                  tracking={"enabled": True, "log_models": "best"},
                  registry={"model_name": "fused-digits"})
    storage = f"sqlite:///{tmp_path}/optuna.db"
    _run(file, storage, "--tracking-uri", uri)
    study = optuna.load_study(study_name="fused", storage=storage)
    client = MlflowClient(uri)
    for trial in study.trials:
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        assert run.data.tags[GROUP_TAG] == trial.user_attrs[GROUP_ATTR] == "g0"
        assert run.data.tags["optuna.state"] == trial.state.name
        assert run.info.status == "FINISHED"
        history = client.get_metric_history(run.info.run_id, "val_accuracy")
        assert [m.step for m in history] == list(range(trial.user_attrs["epochs_run"]))
        assert 0 < trial.user_attrs["cost_device_seconds"] <= trial.user_attrs[
            "cost_wall_seconds"]  # its share of the group's epochs, plus its test pass
        assert run.data.metrics["cost_wall_seconds"] == trial.user_attrs["cost_wall_seconds"]
        if trial.state.name == "COMPLETE":
            assert run.data.metrics["test_accuracy"] == trial.user_attrs["test_accuracy"]
            assert run.data.params["train.lr"] == str(trial.params["train.lr"])
    promoted = runner.invoke(app, ["promote", "fused", "--storage", storage,
                                   "--tracking-uri", uri])
    assert promoted.exit_code == 0 and "\npromoted trial #" in promoted.stdout, \
        promoted.output
    compare = runner.invoke(app, ["compare", "fused", "--storage", storage,
                                  "--tracking-uri", uri])
    assert compare.exit_code == 0 and "top 3 trials" in compare.stdout


@pytest.mark.parametrize("epochs_before", [0, 2])
def test_cuda_out_of_memory_halves_k_and_retrains_the_group(tmp_path, monkeypatch, caplog,
                                                            epochs_before):
    """The OOM path without a GPU: a trainer that 'runs out of memory' above 2 members, at
    once or after two group epochs (whose reports Optuna keeps when the members train
    again and report those epochs once more)."""
    import torch

    from tunetrack.search import fused_study
    from tunetrack.search.runner import run_study

    real = fused_study.FusedTrainer
    sizes = []

    class SmallDevice(real):
        def fit(self):
            sizes.append(self.net.k)
            self.epochs = 0
            return super().fit()

        def _train_epoch(self):
            if self.net.k > 2 and self.epochs == epochs_before:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
            self.epochs += 1
            return super()._train_epoch()

    monkeypatch.setattr(fused_study, "FusedTrainer", SmallDevice)
    file = _write(tmp_path, n_trials=4, search={"fuse": 4, "sampler": "random"})
    with caplog.at_level("WARNING", logger="tunetrack.search.fused_study"):
        study = run_study(file, storage=optuna.storages.InMemoryStorage())
    assert sizes[0] == 4 and all(k <= 2 for k in sizes[1:])
    assert "CUDA out of memory training 4 fused trials at once; K is now 2" in caplog.text
    assert len(study.trials) == 4
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in study.trials)
    assert all(t.user_attrs["epochs_run"] >= 1 for t in study.trials)


def test_a_worker_fuses_on_a_storage_with_heartbeats(tmp_path):
    """`tunetrack worker --fuse` on SQLite (heartbeats, SharedTrialBudget): the group's
    members run heartbeats of their own, and the budget never waits for the group's own
    leader (it did, forever, before)."""
    import subprocess
    import sys

    file = _write(tmp_path, n_trials=4, search={"sampler": "random"})
    storage = f"sqlite:///{tmp_path}/optuna.db"
    done = subprocess.run(
        [sys.executable, "-m", "tunetrack.search.cli", "worker", str(file), "--storage",
         storage, "--fuse", "2"], capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    trials = optuna.load_study(study_name="fused", storage=storage).trials
    assert len(trials) == 4 and all(t.state.name in ("COMPLETE", "PRUNED") for t in trials)
    assert all(GROUP_ATTR in t.user_attrs for t in trials)


def test_fusing_workers_share_the_trial_budget(tmp_path, monkeypatch):
    """`run --workers 2 --fuse 2`: every worker fuses, and a group asks for members only
    while the study as a whole has room (7 trials for 4 before that check)."""
    monkeypatch.chdir(tmp_path)  # the workers' journal lands here
    file = _write(tmp_path, n_trials=4, search={"sampler": "random"})
    result = runner.invoke(app, ["run", str(file), "--workers", "2", "--fuse", "2",
                                 "--no-tracking"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    storage = f"journal:{tmp_path}/tunetrack.journal"
    from tunetrack.search.storage import open_storage

    trials = optuna.load_study(study_name="fused", storage=open_storage(storage)).trials
    assert 4 <= len(trials) <= 5  # the same guarantee as unfused: + workers - 1 at most
    assert all(GROUP_ATTR in t.user_attrs for t in trials)
