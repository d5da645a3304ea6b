"""The tracking helper process and its writer: order, failures, Ctrl-C, parent death, and
a study whose MLflow store fails (Optuna keeps every trial, one warning per kind)."""

from __future__ import annotations

import http.server
import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import optuna
from mlflow import MlflowClient

from tunetrack.tracking import tags as T
from tunetrack.tracking.helper_process import Writer
from tunetrack.tracking.runs import HELPER
from tunetrack.tracking.store import client_for

from .studyfiles import wait_mid_trial, write_study


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class _Answers(dict):
    def __call__(self, seq: int, value: object) -> None:
        self[seq] = value


def _start(writer: Writer, uri: str, seq: int = 1) -> None:
    writer.dispatch(seq, "start_study", dict(study="s", uri=uri, experiment="tasks",
                                             study_name="tasks", directions="MAXIMIZE",
                                             remembered=None))


def _create(writer: Writer, run: int, seq: int) -> None:
    writer.dispatch(seq, "create_run", dict(
        run=run, study="s", number=run, params={"train.lr": "0.01"},
        tags={T.OPTUNA_TRIAL: str(run)}, trial_yaml="train: {lr: 0.01}\n",
        system_metrics_s=None))


def test_writer_creates_logs_in_order_and_ends_a_run(uri, tmp_path):
    answers = _Answers()
    writer = Writer(answers)
    _start(writer, uri)
    _create(writer, 0, 2)
    for seq, value in enumerate((0.5, 0.7, 0.6), start=3):
        writer.dispatch(seq, "metrics", dict(run=0, rows=[("val_accuracy", value, seq, seq)]))
    writer.dispatch(9, "end", dict(run=0, state="PRUNED", reason="pruned at epoch 1"))
    writer.close()
    client = MlflowClient(uri)
    run = client.get_run(answers[2])
    assert run.info.status == "KILLED" and run.data.tags[T.OPTUNA_STATE] == "PRUNED"
    assert run.data.tags[T.PARENT_RUN_ID] == answers[1]
    assert run.data.params == {"train.lr": "0.01"}
    history = client.get_metric_history(answers[2], "val_accuracy")
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == [0.5, 0.7, 0.6]
    local = Path(client.download_artifacts(answers[2], "trial.yaml", str(tmp_path)))
    assert local.read_text() == "train: {lr: 0.01}\n"


def test_after_a_failed_write_the_run_is_skipped_but_still_ended(uri, monkeypatch, caplog):
    answers = _Answers()
    writer = Writer(answers)
    _start(writer, uri)
    _create(writer, 0, 2)
    writer.close()
    client = client_for(uri)
    real = client.log_batch

    def down(*args, **kwargs):
        raise OSError("store is down")

    monkeypatch.setattr(client, "log_batch", down)
    with caplog.at_level(logging.WARNING, logger="tunetrack.tracking.helper_process"):
        for seq in (3, 4):  # two failures, one warning
            writer.dispatch(seq, "metrics", dict(run=0, rows=[("val_accuracy", 0.5, 1, 0)]))
        writer.close()
    monkeypatch.setattr(client, "log_batch", real)
    writer.dispatch(5, "metrics", dict(run=0, rows=[("val_accuracy", 0.9, 2, 1)]))  # skipped
    writer.dispatch(6, "end", dict(run=0, state="COMPLETE", reason=""))
    writer.close()
    run = MlflowClient(uri).get_run(answers[2])
    assert run.info.status == "FINISHED" and "val_accuracy" not in run.data.metrics
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "metrics (trial 0): OSError: store is down" in warned[0]
    assert "Optuna still records every trial" in warned[0]


def test_messages_of_a_run_that_was_never_created_do_nothing(uri):
    answers = _Answers()
    writer = Writer(answers)
    _start(writer, uri)
    writer.dispatch(2, "create_run", dict(run=7, study="no-such-study", number=7, params={},
                                          tags={}, trial_yaml="", system_metrics_s=None))
    writer.dispatch(3, "metrics", dict(run=7, rows=[("val_accuracy", 0.5, 1, 0)]))
    writer.dispatch(4, "end", dict(run=7, state="FAIL", reason=""))
    writer.close()
    assert answers == {1: answers[1], 2: None, 3: None, 4: None}


def test_system_metrics_are_sampled_while_the_run_lives(uri):
    answers = _Answers()
    writer = Writer(answers)
    _start(writer, uri)
    writer.dispatch(2, "create_run", dict(run=0, study="s", number=0, params={}, tags={},
                                          trial_yaml="{}\n", system_metrics_s=0.2))
    writer.close()
    time.sleep(1.5)
    writer.dispatch(3, "end", dict(run=0, state="COMPLETE", reason=""))
    writer.close()
    metrics = MlflowClient(uri).get_run(answers[2]).data.metrics
    assert "system/cpu_utilization_percentage" in metrics, sorted(metrics)
    assert any(k.startswith("system/system_memory") for k in metrics)


# ---- the helper process ---------------------------------------------------------------------


def test_the_helper_is_another_process_that_ignores_ctrl_c(uri):
    seq = HELPER.send("start_study", want_result=True, study="ctrl-c", uri=uri,
                      experiment="ctrl-c", study_name="ctrl-c", directions="MAXIMIZE",
                      remembered=None)
    assert HELPER.result(seq, timeout=120)
    pid = HELPER.pid
    assert pid and pid != os.getpid()
    os.kill(pid, signal.SIGINT)
    time.sleep(0.3)
    assert HELPER.flush(timeout=30) and HELPER.pid == pid and HELPER.usable


def test_helper_exits_when_its_parent_is_killed(tmp_path):
    script = textwrap.dedent("""
        import time
        from tunetrack.tracking.runs import HELPER
        HELPER.start()
        print(HELPER.pid, flush=True)
        time.sleep(600)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                              text=True)
    try:
        helper = int(parent.stdout.readline())
        assert _alive(helper)
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 30
    while _alive(helper) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(helper)


def test_a_script_without_main_guard_is_not_run_again_by_the_helper(tmp_path):
    """multiprocessing's spawn re-imports `__main__`; our helper must not, or a plain
    script calling run_study would start a second study inside it."""
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
    assert done.stdout.count("linked 2") == 1
    assert "MLflow logging failed" not in done.stderr


# ---- a tracking server that fails mid-study -------------------------------------------------


class _BrokenServer(http.server.BaseHTTPRequestHandler):
    """Answers /health (so the study starts) and 503 to every MLflow API call."""

    def _reply(self) -> None:
        self.send_response(200 if self.path == "/health" else 503)
        self.end_headers()
        self.wfile.write(b"OK" if self.path == "/health" else b"down")

    do_GET = do_POST = _reply

    def log_message(self, *args) -> None:
        pass


def test_a_failing_tracking_server_loses_no_optuna_data(tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _BrokenServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    file = write_study(tmp_path, n_trials=4, max_epochs=2, tracking={"enabled": True})
    env = {**os.environ, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    try:
        done = subprocess.run(
            [sys.executable, "-m", "tunetrack.search.cli", "run", str(file), "--no-progress",
             "--tracking-uri", f"http://127.0.0.1:{server.server_port}"],
            cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    finally:
        server.shutdown()
    assert done.returncode == 0, done.stderr[-3000:]
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path}/tunetrack.db")
    assert [t.state.name for t in study.trials].count("COMPLETE") >= 1
    assert len(study.trials) == 4 and all(t.state.is_finished() for t in study.trials)
    warnings_ = [line for line in done.stderr.splitlines() if "MLflow tracking failed" in line]
    assert warnings_ and all("Optuna still records every trial" in w for w in warnings_)
    # one warning per (message, error type): under load the store may also fail a trial's
    # own message (e.g. create_run), which is another kind and warned about once too
    kinds = [re.search(r"failed in (\w+).*?: (\w+):", w).groups() for w in warnings_]
    assert len(kinds) == len(set(kinds)) <= 4, warnings_


# ---- nothing left to write when the process exits -------------------------------------------


def test_every_trials_record_is_written_when_the_process_exits(tmp_path):
    """`tunetrack run` on fresh stores: once the process has exited, MLflow has every run
    with its per-epoch metrics, every completed trial's files, the best trial's model and
    the parent's study plots, and no run is left RUNNING."""
    file = write_study(tmp_path, n_trials=5, max_epochs=3, tracking={"enabled": True})
    done = subprocess.run([sys.executable, "-m", "tunetrack.search.cli", "run", str(file),
                           "--no-progress"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path}/tunetrack.db")
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("tiny").experiment_id
    runs = {r.info.run_id: r for r in client.search_runs([experiment], max_results=100)}
    assert not [r for r in runs.values() if r.info.status == "RUNNING"]
    best = study.best_trial
    for trial in study.trials:
        run = runs[trial.user_attrs[T.ATTR_RUN_ID]]
        assert run.data.tags[T.OPTUNA_TRIAL] == str(trial.number)
        epochs = trial.user_attrs["epochs_run"]
        for metric in ("train_loss", "val_loss", "val_accuracy", "lr"):
            steps = [m.step for m in client.get_metric_history(run.info.run_id, metric)]
            assert sorted(steps) == list(range(epochs)), (trial.number, metric)
        if trial.state.name != "COMPLETE":
            continue
        files = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"confusion_matrix.png", "confusion_matrix.csv",
                "classification_report.json", "curves.png"} <= files, (trial.number, files)
        assert "test_accuracy" in run.data.metrics
        if trial.number == best.number:
            assert T.MODEL_ID in run.data.tags  # log_models: best
    parents = [r for r in runs.values() if r.data.tags.get(T.ROLE) == T.ROLE_PARENT]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    files = {a.path for a in client.list_artifacts(parents[0].info.run_id)}
    for plot in ("optimization_history", "intermediate_values"):
        assert {f"{plot}.html", f"{plot}.png"} <= files, (plot, files)
    assert {"slice.html", "parallel_coordinate.html"} <= files
    assert {"trials.csv", "best_params.json"} <= files


def test_ctrl_c_leaves_no_mlflow_run_running(tmp_path):
    """SIGINT mid-trial: the interrupted trial is FAIL in Optuna, its run FAILED, the
    parent KILLED (the study was stopped); the helper writes what it was given before the
    process exits."""
    file = write_study(tmp_path, n_trials=50, max_epochs=40, tracking={"enabled": True},
                       train={"batch_size": 32, "early_stopping": {"patience": None}},
                       search={"pruner": {"type": "none"}})
    proc = subprocess.Popen([sys.executable, "-m", "tunetrack.search.cli", "run", str(file),
                             "--no-progress"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    storage = f"sqlite:///{tmp_path}/tunetrack.db"
    wait_mid_trial(storage, "tiny", max_epochs=40)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=300)
    assert proc.returncode != 0
    trials = optuna.load_study(study_name="tiny", storage=storage).trials
    assert trials[-1].state.name == "FAIL" and "RUNNING" not in {t.state.name for t in trials}
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert len(runs) == len(trials) + 1
    parents = [r for r in runs if r.data.tags.get(T.ROLE) == T.ROLE_PARENT]
    assert [r.info.status for r in parents] == ["KILLED"]
    assert {r.info.status for r in runs if r not in parents} <= {"FINISHED", "FAILED"}
    failed = [r for r in runs if r.info.status == "FAILED"]
    assert [r.data.tags[T.OPTUNA_TRIAL] for r in failed] == [str(trials[-1].number)]


def test_two_workers_logging_one_dataset_at_once_lose_no_run(uri, monkeypatch, caplog):
    """The loser of the dataset-insert race (a unique-key error from MLflow's store) links
    the dataset on a second try: no warning, the store is not marked down, and the next
    trial's run is created at once."""
    from mlflow.exceptions import MlflowException

    from tunetrack.models import DataConfig

    answers = _Answers()
    writer = Writer(answers)
    _start(writer, uri)
    writer.close()
    client = client_for(uri)
    real, calls = client.log_inputs, []

    def racing(*args, **kwargs):
        calls.append(args)
        if len(calls) == 1:  # what the slower worker's insert gets from SQLite
            raise MlflowException("(sqlite3.IntegrityError) UNIQUE constraint failed: "
                                  "datasets.experiment_id, datasets.name, datasets.digest")
        return real(*args, **kwargs)

    monkeypatch.setattr(client, "log_inputs", racing)
    with caplog.at_level(logging.WARNING, logger="tunetrack.tracking.helper_process"):
        for run in (0, 1):
            writer.dispatch(2 + run, "create_run", dict(
                run=run, study="s", number=run, params={}, tags={T.OPTUNA_TRIAL: str(run),
                T.DATA_FINGERPRINT: "abc"}, trial_yaml="", system_metrics_s=None,
                data=DataConfig(name="digits")))
            writer.dispatch(4 + run, "end", dict(run=run, state="COMPLETE", reason=""))
        writer.close()
    assert len(calls) == 3 and not caplog.records
    for seq in (2, 3):
        run = MlflowClient(uri).get_run(answers[seq])
        assert run.info.status == "FINISHED"
        assert len(run.inputs.dataset_inputs) == 3  # train, validation, test
