"""`tunetrack reproduce`: a trial replays bit-exactly on CPU from its MLflow run alone;
changed data, a changed record or another environment are caught and named."""

from __future__ import annotations

import numpy as np
import optuna
import pytest
from mlflow import MlflowClient
from PIL import Image
from typer.testing import CliRunner

from tunetrack.models import DataConfig
from tunetrack.search.cli import app
from tunetrack.search.reproduce import REPRODUCES, reproduce
from tunetrack.tracking import StudyTracker
from tunetrack.tracking import tags as T

from .tracking_support import log_trial

optuna.logging.set_verbosity(optuna.logging.WARNING)
runner = CliRunner()


def _tracked_trial(uri: str, data: DataConfig, epochs: int = 3) -> str:
    study = optuna.create_study(study_name="repro", direction="maximize")
    tracker = StudyTracker(study_name="repro", tracking_uri=uri, log_models="none")
    tracker.start_study(study)
    number = log_trial(tracker, study, data, epochs=epochs, lr=1e-2)
    return study.trials[number].user_attrs[T.ATTR_RUN_ID]


def test_completed_digits_trial_replays_bit_exact(uri):
    run_id = _tracked_trial(uri, DataConfig(name="digits"))
    out = runner.invoke(app, ["reproduce", run_id, "--tracking-uri", uri])
    assert out.exit_code == 0, out.output
    assert "expecting a bit-exact replay" in out.output
    assert "validation history: bit-exact (3 epochs" in out.output
    assert "test accuracy: recorded" in out.output and "(equal)" in out.output
    assert out.output.rstrip().endswith("reproduced")

    client = MlflowClient(uri)
    logged = client.search_runs([client.get_run(run_id).info.experiment_id],
                                filter_string=f"tags.`{REPRODUCES}` = '{run_id}'")
    assert len(logged) == 1
    copy = logged[0]
    assert copy.info.status == "FINISHED" and copy.data.tags["tunetrack.reproduced"] == "true"
    assert copy.data.tags[T.PARENT_RUN_ID] == run_id  # nested under the original in the UI
    recorded = [m.value for m in client.get_metric_history(run_id, "val_loss")]
    replayed = [m.value for m in client.get_metric_history(copy.info.run_id, "val_loss")]
    assert replayed == recorded and len(recorded) == 3

    # the record says another torch: no bit-exact promise, the difference is named
    client.set_tag(run_id, "tunetrack.version.torch", "1.0.0")
    other = reproduce(run_id, tracking_uri=uri, log=False)
    assert other.reproduced and not other.exact
    assert any(d.startswith("torch: 1.0.0 -> ") for d in other.environment_differences)
    assert "within tolerance 0.005" in other.lines[1]

    # a record that the retraining does not match: exit 1 with the reason
    client.log_metric(run_id, "test_accuracy", 0.5, step=0,
                      timestamp=client.get_run(run_id).info.start_time + 10**9)
    bad = runner.invoke(app, ["reproduce", run_id, "--tracking-uri", uri, "--no-log"])
    assert bad.exit_code == 1, bad.output
    assert "not reproduced: test accuracy differs by" in bad.output
    assert "> tolerance 0.005" in bad.output


def _image_folder(root, n_per_class: int = 12):
    rng = np.random.default_rng(0)
    for label in range(3):
        (root / f"c{label}").mkdir(parents=True)
        for i in range(n_per_class):
            pixels = np.clip(rng.normal(60 + 70 * label, 30, (8, 8)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels, mode="L").save(root / f"c{label}" / f"{i:02d}.png")


def test_changed_or_missing_data_is_bad_input(uri, tmp_path):
    folder = tmp_path / "images"
    _image_folder(folder)
    run_id = _tracked_trial(uri, DataConfig(name="imagefolder", path=str(folder),
                                            image_size=8), epochs=2)
    ok = runner.invoke(app, ["reproduce", run_id, "--tracking-uri", uri, "--no-log"])
    assert ok.exit_code == 0, ok.output

    Image.fromarray(np.zeros((8, 8), np.uint8), mode="L").save(folder / "c0" / "00.png")
    changed = runner.invoke(app, ["reproduce", run_id, "--tracking-uri", uri])
    assert changed.exit_code == 2
    assert changed.output.count("\n") == 1  # one line, no traceback
    assert f"the data of run {run_id} changed since it was trained" in changed.output

    for image in folder.rglob("*.png"):
        image.unlink()
    for sub in folder.iterdir():
        sub.rmdir()
    folder.rmdir()
    missing = runner.invoke(app, ["reproduce", run_id, "--tracking-uri", uri])
    assert missing.exit_code == 2 and "is not a folder" in missing.output

    client = MlflowClient(uri)
    experiment = client.get_run(run_id).info.experiment_id
    assert not client.search_runs([experiment], f"tags.`{REPRODUCES}` = '{run_id}'")


@pytest.mark.parametrize(("args", "message"), [
    (["nope"], "unknown MLflow run 'nope'"),
    (["x", "--tolerance", "-1"], "--tolerance must be >= 0"),
])
def test_bad_run_ids_are_one_line(uri, args, message):
    out = runner.invoke(app, ["reproduce", *args, "--tracking-uri", uri])
    assert out.exit_code == 2 and message in out.output
