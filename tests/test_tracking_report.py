"""`tunetrack report`: one self-contained HTML file (summary, Optuna plots, top trials, the
best trial's pictures) that headless Chromium renders: plotly draws its SVG, no script
errors, and the screenshot shows the plots."""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import optuna
import pytest
from PIL import Image
from typer.testing import CliRunner

from tunetrack.search.cli import app

from .studyfiles import write_study

runner = CliRunner(env={"COLUMNS": "200"})
PLOTS = ("optimization_history", "param_importances", "parallel_coordinate",
         "intermediate_values", "slice", "contour", "rank", "timeline")
PICTURES = ("curves.png", "lr.png", "confusion_matrix.png", "per_class_error.png",
            "misclassified.png", "first_layer.png", "feature_maps.png")
PLOTLY_PLOT_BACKGROUND = (229, 236, 246)  # #E5ECF6: plotly's default plot area, drawn by JS


def chromium() -> str | None:
    return shutil.which("chromium") or next(
        (p for p in ("/usr/bin/chromium",) if Path(p).exists()), None)


@pytest.fixture(scope="module")
def reported(tmp_path_factory, template_db):
    folder = tmp_path_factory.mktemp("report")
    shutil.copy(template_db, folder / "mlflow.db")  # skips MLflow's schema migrations
    file = write_study(folder, "tiny", n_trials=4, max_epochs=2,
                       tracking={"enabled": True, "log_models": "none"})
    uri, storage = f"sqlite:///{folder}/mlflow.db", f"sqlite:///{folder}/tunetrack.db"
    result = runner.invoke(app, ["run", str(file), "--no-progress", "--storage", storage,
                                 "--tracking-uri", uri])
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="tiny", storage=storage)
    out = folder / "report.html"
    result = runner.invoke(app, ["report", "tiny", "--storage", storage, "--tracking-uri", uri,
                                 "--out", str(out), "--top", "3"])
    assert result.exit_code == 0, result.output
    return out, result, study, storage


def test_report_has_every_section_plot_and_picture(reported):
    out, result, study, _ = reported
    page = out.read_text(encoding="utf-8")
    best = study.best_trial
    assert f"report: {out.resolve()}" in result.stdout
    assert f"of trial {best.number}" in result.stdout
    for section in ("summary", "optuna-plots", "top-trials", "cost", "best-trial"):
        assert f'<section id="{section}">' in page
    for plot in PLOTS:
        assert f'id="plot-{plot}"' in page
    assert f"Best trial: {best.number}" in page and best.user_attrs["mlflow_run_id"] in page
    assert "Top 3 trials" in page and page.count("<tr>") >= 3
    best_section = page.split('<section id="best-trial">')[1]  # the cost plot is before it
    images = re.findall(r'<img src="data:image/png;base64,([^"]+)" alt="([^"]+)"', best_section)
    assert [name for _, name in images] == list(PICTURES)  # all of them, in caption order
    for data, name in images:
        picture = Image.open(io.BytesIO(base64.b64decode(data)))
        assert picture.format == "PNG" and min(picture.size) > 100, name


def test_report_prints_json_for_scripts(reported, tmp_path):
    import json

    _, _, study, storage = reported
    uri = storage.replace("tunetrack.db", "mlflow.db")
    out = tmp_path / "again.html"
    result = runner.invoke(app, ["report", "tiny", "--storage", storage, "--tracking-uri", uri,
                                 "--out", str(out), "-f", "json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["path"] == str(out.resolve()) and summary["plots"] >= 1
    assert summary["best_trial"] == study.best_trial.number


def test_report_is_self_contained(reported):
    page = reported[0].read_text(encoding="utf-8")
    assert not re.search(r"<script[^>]*\bsrc=", page)  # every script inline
    assert not re.search(r"""<(link|img|iframe)[^>]*\b(src|href)=["']?(https?:)?//""", page)
    assert page.count("/* plotly.js ") == 1  # plotly.js embedded once, for all plots
    assert page.count("Plotly.newPlot(") == len(PLOTS) + 1  # and the cost plot


def test_unknown_study_is_one_line(reported):
    _, _, _, storage = reported
    result = runner.invoke(app, ["report", "nope", "--storage", storage])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: unknown study 'nope'")
    assert result.stderr.count("\n") == 1


def test_study_without_a_completed_trial_still_gets_a_report(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    storage = f"sqlite:///{tmp_path}/tunetrack.db"
    study = optuna.create_study(study_name="fresh", storage=storage, direction="maximize")
    study.add_trial(optuna.trial.create_trial(
        state=optuna.trial.TrialState.PRUNED, params={"lr": 0.01},
        distributions={"lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)},
        intermediate_values={0: 0.3, 1: 0.4}))
    result = runner.invoke(app, ["report", "fresh", "--storage", storage])
    assert result.exit_code == 0, result.output
    assert "no completed trial" in result.stdout
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "The study has no completed trial yet." in page and "1 pruned" in page
    assert 'id="plot-intermediate_values"' in page  # what exists is still shown
    assert "<li>Optimization history: no completed trial</li>" in page
    assert not (tmp_path / "mlflow.db").exists()  # reading the report never makes a store


CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                  "--hide-scrollbars", "--virtual-time-budget=15000", "--enable-logging=stderr",
                  "--v=0")


def _chromium(binary: str, profile: Path, page: Path, *action: str) -> subprocess.CompletedProcess:
    profile.mkdir()
    return subprocess.run([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *action,
                           page.as_uri()], capture_output=True, text=True, timeout=120,
                          check=False)


def test_chromium_renders_the_plots(reported, tmp_path):
    binary = chromium()
    if binary is None:
        pytest.skip("chromium is not installed (make browser installs it: apt-get, as root)")
    page = reported[0]
    dom = _chromium(binary, tmp_path / "p1", page, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    errors = [line for line in dom.stderr.splitlines()
              if ":CONSOLE" in line and ("Uncaught" in line or "Error" in line)]
    assert not errors, errors
    assert dom.stdout.count('class="main-svg"') >= len(PLOTS)  # made by plotly.js at runtime
    assert dom.stdout.count("plot-container") >= len(PLOTS)

    shot = tmp_path / "report.png"
    run = _chromium(binary, tmp_path / "p2", page, f"--screenshot={shot}",
                    "--window-size=1200,2400")
    assert run.returncode == 0 and shot.exists(), run.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (2400, 1200)
    colours, counts = np.unique(pixels.reshape(-1, 3), axis=0, return_counts=True)
    assert len(colours) > 200  # text, lines, colours
    assert counts.max() / counts.sum() < 0.8  # far from one flat (blank) background
    plot_area = (pixels == PLOTLY_PLOT_BACKGROUND).all(axis=2).sum()
    assert plot_area > 50_000, plot_area  # plotly drew its plot areas in the picture
