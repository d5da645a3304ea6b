"""The sidecar process: order, errors, Ctrl-C and parent death; its run tasks in-process."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from tunetrack.tracking import tags as T
from tunetrack.tracking import trial_tasks
from tunetrack.tracking.sidecar import SIDECAR, in_background


def _append(path: str, text: str, pause: float = 0.0) -> int:
    time.sleep(pause)
    with open(path, "a") as handle:
        handle.write(text)
    return os.getpid()


def _slow_then_append(path: str, text: str, pause: float) -> None:
    in_background(lambda: _append(path, text, pause))


def _fail(message: str) -> None:
    raise RuntimeError(message)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_tasks_run_in_another_process_in_submission_order(tmp_path):
    out = tmp_path / "order.txt"
    futures = [SIDECAR.submit(_append, str(out), str(i), 0.02 if i == 0 else 0.0)
               for i in range(10)]
    assert SIDECAR.drain(timeout=120)
    assert out.read_text() == "0123456789"
    assert {f.result() for f in futures} == {SIDECAR.helper_pid()} != {os.getpid()}


def test_slow_work_does_not_hold_up_quick_tasks_and_drain_waits_for_it(tmp_path):
    out = tmp_path / "lanes.txt"
    SIDECAR.submit(_slow_then_append, str(out), "slow", 1.0)
    SIDECAR.submit(_append, str(out), "quick").result(timeout=120)
    assert out.read_text() == "quick"  # the quick task did not wait behind the slow job
    assert SIDECAR.drain(timeout=120)
    assert out.read_text() == "quickslow"


def test_a_failing_task_is_logged_and_later_tasks_still_run(tmp_path, caplog):
    out = tmp_path / "after.txt"
    with caplog.at_level(logging.WARNING, logger="tunetrack.tracking.sidecar"):
        failed = SIDECAR.submit(_fail, "store is down")
        SIDECAR.submit(_append, str(out), "ok")
        assert SIDECAR.drain(timeout=120)
    assert isinstance(failed.exception(), RuntimeError)
    assert out.read_text() == "ok"
    assert any("store is down" in r.getMessage() for r in caplog.records)


def test_ctrl_c_reaches_the_study_not_the_sidecar(tmp_path):
    SIDECAR.submit(os.getpid).result(timeout=120)
    helper = SIDECAR.helper_pid()
    os.kill(helper, signal.SIGINT)
    time.sleep(0.3)
    assert SIDECAR.submit(os.getpid).result(timeout=30) == helper


def test_sidecar_exits_when_its_parent_is_killed(tmp_path):
    script = textwrap.dedent("""
        import os, sys, time
        from tunetrack.tracking.sidecar import SIDECAR, in_background
        if __name__ == "__main__":
            SIDECAR.submit(os.getpid).result(timeout=120)
            print(SIDECAR.helper_pid(), flush=True)
            time.sleep(600)
    """)
    path = tmp_path / "parent.py"
    path.write_text(script)
    parent = subprocess.Popen([sys.executable, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        helper = int(parent.stdout.readline())
        assert _alive(helper)
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 10
    while _alive(helper) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(helper)


# ---- the run tasks, called in this process ------------------------------------------------


@pytest.fixture
def store(tmp_path) -> tuple[str, str]:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    experiment = MlflowClient(uri).create_experiment("tasks", (tmp_path / "art").as_uri())
    return uri, experiment


def _create(uri: str, experiment: str, token: str) -> str:
    return trial_tasks.create_run(uri, token, experiment_id=experiment, run_name="trial-0",
                                  tags={T.OPTUNA_TRIAL: "0"}, params={"train.lr": "0.01"},
                                  trial_yaml="train: {lr: 0.01}\n", system_metrics_s=None)


def test_run_tasks_write_params_metrics_yaml_and_end(store, tmp_path):
    uri, experiment = store
    run_id = _create(uri, experiment, "t1")
    trial_tasks.log_metrics(uri, "t1", [("val_accuracy", 0.5, 1, 0), ("val_accuracy", 0.7, 2, 1)])
    trial_tasks.end_run(uri, "t1", "PRUNED", "pruned at epoch 1")
    client = MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.info.status == "KILLED"
    assert run.data.params == {"train.lr": "0.01"}
    assert run.data.tags[T.OPTUNA_STATE] == "PRUNED"
    assert [m.value for m in client.get_metric_history(run_id, "val_accuracy")] == [0.5, 0.7]
    yaml_path = Path(client.download_artifacts(run_id, "trial.yaml", str(tmp_path)))
    assert yaml_path.read_text() == "train: {lr: 0.01}\n"


def test_after_a_failed_write_the_run_is_skipped_but_still_ended(store, monkeypatch):
    uri, experiment = store
    run_id = _create(uri, experiment, "t2")
    client = trial_tasks._client(uri)
    real = client.log_batch

    def down(*args, **kwargs):
        raise OSError("store is down")

    monkeypatch.setattr(client, "log_batch", down)
    with pytest.raises(OSError):
        trial_tasks.log_metrics(uri, "t2", [("val_accuracy", 0.5, 1, 0)])
    monkeypatch.setattr(client, "log_batch", real)
    trial_tasks.log_metrics(uri, "t2", [("val_accuracy", 0.9, 2, 1)])  # skipped, no error
    trial_tasks.end_run(uri, "t2", "COMPLETE", "")
    run = MlflowClient(uri).get_run(run_id)
    assert run.info.status == "FINISHED" and "val_accuracy" not in run.data.metrics


def test_tasks_of_a_run_that_was_never_created_do_nothing(store):
    uri, _ = store
    with pytest.raises(MlflowException):
        _create(uri, "no-such-experiment", "t3")
    trial_tasks.log_metrics(uri, "t3", [("val_accuracy", 0.5, 1, 0)])
    trial_tasks.end_run(uri, "t3", "FAIL", "")


def test_a_script_without_main_guard_is_not_run_again_by_the_sidecar(tmp_path):
    """Spawned helpers normally re-import `__main__`; ours must not, or a plain script
    calling run_study would start a second study inside the helper."""
    script = tmp_path / "plain.py"
    script.write_text(textwrap.dedent(f"""
        from tunetrack.search import load_study_file, run_study
        spec = load_study_file({str(Path("studies/digits.yaml").resolve())!r})
        spec.train.max_epochs = 1
        study = run_study(spec, n_trials=2, storage="sqlite:///s.db",
                          tracking_uri="sqlite:///m.db")
        print("linked", sum("mlflow_run_id" in t.user_attrs for t in study.trials))
    """))
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "linked 2" in done.stdout
    assert "MLflow logging failed" not in done.stderr


def test_system_metrics_are_sampled_while_the_run_lives(store):
    uri, experiment = store
    run_id = trial_tasks.create_run(
        uri, "t4", experiment_id=experiment, run_name="trial-0", tags={}, params={},
        trial_yaml="{}\n", system_metrics_s=0.2)
    time.sleep(1.5)
    trial_tasks.end_run(uri, "t4", "COMPLETE", "")
    metrics = MlflowClient(uri).get_run(run_id).data.metrics
    assert "system/cpu_utilization_percentage" in metrics, sorted(metrics)
    assert any(k.startswith("system/system_memory") for k in metrics)
