"""What each file of the MLflow record costs to make, to decide what to draw when.

Runs the digits study untracked (`--trials`, default 30), then times, in this process and
warm (the median of `--repeats` calls after one untimed call):
- per completed trial: the tables, each figure of `record.write_trial_artifacts`, and the
  model export (`model_io.log_pytorch_model` into a scratch store);
- per study: each of Optuna's plots as plotly HTML and as a matplotlib PNG.
Prints one table (seconds) and, last, the study plots' total, which the study process
waits for after its last trial unless it overlaps with other work.
Run: python -m bench.figure_costs [--trials 30]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import optuna


def timed(call: Callable[[], object], repeats: int) -> float:
    call()  # imports and caches
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def trial_costs(folder: Path, repeats: int) -> dict[str, float]:
    """Each file of one completed digits trial (an MLP trained for 5 epochs)."""
    from tunetrack.models import (
        DataConfig,
        ModelConfig,
        TrainConfig,
        Trainer,
        classification_metrics,
        create,
        load_splits,
    )
    from tunetrack.tracking.pictures import figures, insight
    from tunetrack.tracking.registry import log_pytorch_model
    from tunetrack.tracking.runs.run_contents import CompletedTrial, write_tables
    from tunetrack.tracking.store import client_for

    splits = load_splits(DataConfig(name="digits"))
    model = create(ModelConfig(width=128, depth=2), splits.input_shape, splits.n_classes,
                   splits.mean, splits.std, seed=0)
    trainer = Trainer(model, TrainConfig(max_epochs=5, device="cpu"), splits)
    fit = trainer.fit()
    done = CompletedTrial.collect(model=model, splits=splits, fit=fit, log_model=True,
                                  test_eval=trainer.evaluate(splits.test))
    report = classification_metrics(done.y_true, done.y_pred, done.classes)
    history = write_tables(folder, done, report)
    support = report.confusion.sum(axis=1)
    client = client_for(f"sqlite:///{folder}/mlflow.db")
    experiment = client.create_experiment("costs", (folder / "art").as_uri())
    run = client.create_run(experiment).info.run_id
    steps = {
        "tables (csv, json)": lambda: write_tables(folder, done, classification_metrics(
            done.y_true, done.y_pred, done.classes)),
        "confusion_matrix.png": lambda: figures.draw_confusion(
            folder / "c.png", report.confusion, done.classes),
        "per_class_error.png": lambda: figures.draw_per_class_error(
            folder / "p.png", report.per_class_error, support),
        "misclassified.png": lambda: figures.draw_misclassified(
            folder / "m.png", done.wrong_images, done.wrong_true, done.wrong_pred,
            done.classes),
        "curves.png": lambda: figures.draw_curves(folder / "cu.png", history, done.best_epoch),
        "lr.png": lambda: figures.draw_lr_curve(folder / "lr.png", history),
        "first_layer.png": lambda: insight.draw_first_layer(folder / "f.png", done.model,
                                                            done.images.shape[1:]),
        "feature_maps.png": lambda: insight.draw_feature_maps(folder / "fm.png", done.model,
                                                              done.images),
        "model export (pt2)": lambda: log_pytorch_model(
            client, run_id=run, experiment_id=experiment, model=done.model,
            example=done.images, metadata={"classes": done.classes, "input_shape": list(
                done.input_shape), "raw_scale": 1.0}),
    }
    return {name: timed(step, repeats) for name, step in steps.items()}


def study_costs(study: optuna.Study, folder: Path, repeats: int) -> dict[str, float]:
    """Each of the parent run's plots, plotly HTML and matplotlib PNG separately."""
    import matplotlib.pyplot as plt

    from tunetrack.tracking.pictures.plot_choice import plot_list
    from tunetrack.tracking.pictures.study_plots import trials_frame

    def png(function: Callable, name: str) -> None:
        axes = function(study)
        figure = (axes if hasattr(axes, "figure") else axes.flat[0]).figure
        figure.savefig(folder / f"{name}.png", dpi=100, bbox_inches="tight")
        plt.close(figure)

    costs = {}
    plots, _ = plot_list(study)
    for name, (plotly_fn, mpl_fn) in plots.items():
        costs[f"{name}.html"] = timed(lambda f=plotly_fn, n=name: f(study).write_html(
            folder / f"{n}.html", include_plotlyjs="cdn"), repeats)
        if mpl_fn is not None:  # contour and rank are HTML only (study_artifacts)
            costs[f"{name}.png"] = timed(lambda f=mpl_fn, n=name: png(f, n), repeats)
    costs["trials.csv"] = timed(lambda: trials_frame(study).to_csv(folder / "t.csv"), repeats)
    return costs


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.simplefilter("ignore")
    from tunetrack.search import load_study_file, run_study

    spec = load_study_file("studies/digits.yaml")
    spec.tracking.enabled = False
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        study = run_study(spec, n_trials=args.trials, storage=f"sqlite:///{tmp}/s.db")
        per_trial = trial_costs(folder, args.repeats)
        per_study = study_costs(study, folder, args.repeats)
    print(f"{'per completed trial':28s} {'s':>7s}")
    for name, seconds in per_trial.items():
        print(f"  {name:26s} {seconds:7.3f}")
    print(f"{'per study (parent run)':28s} {'s':>7s}")
    for name, seconds in per_study.items():
        print(f"  {name:26s} {seconds:7.3f}")
    html = sum(v for k, v in per_study.items() if k.endswith(".html"))
    png = sum(v for k, v in per_study.items() if k.endswith(".png"))
    figures_s = sum(v for k, v in per_trial.items() if k.endswith(".png"))
    print(f"trial figures {figures_s:.3f} s, model {per_trial['model export (pt2)']:.3f} s; "
          f"study plots: html {html:.3f} s, png {png:.3f} s, total {html + png:.3f} s")


if __name__ == "__main__":
    main()
