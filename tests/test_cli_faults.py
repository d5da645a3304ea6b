"""Faults a user meets: reading where no study is, stores of the wrong kind or half made,
impossible budgets, resuming with a changed file, processes killed mid-trial, two runs at
once. Each case: one line, the right exit code, nothing written that should not be."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from typer.testing import CliRunner

from tunetrack.search.cli import app

from .scaleout_support import pg_url  # noqa: F401  (fixture)
from .studyfiles import tiny_study, wait_mid_trial, write_study

runner = CliRunner(env={"COLUMNS": "200"})
CLI = [sys.executable, "-m", "tunetrack.search.cli"]


def tables(db: Path) -> set[str]:
    with sqlite3.connect(db) as connection:
        return {r[0] for r in connection.execute("SELECT name FROM sqlite_master "
                                                 "WHERE type = 'table'")}


def one_error_line(result, exit_code: int = 2) -> str:
    assert result.exit_code == exit_code, result.output
    assert result.stderr.count("\n") == 1, result.stderr
    return result.stderr


# ---- reading never creates a store -------------------------------------------------------

READERS = {
    "status": ["status", "tiny"],
    "best": ["best", "tiny"],
    "studies": ["studies"],
    "compare": ["compare", "tiny"],
    "report": ["report", "tiny"],
    "promote": ["promote", "tiny", "--model-name", "m"],
}


@pytest.mark.parametrize("command", sorted(READERS))
def test_reading_commands_in_an_empty_folder_create_nothing(workdir, command):
    result = runner.invoke(app, READERS[command])
    assert "no study store at ./tunetrack.db; run `tunetrack run" in one_error_line(result)
    assert list(workdir.iterdir()) == []


def test_reading_a_journal_that_is_not_there_creates_nothing(workdir):
    result = runner.invoke(app, ["status", "tiny", "--storage", "journal:tunetrack.journal"])
    assert "no study store at tunetrack.journal" in one_error_line(result)
    assert list(workdir.iterdir()) == []


@pytest.mark.parametrize("args", [["predict", "models:/digits@champion", "."],
                                  ["history", "digits"], ["reproduce", "0123abcd"]])
def test_mlflow_readers_without_a_store_create_nothing(workdir, args):
    result = runner.invoke(app, args)
    assert "no MLflow store at ./mlflow.db" in one_error_line(result)
    assert list(workdir.iterdir()) == []


def test_promote_without_an_mlflow_store_creates_none(workdir):
    optuna.create_study(study_name="tiny", storage="sqlite:///tunetrack.db")
    result = runner.invoke(app, ["promote", "tiny", "--model-name", "m"])
    assert "no MLflow store at ./mlflow.db" in one_error_line(result)
    assert not (workdir / "mlflow.db").exists()


# ---- a store of the wrong kind is refused, and left as it was ----------------------------


def _optuna_db(path: Path) -> Path:
    optuna.create_study(study_name="other", storage=f"sqlite:///{path}")
    return path


def _unrelated_db(path: Path) -> Path:
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE invoices (id INTEGER)")
    return path


def test_tracking_uri_at_the_optuna_database_is_refused(workdir):
    db = _optuna_db(workdir / "tunetrack.db")
    before = tables(db)
    file = write_study(workdir, tracking={"enabled": True})
    result = runner.invoke(app, ["run", str(file), "--no-progress",
                                 "--tracking-uri", "sqlite:///tunetrack.db"])
    assert "./tunetrack.db is a tunetrack/Optuna study storage, not an MLflow store" in \
        one_error_line(result)
    assert tables(db) == before
    assert optuna.get_all_study_names(f"sqlite:///{db}") == ["other"]  # no study row added


@pytest.mark.parametrize("command", [["run", "tiny.yaml", "--no-progress"], ["status", "tiny"]])
def test_storage_at_the_mlflow_store_is_refused(workdir, template_db, command):
    db = workdir / "mlflow.db"
    shutil.copy(template_db, db)
    before = tables(db)
    write_study(workdir)
    result = runner.invoke(app, [*command, "--storage", "sqlite:///mlflow.db"])
    assert "./mlflow.db is an MLflow tracking store, not a study storage" in \
        one_error_line(result)
    assert tables(db) == before


@pytest.mark.parametrize("option", ["--storage", "--tracking-uri"])
def test_an_unrelated_sqlite_file_is_refused(workdir, option):
    db = _unrelated_db(workdir / "accounts.db")
    file = write_study(workdir, tracking={"enabled": True})
    result = runner.invoke(app, ["run", str(file), "--no-progress", option,
                                 "sqlite:///accounts.db"])
    assert "./accounts.db is an SQLite database of something else (tables invoices)" in \
        one_error_line(result)
    assert tables(db) == {"invoices"}


def _half_created(template_db: Path, db: Path, how: str) -> None:
    shutil.copy(template_db, db)
    with sqlite3.connect(db) as connection:
        if how == "revision behind":
            connection.execute("UPDATE alembic_version SET version_num = '0584bdc529eb'")
        elif how == "no alembic_version":
            connection.execute("DROP TABLE alembic_version")
        else:
            connection.execute("DROP TABLE model_versions")


@pytest.mark.parametrize("how", ["revision behind", "no alembic_version", "tables missing"])
def test_a_half_created_mlflow_store_is_refused_before_anything_runs(workdir, template_db, how):
    _half_created(template_db, workdir / "mlflow.db", how)
    file = write_study(workdir, tracking={"enabled": True})
    result = runner.invoke(app, ["run", str(file), "--no-progress"])
    assert ("./mlflow.db is a half-created MLflow store" in one_error_line(result)
            and "delete it or point --tracking-uri elsewhere" in result.stderr)
    assert not (workdir / "tunetrack.db").exists()


def test_a_store_creation_cut_short_leaves_no_store(tmp_path, monkeypatch):
    from tunetrack.tracking.store import uri

    def full_disk(db: Path, **_):
        db.write_bytes(b"SQLite format 3\x00 and then the disk was full")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(uri, "_migrate", full_disk)
    with pytest.raises(OSError):
        uri.ensure_local_store(uri.sqlite_uri(tmp_path / "mlflow.db"))
    assert sorted(p.name for p in tmp_path.iterdir()) == [".mlflow.db.lock"]


# ---- impossible budgets --------------------------------------------------------------------


@pytest.mark.parametrize(("args", "message"), [
    (["run", "tiny.yaml", "--timeout", "-5"], "--timeout must be > 0 seconds but got -5"),
    (["run", "tiny.yaml", "--timeout", "0"], "--timeout must be > 0 seconds but got 0"),
    (["run", "tiny.yaml", "--trials", "0"], "--trials must be >= 1 but got 0"),
    (["run", "tiny.yaml", "--trials", "-3"], "--trials must be >= 1 but got -3"),
    (["worker", "tiny.yaml", "--trials-total", "0"], "--trials-total must be >= 1 but got 0"),
])
def test_an_impossible_budget_is_one_line_before_anything_is_created(workdir, args, message):
    write_study(workdir)
    result = runner.invoke(app, [*args, "--no-tracking"] if args[0] == "worker" else
                           [*args, "--no-progress"])
    assert message in one_error_line(result)
    assert sorted(p.name for p in workdir.iterdir()) == ["tiny.yaml"]


# ---- resuming with a changed file ----------------------------------------------------------

CHANGES = {
    "log flag": ({"train": {"lr": {"float": [1e-3, 3e-2]}}},
                 "train.lr float [0.001, 0.03] log; the file now says float [0.001, 0.03]"),
    "range": ({"model": {"depth": {"int": [1, 4]}}},
              "model.depth int [1, 2]; the file now says int [1, 4]"),
    "choices": ({"train": {"optimizer": {"choice": ["adam", "sgd", "adamw"]}}},
                "train.optimizer choice adam, sgd; the file now says choice adam, sgd, adamw"),
    "condition": ({"train": {"momentum": {"float": [0.8, 0.95], "when": {"optimizer": "adam"}}}},
                  "the file now says float [0.8, 0.95] when train.optimizer in ['adam']"),
    "metric": ({"search": {"metric": "val_loss", "direction": "minimize"}},
               "objective maximize val_accuracy; the file now says minimize val_loss"),
    "direction": ({"search": {"direction": "minimize"}},
                  "objective maximize val_accuracy; the file now says minimize val_accuracy"),
    "fixed setting": ({"train": {"max_epochs": 5}},
                      "train.max_epochs fixed 2; the file now says fixed 5"),
}


@pytest.fixture(scope="module")
def one_trial_study(tmp_path_factory) -> Path:
    """A folder with a finished one-trial study `tiny`, copied by each test."""
    folder = tmp_path_factory.mktemp("resumable")
    file = write_study(folder, n_trials=1, max_epochs=2)
    result = subprocess.run([*CLI, "run", str(file), "--no-progress"], cwd=folder,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return folder


def _study_state(db: Path) -> tuple:
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{db}")
    storage = study._storage
    return ([(t.state, t.params) for t in study.trials], study.user_attrs,
            storage.get_study_system_attrs(study._study_id))


def _edited(folder: Path, change: dict) -> Path:
    spec = tiny_study(n_trials=1, max_epochs=2)
    for section, values in change.items():
        spec[section] = {**spec[section], **values}
    file = folder / "tiny.yaml"
    file.write_text(yaml.safe_dump(spec, sort_keys=False))
    return file


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_resuming_with_a_changed_space_or_objective_stops_and_writes_nothing(
        one_trial_study, workdir, change):
    shutil.copy(one_trial_study / "tunetrack.db", workdir / "tunetrack.db")
    before = _study_state(workdir / "tunetrack.db")
    edit, named = CHANGES[change]
    result = runner.invoke(app, ["run", str(_edited(workdir, edit)), "--no-progress"])
    line = one_error_line(result)
    assert line.startswith("error: study 'tiny' was created with ") and named in line
    assert "rename `name:` in the file or delete the study" in line
    assert _study_state(workdir / "tunetrack.db") == before  # no FAIL trial, spec untouched


def test_resuming_with_a_new_budget_or_tracking_options_is_allowed(one_trial_study, workdir):
    shutil.copy(one_trial_study / "tunetrack.db", workdir / "tunetrack.db")
    _, attrs_before, system_before = _study_state(workdir / "tunetrack.db")
    file = _edited(workdir, {"search": {"n_trials": 2, "timeout_s": 600},
                             "tracking": {"log_models": "none"}})
    file.write_text("# a comment\n" + file.read_text())
    result = runner.invoke(app, ["run", str(file), "--no-progress"])
    assert result.exit_code == 0, result.output
    trials, attrs, system = _study_state(workdir / "tunetrack.db")
    assert len(trials) == 1 + 2  # `--trials` default: the file's n_trials more
    assert (attrs, system) == (attrs_before, system_before)  # it keeps its creation spec


# ---- two runs at once -----------------------------------------------------------------------


def test_two_processes_on_one_fresh_study_draw_different_parameters(tmp_path):
    """In one process for speed: two studies opened on one storage (as two `run` processes
    would), asking in turns. Same seed, same (empty) history: before, the same draws."""
    from tunetrack.search.config import StudySpec
    from tunetrack.search.runner import create_or_load
    from tunetrack.search.space import SearchSpace
    from tunetrack.search.storage import open_storage

    spec = StudySpec.model_validate(tiny_study(search={"sampler": "random"}))
    space = SearchSpace(spec)
    url = f"sqlite:///{tmp_path / 'tunetrack.db'}"
    first = create_or_load(spec, space, open_storage(url))
    second = create_or_load(spec, space, open_storage(url))
    drawn = []
    for _ in range(3):
        for study in (first, second):
            trial = study.ask()
            drawn.append(tuple(sorted(space.sample(trial).items())))
            study.tell(trial, 0.5)
    assert len(set(drawn)) == len(drawn)
    alone = create_or_load(spec.model_copy(update={"name": "alone"}), space, open_storage(url))
    again = create_or_load(spec.model_copy(update={"name": "again"}), space, open_storage(url))
    assert space.sample(alone.ask()) == space.sample(again.ask())  # one process: reproducible


@pytest.mark.slow
def test_two_tracked_runs_started_together_on_a_fresh_study(tmp_path):
    """Two processes, MLflow's migrations and four helper processes: ~2 min on 2 cores."""
    file = write_study(tmp_path, n_trials=3, max_epochs=2, tracking={"enabled": True})
    procs = [subprocess.Popen([*CLI, "run", str(file), "--no-progress"], cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "MLFLOW_TRACKING_URI": ""})
             for _ in range(2)]
    outputs = [proc.communicate(timeout=600) for proc in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path}/tunetrack.db")
    params = [tuple(sorted(t.params.items())) for t in study.trials]
    assert len(params) == 6 and len(set(params)) == 6
    from mlflow import MlflowClient

    from tunetrack.tracking.store import check_mlflow_store

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    check_mlflow_store(uri, must_exist=True)
    runs = MlflowClient(uri).search_runs(
        [MlflowClient(uri).get_experiment_by_name("tiny").experiment_id])
    assert len([r for r in runs if r.data.tags.get("tunetrack.role") == "trial"]) == 6


# ---- a process killed mid-trial -------------------------------------------------------------


def _run_until_a_trial_runs(folder: Path, file: Path) -> subprocess.Popen:
    proc = subprocess.Popen([*CLI, "run", str(file), "--no-progress"], cwd=folder,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", "MLFLOW_TRACKING_URI": ""})
    try:  # mid-trial, not between two trials, and its MLflow run recorded
        wait_mid_trial(f"sqlite:///{folder / 'tunetrack.db'}", "tiny", max_epochs=40,
                       timeout=180, user_attr="mlflow_run_id")
    except AssertionError:
        proc.kill()
        raise AssertionError("no trial started: " + proc.communicate()[1][-2000:]) from None
    return proc


def test_a_sigkilled_trial_is_shown_by_status_and_failed_retried_and_ended_by_repair(
        workdir, template_db):
    shutil.copy(template_db, workdir / "mlflow.db")
    file = write_study(workdir, n_trials=50, max_epochs=40, tracking={"enabled": True},
                       train={"batch_size": 32, "early_stopping": {"patience": None}},
                       search={"pruner": {"type": "none"}})
    proc = _run_until_a_trial_runs(workdir, file)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    storage = f"sqlite:///{workdir}/tunetrack.db"
    killed = optuna.load_study(study_name="tiny", storage=storage).trials[-1]
    assert killed.state.name == "RUNNING"  # nobody could clean up

    status = runner.invoke(app, ["status", "tiny"])  # a look shows it, and changes nothing
    assert status.exit_code == 0, status.output
    assert "process gone; `tunetrack repair tiny`" in status.stdout
    assert optuna.load_study(study_name="tiny", storage=storage).trials[
        killed.number].state.name == "RUNNING"
    repair = runner.invoke(app, ["repair", "tiny"])
    assert repair.exit_code == 0, repair.output
    assert f"failed and queued again 1 trial(s) whose process died: #{killed.number}" in \
        repair.stdout
    trials = optuna.load_study(study_name="tiny", storage=storage).trials
    dead = trials[killed.number]
    assert dead.state.name == "FAIL"
    assert dead.user_attrs["reason"].startswith(f"process died (pid {proc.pid} on ")
    retry = trials[-1]
    assert retry.state.name == "WAITING" and retry.params == dead.params
    assert retry.system_attrs["retry_history"] == [dead.number]
    assert not [t for t in trials if t.state.name == "RUNNING"]

    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    child = client.get_run(killed.user_attrs["mlflow_run_id"])
    assert child.info.status == "FAILED"
    assert child.data.tags["optuna.reason"] == dead.user_attrs["reason"]
    study = optuna.load_study(study_name="tiny", storage=storage)
    parent = client.get_run(study.user_attrs["mlflow_parent_run_id"])
    assert parent.info.status == "KILLED"  # nothing of the study runs any more

    again = runner.invoke(app, ["repair", "tiny"])  # a second repair changes nothing
    assert again.exit_code == 0 and "nothing to repair" in again.stdout
    assert len(optuna.load_study(study_name="tiny", storage=storage).trials) == len(trials)


def test_a_live_trial_is_never_judged_dead(tmp_path):
    from tunetrack.search.stale_trials import owner_died, this_process

    me = this_process()
    assert not owner_died(me)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        alive = {**me, "pid": child.pid}
        from tunetrack.search.stale_trials import _start_time

        alive["start"] = _start_time(child.pid)
        assert not owner_died(alive)
        assert owner_died({**alive, "start": "1"})  # the pid now belongs to another process
        assert not owner_died({**alive, "host": "elsewhere", "start": "1"})  # not ours to judge
    finally:
        child.kill()
        child.wait()
    assert owner_died(alive)  # gone


def test_a_worker_waiting_on_a_dead_local_trial_retries_it_instead_of_stopping(tmp_path):
    """Journal storage has no heartbeats: before, the budget stopped the worker at once and
    the dead process's trial stayed RUNNING; now it is failed, queued and run."""
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    from tunetrack.search.shared_study import clean_up_dead_trials
    from tunetrack.search.stale_trials import OWNER_ATTR, this_process
    from tunetrack.search.trial_budget import SharedTrialBudget

    storage = JournalStorage(JournalFileBackend(str(tmp_path / "tunetrack.journal")))
    study = optuna.create_study(study_name="j", storage=storage)
    study.tell(study.ask({"x": optuna.distributions.FloatDistribution(0, 1)}), 1.0)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    orphan = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    storage.set_trial_system_attr(orphan._trial_id, OWNER_ATTR,
                                  {**this_process(), "pid": gone.pid, "start": "1"})
    ran: list[float] = []
    study.optimize(lambda t: ran.append(t.suggest_float("x", 0, 1)) or 0.5, n_trials=5,
                   callbacks=[SharedTrialBudget(3, poll_s=0.1, clean_up=lambda s:
                                                clean_up_dead_trials(s, tracking_uri=None))])
    states = [t.state.name for t in study.trials]
    assert states[orphan.number] == "FAIL"
    assert states.count("COMPLETE") == 3 and "RUNNING" not in states
    assert orphan.params["x"] in ran  # the retry ran with the dead trial's parameters


# ---- PostgreSQL: the same refusals, and heartbeats judged by the reading commands ----------


@pytest.mark.postgres
def test_postgres_reading_an_empty_database_or_mlflows_is_refused(workdir):
    from .scaleout_support import _admin

    with _admin():
        pass  # skips when PostgreSQL is not reachable
    from mlflow import MlflowClient

    from .scaleout_support import PG_ADMIN_URL

    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    name = f"tunetrack_test_{os.getpid()}"
    with _admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        url = f"{base}/{name}"
        result = runner.invoke(app, ["status", "tiny", "--storage", url])
        assert "no study store at " in one_error_line(result)
        MlflowClient(url).search_experiments()  # MLflow's tables in it
        result = runner.invoke(app, ["run", str(write_study(workdir)), "--no-progress",
                                     "--storage", url])
        assert "the database is an MLflow tracking store, not a study storage" in \
            one_error_line(result)
    finally:
        with _admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.postgres
def test_postgres_repair_fails_a_trial_whose_heartbeat_stopped(workdir, pg_url):  # noqa: F811
    from tunetrack.search.shared_study import open_shared_storage
    from tunetrack.search.stale_trials import OWNER_ATTR, Heartbeat, this_process

    storage = open_shared_storage(pg_url, Heartbeat(1, 2, 1), study_name="tiny",
                                  tracking_uri=None, track=False)
    study = optuna.create_study(study_name="tiny", storage=storage)
    trial = study.ask()
    trial.suggest_float("x", 0, 1)
    remote = {**this_process(), "host": "another-host", "grace_s": 2}  # alive, as far as we know
    storage.set_trial_system_attr(trial._trial_id, OWNER_ATTR, remote)
    storage.record_heartbeat(trial._trial_id)
    result = runner.invoke(app, ["repair", "tiny", "--storage", pg_url])
    assert result.exit_code == 0 and "nothing to repair" in result.stdout  # grace not over
    time.sleep(3.5)
    result = runner.invoke(app, ["status", "tiny", "--storage", pg_url])
    assert "RUNNING" in result.stdout  # a look writes nothing
    result = runner.invoke(app, ["repair", "tiny", "--storage", pg_url])
    assert result.exit_code == 0, result.output
    states = [t.state.name for t in optuna.load_study(study_name="tiny", storage=pg_url).trials]
    assert states == ["FAIL", "WAITING"]


def test_a_reworded_description_never_refuses_a_study(tmp_path, monkeypatch):
    """Signatures compare values, not wording: a tunetrack that describes ranges differently
    still resumes the studies an older one created, and still names what changed."""
    from tunetrack.search.config import StudySpec
    from tunetrack.search.resume import check_resume
    from tunetrack.search.runner import create_or_load
    from tunetrack.search.space import Dimension, SearchSpace
    from tunetrack.search.storage import open_storage

    spec = StudySpec.model_validate(tiny_study())
    storage = open_storage(f"sqlite:///{tmp_path / 'tunetrack.db'}")
    create_or_load(spec, SearchSpace(spec), storage)
    monkeypatch.setattr(Dimension, "describe", lambda self: f"{self.kind} (new wording)")
    assert check_resume(spec, SearchSpace(spec), storage)  # exists, same space
    wider = StudySpec.model_validate(tiny_study(model={"depth": {"int": [1, 3]}}))
    with pytest.raises(Exception, match=r"model\.depth int \[1, 2\]; the file now says int "
                                        r"\(new wording\)"):
        check_resume(wider, SearchSpace(wider), storage)


def test_after_the_first_trial_the_study_has_an_ordinary_sampler(tmp_path):
    from tunetrack.search.config import StudySpec
    from tunetrack.search.runner import create_or_load
    from tunetrack.search.space import SearchSpace
    from tunetrack.search.storage import open_storage

    spec = StudySpec.model_validate(tiny_study(search={"sampler": "random"}))
    study = create_or_load(spec, SearchSpace(spec), open_storage(f"sqlite:///{tmp_path}/t.db"))
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    assert type(study.sampler) is optuna.samplers.RandomSampler


@pytest.mark.postgres
def test_postgres_tracking_uri_at_the_optuna_database_is_refused(workdir, pg_url):  # noqa: F811
    optuna.create_study(study_name="other", storage=pg_url)
    file = write_study(workdir, tracking={"enabled": True})
    result = runner.invoke(app, ["run", str(file), "--no-progress", "--tracking-uri", pg_url])
    assert "the database is a tunetrack/Optuna study storage, not an MLflow store" in \
        one_error_line(result)
    assert optuna.get_all_study_names(pg_url) == ["other"]


def test_an_error_raised_while_ctrl_c_is_handled_is_still_one_line_and_130():
    """A database call cut off by Ctrl-C can fail the cleanup that follows with another
    error; that is still the interrupt, not a bug."""
    import typer

    from tunetrack.search.cli import user_errors

    @user_errors
    def interrupted_then_broken():
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise RuntimeError("Can't reconnect until invalid transaction is rolled back")  # noqa: B904

    @user_errors
    def broken():
        raise RuntimeError("a bug")

    with pytest.raises(typer.Exit) as stopped:
        interrupted_then_broken()
    assert stopped.value.exit_code == 130
    with pytest.raises(RuntimeError, match="a bug"):
        broken()
