"""Inputs that used to end in a traceback (or, worse, in a run that looked fine): each is now
one line naming what is wrong and what is allowed, exit 2, nothing written; docs/faults.md,
"Inputs refused in one line", lists them."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from typer.testing import CliRunner

from tunetrack.search.cli import app

from .studyfiles import tiny_study, write_study
from .support import errors_of, orphan_trial
from .test_cli_faults import one_error_line

runner = CliRunner(env={"COLUMNS": "200"})
SEED_RANGE = "must be in [0, 4294967295] (2**32 - 1, numpy's seed range)"


# ---- seeds -------------------------------------------------------------------------------

@pytest.mark.parametrize(("where", "seed"), [
    ("seed", -1), ("seed", 2**32), ("dataset.seed", -1), ("train.seed", 2**32)])
def test_a_seed_outside_numpys_range_is_refused_by_validate(where, seed):
    raw = tiny_study()
    if where == "seed":
        raw["seed"] = seed
    else:
        section, key = where.split(".")
        raw[section][key] = seed
    line = f"seed: {SEED_RANGE} but got {seed}" if where == "seed" else (
        f"{where} {SEED_RANGE} but got {seed}")
    assert errors_of(raw) == [line]


def test_the_highest_seed_runs_and_resumes(workdir):
    # the split seed + 1 and the sampler's seed + first trial number pass 2**32 - 1: they wrap
    top = 2**32 - 1
    file = write_study(workdir, n_trials=1, max_epochs=1, seed=top,
                       dataset={"name": "digits", "max_samples": 300, "seed": top},
                       train={"seed": top})
    for _ in range(2):  # the second run's sampler is seeded with top + 1
        result = runner.invoke(app, ["run", str(file), "--no-progress"])
        assert result.exit_code == 0, result.output
    trials = optuna.load_study(study_name="tiny", storage="sqlite:///tunetrack.db").trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]


# ---- splits ------------------------------------------------------------------------------

def test_a_test_fraction_of_zero_is_refused_by_validate():
    raw = tiny_study(dataset={"name": "digits", "test_fraction": 0})
    assert errors_of(raw) == [
        "dataset.test_fraction must be in (0, 1) (the test split scores each completed "
        "trial and decides promotion) but got 0.0"]


# ---- storages ----------------------------------------------------------------------------

@pytest.mark.parametrize(("url", "example"), [
    ("sqlite:///store", "sqlite:///{folder}/tunetrack.db"),
    ("journal:store", "journal:store/tunetrack.journal")])
@pytest.mark.parametrize("command", ["run", "status"])
def test_a_storage_naming_a_folder_is_one_line(workdir, url, example, command):
    folder = workdir / "store"
    folder.mkdir()
    args = ["run", str(write_study(workdir))] if command == "run" else ["status", "tiny"]
    line = one_error_line(runner.invoke(app, [*args, "--storage", url]))
    assert f"storage {url}: " in line and "is a folder, not a file; name a file in it" in line
    assert example.format(folder=folder) in line
    assert list(folder.iterdir()) == []


# ---- a read-only store -------------------------------------------------------------------

def _as_a_user_permissions_bind() -> list[str]:
    """The command prefix under which file permissions hold: root ignores them, so as root
    the command runs as `nobody`."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: permissions cannot be tested")
    return [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]


@pytest.fixture
def read_only_store():
    """A folder `nobody` may read but not write, holding study `made` (two complete trials
    and one RUNNING trial of a process that is gone) as SQLite file `tunetrack.db`, and a
    writable home beside it (outside pytest's private temporary folder)."""
    root = Path("/tmp") / f"tunetrack-read-only-{os.getpid()}"
    shutil.rmtree(root, ignore_errors=True)
    folder, home = root / "store", root / "home"
    for path in (root, folder, home):
        path.mkdir()
    home.chmod(0o777)
    url = f"sqlite:///{folder}/tunetrack.db"
    study = optuna.create_study(study_name="made", storage=url, direction="maximize")
    study.optimize(lambda t: t.suggest_float("train.lr", 1e-4, 1e-1, log=True), n_trials=2)
    number = orphan_trial(url)
    del study
    for path in (folder, *folder.iterdir()):
        path.chmod(0o555 if path.is_dir() else 0o444)
    yield folder, number
    folder.chmod(0o755)
    shutil.rmtree(root)


def test_a_read_only_store_with_a_dead_trial_is_read_and_repair_is_one_line(read_only_store):
    folder, number = read_only_store
    db, home = folder / "tunetrack.db", folder.parent / "home"
    before = db.read_bytes()
    env = {**os.environ, "HOME": str(home), "MPLCONFIGDIR": str(home), "COLUMNS": "200"}
    env.pop("MLFLOW_TRACKING_URI", None)
    cli = [*_as_a_user_permissions_bind(), sys.executable, "-m", "tunetrack.search.cli"]

    def tunetrack(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*cli, *args, "--storage", f"sqlite:///{db}"], cwd=folder,
                              env=env, capture_output=True, text=True, timeout=120)

    status = tunetrack("status", "made")
    assert status.returncode == 0, status.stderr
    assert "process gone; `tunetrack repair made`" in status.stdout
    best = tunetrack("best", "made")
    assert best.returncode == 0 and "train.lr" in best.stdout, best.stderr
    compare = tunetrack("compare", "made")
    assert compare.returncode == 0, compare.stderr
    repair = tunetrack("repair", "made")
    assert repair.returncode == 2 and repair.stderr.count("\n") == 1, repair.stderr
    assert "cannot repair study made: its store" in repair.stderr
    assert "refuses writes (attempt to write a readonly database)" in repair.stderr
    assert db.read_bytes() == before and sorted(p.name for p in folder.iterdir()) == [
        "tunetrack.db"]
    with sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True) as connection:
        states = [row[0] for row in connection.execute(
            "SELECT state FROM trials ORDER BY number")]
    assert states == ["COMPLETE", "COMPLETE", "RUNNING"] and number == 2


# ---- validate on a huge file -------------------------------------------------------------

def test_validate_reads_a_huge_choice_with_libyaml_and_shows_it_in_one_short_line(workdir):
    import yaml

    from tunetrack.search.study_file import _unique_key_loader

    if yaml.__with_libyaml__:  # the pure-Python scanner took a minute on a 5 MB file
        assert issubclass(_unique_key_loader(), yaml.CSafeLoader)
    widths = list(range(1, 100_001))  # 0.6 MB of YAML
    raw = tiny_study(model={"family": "mlp", "width": {"choice": widths}})
    (workdir / "huge.yaml").write_text(yaml.safe_dump(raw, default_flow_style=None))
    result = runner.invoke(app, ["validate", "huge.yaml"])
    assert result.exit_code == 0, result.output
    row = next(line for line in result.stdout.splitlines() if "model.width" in line)
    assert "choice 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, ... (99988 more)" in row
    assert len(result.stdout) < 5000  # before: every value in the table, 0.7 MB of cells


def test_a_value_listed_twice_in_a_long_choice_is_named_alone():
    raw = tiny_study(model={"family": "mlp", "width": {"choice": [*range(1, 5000), 7]}})
    assert errors_of(raw) == ["model.width.choice: choice lists a value twice: 7"]


# ---- YAML 1.1 booleans -------------------------------------------------------------------

def test_an_unquoted_off_in_a_string_field_is_named_with_the_way_out():
    raw = tiny_study(train={"scheduler": {"choice": ["none", False]}, "optimizer": False})
    assert errors_of(raw) == [
        "train.optimizer: False is not a valid str (YAML reads an unquoted off, no or false "
        "as False; quote the word: 'off')"]
    del raw["train"]["optimizer"]
    assert errors_of(raw) == [
        "train.scheduler.choice: False is not a valid str (YAML reads an unquoted off, no or "
        "false as False; quote the word: 'off')"]  # once: not again as an unknown name


# ---- registry names ----------------------------------------------------------------------

@pytest.mark.parametrize(("registry", "line"), [
    ({"model_name": "team/digits"},
     "registry.model_name: must not contain '/' or ':' (MLflow's rule), got 'team/digits'"),
    ({"model_name": "a:b"},
     "registry.model_name: must not contain '/' or ':' (MLflow's rule), got 'a:b'"),
    ({"model_name": ".."},
     "registry.model_name: must read as one plain name (MLflow treats it as a path), got '..'"),
    ({"model_name": "  "}, "registry.model_name: must not be blank"),
    ({"model_name": "ok", "alias": "v2"},
     "registry.alias: 'v2' is reserved by MLflow for versions; choose another"),
])
def test_validate_checks_registry_names_by_mlflows_rules(registry, line):
    assert errors_of(tiny_study(registry=registry)) == [line]


def test_the_registry_names_validate_accepts_are_the_ones_mlflow_accepts():
    from mlflow.exceptions import MlflowException
    from mlflow.utils.validation import _validate_model_name

    from tunetrack.tracking.registry import model_name_problem

    for name in ["digits", "digits classifier", "a.b", "..x", "a/b", "a:b", ".", "./a",
                 "a//b", "a/", "", " ", "ünïcode"]:
        try:
            _validate_model_name(name)
            mlflow_ok = True
        except MlflowException:
            mlflow_ok = False
        assert (model_name_problem(name) is None) == mlflow_ok, name


# ---- Optuna's warnings -------------------------------------------------------------------

def _optuna_lines(caplog: pytest.LogCaptureFixture) -> str:
    """Optuna's log lines that got past its loggers' levels, then forgotten."""
    lines = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("optuna"))
    caplog.clear()
    return lines


def test_optunas_warnings_are_shown_only_with_vv(caplog):
    import logging
    import warnings

    from tunetrack.search.optuna_warnings import optuna_log_level

    contour = logging.getLogger("optuna.visualization._contour")
    failed = logging.getLogger("optuna.study._optimize")
    before = optuna.logging.get_verbosity()
    try:
        with warnings.catch_warnings(record=True) as caught:
            optuna_log_level(logging.WARNING)  # the default: no -v
            contour.warning("Param x unique value length is less than 2.")
            failed.warning("Trial 3 failed with parameters: {} because of the following error")
            warnings.warn_explicit("fewer than two trials", UserWarning, "importance.py", 1,
                                   module="optuna.importance._base")
            assert caught == []
            shown = _optuna_lines(caplog)
            assert "unique value length" not in shown and "Trial 3 failed" in shown
            optuna_log_level(logging.INFO)  # -vv
            contour.warning("Param x unique value length is less than 2.")
            assert "unique value length" in _optuna_lines(caplog)
    finally:
        optuna.logging.set_verbosity(before)
        failed.setLevel(logging.NOTSET)


def test_the_plot_drawing_processes_keep_optunas_warnings_for_vv(caplog, monkeypatch):
    from tunetrack.tracking.pictures.plot_png import quiet_optuna_logs

    before = optuna.logging.get_verbosity()
    study = optuna.create_study()
    for lr in (0.1, 0.2, 0.3):  # `act` takes one value: contour warns about it
        study.enqueue_trial({"lr": lr, "act": "relu"})
    study.optimize(lambda t: t.suggest_float("lr", 0, 1) + len(t.suggest_categorical(
        "act", ["relu", "gelu"])), n_trials=3)
    try:
        for level, warned in (("WARNING", False), ("DEBUG", True)):
            monkeypatch.setenv("TUNETRACK_LOG_LEVEL", level)
            quiet_optuna_logs()
            caplog.clear()
            optuna.visualization.plot_contour(study)
            assert ("unique value length is less than 2" in _optuna_lines(caplog)) is warned
    finally:
        optuna.logging.set_verbosity(before)


# ---- secrets -----------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "shown"), [
    ("postgresql://tunetrack:s3cret@db:5432/optuna", "postgresql://tunetrack:***@db:5432/optuna"),
    ("postgresql+psycopg://u:p@ss:w@rd@h/db?sslmode=require&password=s3cret",
     "postgresql+psycopg://u:***@h/db?sslmode=require&password=***"),
    ("https://me:tok3n@[::1]:5000/", "https://me:***@[::1]:5000/"),
    ("error: cannot open mysql://a:s3cret@h/db (connection refused); http://x:s3cret@z/",
     "error: cannot open mysql://a:***@h/db (connection refused); http://x:***@z/"),
    ("postgresql://tunetrack@db/optuna", "postgresql://tunetrack@db/optuna"),
    ("sqlite:////data/tunetrack.db", "sqlite:////data/tunetrack.db"),
])
def test_one_redaction_rule_hides_every_password(text, shown):
    from tunetrack.tracking.store import redact

    assert redact(text) == shown


def test_errors_and_log_lines_quoting_a_url_never_show_its_password(workdir, monkeypatch):
    import io
    import logging
    from contextlib import redirect_stderr

    from tunetrack.search import storage as storage_module

    secret = "postgresql://tunetrack:s3cret@127.0.0.1:1/optuna"
    result = runner.invoke(app, ["status", "tiny", "--storage", secret])
    assert "s3cret" not in result.output and "tunetrack:***@127.0.0.1:1" in result.output

    def quoting(*_args, **_kwargs):  # a driver that quotes the URL it was given
        raise RuntimeError(f"could not parse {secret}\nmore")

    monkeypatch.setattr(storage_module, "_check_database", quoting)
    line = one_error_line(runner.invoke(app, ["status", "tiny", "--storage", secret]))
    assert "s3cret" not in line and "could not parse postgresql://tunetrack:***@" in line
    stream = io.StringIO()  # the command's log handler (installed by the commands above)
    with redirect_stderr(stream):
        logging.getLogger("tunetrack.search").warning("store %s is slow", secret)
    assert stream.getvalue() == "store postgresql://tunetrack:***@127.0.0.1:1/optuna is slow\n"


def test_a_refused_password_points_to_pgpassword():
    from tunetrack.tracking.store import password_hint

    assert password_hint('FATAL:  password authentication failed for user "tunetrack"') == (
        "; give the password in PGPASSWORD or a ~/.pgpass file (libpq reads both), not in "
        "the URL")
    assert password_hint("connection refused") == ""


# ---- the study's timeout -----------------------------------------------------------------

def test_the_timeout_stops_the_running_trial_between_epochs(workdir):
    from tunetrack.search.runner import run_study

    raw = tiny_study(n_trials=5, max_epochs=400, dataset={"name": "digits", "max_samples": 600},
                     search={"timeout_s": 1, "pruner": {"type": "none"}})
    study = run_study(raw, storage="sqlite:///tunetrack.db")
    [trial] = study.trials  # Optuna's own timeout is checked between trials only
    assert trial.state.name == "PRUNED", trial.user_attrs
    assert trial.user_attrs["stop_reason"] == "callback"
    assert trial.user_attrs["epochs_run"] < 400
    assert trial.user_attrs["reason"] == (
        f"the study's timeout ran out after epoch {trial.user_attrs['epochs_run'] - 1}")
