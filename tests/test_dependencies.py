"""The dependency floors in pyproject.toml (and in the installed metadata) are the ones
docs/dependencies.md records as tested, and plain `postgresql://` URLs work with the
`postgres` extra.
"""

from __future__ import annotations

import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from .scaleout_support import pg_url  # noqa: F401  (fixture)

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
# | mlflow | 3.11.1 | ... : the first two cells of each row of the "tested floors" table
_ROW = re.compile(r"^\| `?([A-Za-z0-9_.-]+)`? \| `?([0-9][0-9A-Za-z.+]*)`? \|", re.M)


def _tested_floors() -> dict[str, str]:
    text = (REPO / "docs" / "dependencies.md").read_text()
    table = text.split("## Tested floors", 1)[1].split("\n## ", 1)[0]
    return {name.lower(): version for name, version in _ROW.findall(table)}


def _floors(requirements: list[str], extra: str | None = None) -> dict[str, str]:
    floors = {}
    for text in requirements:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate({"extra": extra or ""}):
            continue
        lows = [s.version for s in req.specifier if s.operator == ">="]
        if lows:
            floors[req.name.lower()] = lows[0]
    return floors


def _extra(name: str) -> list[str]:
    return PYPROJECT["optional-dependencies"][name]


def test_pyproject_floors_are_the_tested_ones():
    tested = _tested_floors()
    assert {"mlflow", "optuna", "torch", "torchvision"} <= set(tested)
    declared = {**_floors(PYPROJECT["dependencies"]), **_floors(_extra("postgres"))}
    for name, version in tested.items():
        assert declared.get(name) == version, f"{name}: {declared.get(name)} vs tested {version}"


def test_installed_metadata_has_the_same_floors():
    installed = metadata.requires("tunetrack") or []
    assert _floors(installed) == _floors(PYPROJECT["dependencies"]), (
        "reinstall tunetrack (make install): its metadata predates pyproject.toml")
    assert _floors(installed, "postgres") == {
        **_floors(PYPROJECT["dependencies"]), **_floors(_extra("postgres"))}


def test_installed_versions_meet_the_floors():
    for name, floor in _floors(PYPROJECT["dependencies"]).items():
        assert Version(metadata.version(name)) >= Version(floor), name


def test_installed_extras_and_console_script_resolve():
    """What `pip install tunetrack[gpu]` and the `tunetrack` command get, read from the
    installed package: every extra is declared, `gpu` brings NVML (nvidia-ml-py, for
    cost_energy_joules), and the console script loads the CLI and answers --help."""
    dist = metadata.distribution("tunetrack")
    extras = set(dist.metadata.get_all("Provides-Extra") or [])
    assert extras == set(PYPROJECT["optional-dependencies"])
    assert {"dev", "postgres", "dashboard", "gpu"} <= extras
    gpu_only = {Requirement(r).name for r in dist.requires or []
                if Requirement(r).marker is not None
                and Requirement(r).marker.evaluate({"extra": "gpu"})}
    assert gpu_only == {"nvidia-ml-py"}

    (script,) = metadata.entry_points(group="console_scripts", name="tunetrack")
    from tunetrack.search import cli

    assert script.load() is cli.main
    # run it as the installed script does, in its own process: main() leaves with os._exit
    code = ("from importlib.metadata import entry_points; "
            "(script,) = entry_points(group='console_scripts', name='tunetrack'); "
            "script.load()()")
    out = subprocess.run([sys.executable, "-c", code, "--help"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert re.search(r"Usage: tunetrack .*COMMAND", out.stdout), out.stdout


def test_plain_postgresql_urls_use_psycopg_under_the_postgres_extra():
    """SQLAlchemy < 2.1 maps postgresql:// to psycopg2, which the extra does not install;
    the extra's SQLAlchemy floor is the release that maps it to psycopg."""
    import sqlalchemy
    from sqlalchemy.engine import make_url

    floor = _floors(_extra("postgres"))["sqlalchemy"]
    assert Version(floor) >= Version("2.1")
    assert Version(sqlalchemy.__version__) >= Version(floor)
    assert make_url("postgresql://u@h/db").get_dialect().driver == "psycopg"
    assert any(Requirement(r).name == "psycopg" for r in _extra("postgres"))


@pytest.mark.postgres
def test_plain_postgresql_url_opens_optuna_and_mlflow_stores(pg_url):  # noqa: F811
    from tunetrack.search.storage import open_storage
    from tunetrack.tracking.store import check_reachable

    assert pg_url.startswith("postgresql://")  # the form Optuna's docs use
    check_reachable(pg_url)  # MLflow's backend-store check: SQLAlchemy + driver
    storage = open_storage(pg_url)
    assert storage.engine.dialect.driver == "psycopg"
    assert storage.get_all_studies() == []


def test_a_missing_database_driver_is_one_line_naming_it():
    import importlib.util

    from tunetrack.models.errors import TunetrackError
    from tunetrack.search.storage import open_storage

    if importlib.util.find_spec("MySQLdb") is not None:
        pytest.skip("mysqlclient is installed here")
    with pytest.raises(TunetrackError, match=r"driver 'mysqldb' not installed; install the") as err:
        open_storage("mysql://u:secret@127.0.0.1/db")
    assert "secret" not in str(err.value)


# The major versions tunetrack was checked on: private Optuna names (search/optuna_internals.py)
# and MLflow's logging APIs may move in the next one (docs/dependencies.md, "Upper bounds").
_CEILINGS = {"optuna": "6", "mlflow": "4"}


def _ceilings(requirements: list[str]) -> dict[str, str]:
    return {Requirement(text).name.lower(): s.version for text in requirements
            for s in Requirement(text).specifier if s.operator == "<"}


def test_optuna_and_mlflow_have_major_version_ceilings_as_documented():
    declared = _ceilings(PYPROJECT["dependencies"])
    assert {k: declared.get(k) for k in _CEILINGS} == _CEILINGS
    text = (REPO / "docs" / "dependencies.md").read_text()
    table = text.split("## Upper bounds", 1)[1].split("\n## ", 1)[0]
    assert dict(_ROW.findall(table)) == _CEILINGS
    for text in PYPROJECT["dependencies"]:  # what is installed is inside the bounds
        req = Requirement(text)
        if req.name.lower() in _CEILINGS:
            assert metadata.version(req.name) in req.specifier, (req, metadata.version(req.name))
