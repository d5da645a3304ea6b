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
