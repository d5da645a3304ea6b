"""Fixtures shared across test modules."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tiny models: one intra-op thread is fastest, and robust when the cores are shared."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def splits():
    """Synthetic data for trainer tests: 96 samples -> 66 train / 15 val / 15 test, 4 classes
    of 1x8x8. Modules that need other data (digits, an image folder) define their own."""
    from tunetrack.models import DataConfig, load_splits

    return load_splits(DataConfig(name="synthetic", n_samples=96, n_classes=4))


@pytest.fixture(autouse=True, scope="session")
def _children_take_ctrl_c():
    """The signal tests send SIGINT to a `tunetrack` child. A shell's background job (`make
    test &`) ignores SIGINT, and an ignored signal stays ignored across exec, so those
    children would finish instead; a handler here is reset to the default in each child."""
    import signal

    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield


@pytest.fixture(scope="session")
def template_db(tmp_path_factory) -> Path:
    """An empty, migrated MLflow database: copying it skips MLflow's slow schema setup."""
    from mlflow import MlflowClient

    path = tmp_path_factory.getbasetemp() / "mlflow-template.db"
    if not path.exists():
        MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def uri(tmp_path, template_db, monkeypatch):
    """A fresh store outside the cwd: any lookup through MLflow's global default store
    (./mlflow.db) would miss it, so such a bug cannot hide."""
    (tmp_path / "store").mkdir()
    shutil.copy(template_db, tmp_path / "store" / "mlflow.db")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield f"sqlite:///{tmp_path}/store/mlflow.db"
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """An empty cwd with no tracking URI or storage from the environment: the CLI's
    defaults (./tunetrack.db, ./mlflow.db) land here."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("TUNETRACK_STORAGE", raising=False)
    monkeypatch.delenv("OPTUNA_STORAGE", raising=False)
    return tmp_path
