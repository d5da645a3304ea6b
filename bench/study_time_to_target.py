"""Wall time for the digits study to first reach val accuracy 0.97: tunetrack vs a plain script.

The plain script is the textbook workflow (`bench.textbook`: Optuna TPE + median pruner,
`optuna_integration.MLflowCallback`, per-sample DataLoader loop) over the same search
space and sampler seed. tunetrack runs with full tracking (per-epoch metrics, artifacts,
models, study plots). Both run here, one after the other, each with its own MLflow store.
Prints one JSON line, ratio (tunetrack / plain time to target) last; target <= 0.4.
Run: python -m bench.study_time_to_target [--trials 30] [--target 0.97]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import tempfile
import time
from pathlib import Path

import optuna

from bench.wholeprocess import finished_trials, time_to_target


def same_value_as_plain(spec):
    """The plain script's trial value is its best epoch's val accuracy; tunetrack's is the
    val accuracy of the epoch early stopping keeps, so it watches val_accuracy here too
    (the study file watches val_loss): both report the same quantity."""
    stopping = spec.train.early_stopping.model_copy(update={"monitor": "val_accuracy"})
    return spec.model_copy(
        update={"train": spec.train.model_copy(update={"early_stopping": stopping})})


def main() -> None:
    from bench.textbook import run_textbook_study
    from tunetrack.models import load_splits
    from tunetrack.search import load_study_file, run_study
    from tunetrack.search.space import SearchSpace

    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--target", type=float, default=0.97)
    parser.add_argument("--study", default="studies/digits.yaml")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = same_value_as_plain(load_study_file(args.study))
    splits = load_splits(SearchSpace(spec).resolve({}).data)
    out: dict = {"bench": "study_time_to_target", "trials": args.trials, "target": args.target}
    with tempfile.TemporaryDirectory() as tmp:
        since = dt.datetime.now()
        seconds, study = run_textbook_study(
            spec, splits, n_trials=args.trials, tracking_uri=f"sqlite:///{tmp}/plain.db")
        plain, plain_trial = time_to_target(finished_trials(study), since, args.target)
        out["plain"] = {
            "seconds": round(seconds, 1),
            "to_target_s": plain and round(plain, 1),
            "target_trial": plain_trial,
            "best": round(study.best_value, 4),
        }
        since, start = dt.datetime.now(), time.perf_counter()
        study = run_study(
            spec,
            n_trials=args.trials,
            storage=f"sqlite:///{tmp}/t.db",
            tracking_uri=f"sqlite:///{Path(tmp)}/ours.db",
        )
        ours, ours_trial = time_to_target(finished_trials(study), since, args.target)
        out["tunetrack"] = {
            "seconds": round(time.perf_counter() - start, 1),
            "to_target_s": ours and round(ours, 1),
            "target_trial": ours_trial,
            "best": round(study.best_value, 4),
            "best_test": round(study.best_trial.user_attrs["test_accuracy"], 4),
        }
    if plain and ours:
        out["ratio"] = round(ours / plain, 3)
    out["ratio_total_time"] = round(out["tunetrack"]["seconds"] / out["plain"]["seconds"], 3)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
