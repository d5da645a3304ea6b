"""What Optuna's and MLflow's own tools expect to find: the study's metric names (the
dashboard's axis labels), the splits as MLflow dataset inputs of every trial run, contour /
rank / timeline plots and the HTML report on the parent run."""

from __future__ import annotations

import json

import optuna
import pytest
from mlflow import MlflowClient

from tunetrack.models.config import DataConfig
from tunetrack.tracking.runs import dataset_inputs

from .studyfiles import write_study


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    from tunetrack.search import run_study

    folder = tmp_path_factory.mktemp("conventions")
    file = write_study(folder, "conv", n_trials=4, max_epochs=3,
                       tracking={"enabled": True, "log_models": "none"})
    uri = f"sqlite:///{folder}/mlflow.db"
    storage = f"sqlite:///{folder}/t.db"
    study = run_study(file, storage=storage, tracking_uri=uri)
    study.storage_url = storage  # for the dashboard test
    return study, MlflowClient(uri)


def test_study_names_its_metrics(tracked):
    study, _ = tracked
    assert study.metric_names == ["val_accuracy"]
    assert "value_val_accuracy" in study.trials_dataframe().columns  # not "value"


def test_multi_objective_studies_name_every_metric(tmp_path):
    from tunetrack.search.runner import create_or_load
    from tunetrack.search.space import SearchSpace
    from tunetrack.search.storage import open_storage
    from tunetrack.search.study_file import load_study_file

    file = write_study(tmp_path, "pareto", search={
        "objectives": [{"metric": "val_accuracy"}, {"metric": "params"}], "sampler": "nsga2"})
    spec = load_study_file(file)
    study = create_or_load(spec, SearchSpace(spec), open_storage(f"sqlite:///{tmp_path}/p.db"))
    assert study.metric_names == ["val_accuracy", "params"]


def test_every_trial_run_has_its_splits_as_dataset_inputs(tracked):
    study, client = tracked
    for trial in study.trials:
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        inputs = run.inputs.dataset_inputs
        contexts = {i.dataset.name: {t.key: t.value for t in i.tags}["mlflow.data.context"]
                    for i in inputs}
        assert contexts == {"digits-train": "train", "digits-validation": "validation",
                            "digits-test": "test"}
        for i in inputs:
            assert i.dataset.digest == run.data.tags["data_fingerprint"]  # same data, same digest
            assert i.dataset.source_type == "code"
            assert json.loads(i.dataset.source) == {"tags": {"loader":
                                                             "sklearn.datasets.load_digits"}}
        profile = {i.dataset.name: json.loads(i.dataset.profile) for i in inputs}
        assert profile["digits-validation"]["fraction"] == 0.15
        assert sum(p["fraction"] for p in profile.values()) == pytest.approx(1.0)


def test_parent_run_has_contour_rank_timeline_and_the_report(tracked):
    _, client = tracked
    experiment = client.get_experiment_by_name("conv")
    (parent,) = client.search_runs([experiment.experiment_id],
                                   filter_string="tags.`tunetrack.role` = 'parent'")
    files = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"contour.html", "rank.html", "timeline.html", "timeline.png"} <= files, files
    assert "contour.png" not in files  # HTML only: the matplotlib twin costs seconds
    assert "report.html" in files
    local = client.download_artifacts(parent.info.run_id, "report.html")
    with open(local, encoding="utf-8") as handle:
        page = handle.read()
    assert "conv" in page and "contour" in page and "<html" in page.lower()


def test_image_folder_inputs_point_at_the_folder(tmp_path):
    data = DataConfig(name="imagefolder", path=str(tmp_path / "pets"), val_fraction=0.2,
                      test_fraction=0.1, seed=3)
    inputs = dataset_inputs(data, "0123456789abcdef")
    assert [i.dataset.name for i in inputs] == ["pets-train", "pets-validation", "pets-test"]
    for i in inputs:
        assert i.dataset.source_type == "local"
        assert json.loads(i.dataset.source) == {"uri": str(tmp_path / "pets")}
        assert i.dataset.digest == "0123456789abcdef"
    assert json.loads(inputs[0].dataset.profile) == {"fraction": 0.7, "split_seed": 3,
                                                     "max_samples": None}


def test_dashboard_reads_the_metric_names_from_storage(tracked, tmp_path):
    """What optuna-dashboard shows comes from the storage: a fresh load sees the names."""
    study, _ = tracked
    again = optuna.load_study(study_name=study.study_name, storage=study._storage)
    assert again.metric_names == ["val_accuracy"]


def _dashboard_get(storage: str, path: str):
    """GET `path` from optuna-dashboard's WSGI app on `storage`, as the browser would."""
    from wsgiref.util import setup_testing_defaults

    dashboard = pytest.importorskip("optuna_dashboard")
    environ: dict = {"PATH_INFO": path, "REQUEST_METHOD": "GET"}
    setup_testing_defaults(environ)
    status: list[str] = []
    body = b"".join(dashboard.wsgi(storage)(environ, lambda s, h, *a: status.append(s)))
    return status[0], json.loads(body)


def test_optuna_dashboard_shows_the_metric_names(tracked):
    """`optuna-dashboard sqlite:///tunetrack.db` (README) on a study tunetrack ran; its
    /api/studies is also what the compose healthcheck asks."""
    study, _ = tracked
    url = study.storage_url
    status, studies = _dashboard_get(url, "/api/studies")
    assert status.startswith("200")
    (summary,) = [s for s in studies["study_summaries"] if s["study_name"] == "conv"]
    status, detail = _dashboard_get(url, f"/api/studies/{summary['study_id']}")
    assert status.startswith("200") and detail["objective_names"] == ["val_accuracy"]
