"""Is pruning real? The digits study with its pruner vs the same study without one.

Same seed, same sampler, same number of trials, tracking off; both in one run. Prints the
epochs each study trained, the best value of each, and the epoch ratio last (target <= 0.5
with the best values within 0.01).
Run: python -m bench.pruning [--trials N] [--study studies/digits.yaml]
"""

from __future__ import annotations

import argparse
import json
import time

import optuna

from tunetrack.search import load_study_file, run_study


def run(study_file: str, pruner: str, n_trials: int) -> dict:
    spec = load_study_file(study_file)
    spec.tracking.enabled = False
    spec.name = f"{spec.name}-pruner-{pruner}"
    if pruner == "none":
        spec.search.pruner.type = "none"
    start = time.perf_counter()
    study = run_study(spec, n_trials=n_trials, storage="sqlite:///:memory:")
    seconds = time.perf_counter() - start
    trials = study.trials
    return {
        "epochs": sum(t.user_attrs.get("epochs_run", 0) for t in trials),
        "best": round(study.best_value, 4),
        "pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in trials),
        "seconds": round(seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--study", default="studies/digits.yaml")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = load_study_file(args.study)
    with_pruner = run(args.study, spec.search.pruner.type, args.trials)
    without = run(args.study, "none", args.trials)
    print(
        json.dumps(
            {
                "bench": "pruning",
                "study": args.study,
                "trials": args.trials,
                "pruner": spec.search.pruner.type,
                "with_pruner": with_pruner,
                "without": without,
                "best_difference": round(without["best"] - with_pruner["best"], 4),
                "ratio": round(with_pruner["epochs"] / without["epochs"], 3),
            }
        )
    )


if __name__ == "__main__":
    main()
