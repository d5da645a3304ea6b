"""Per-trial cost of MLflow tracking: the digits study with tracking on vs off.

Trials are deterministic for a seed (same sampler draws, same initial weights, same
dropout masks), so both runs train the very same trials and differ only by tracking. A
short untracked warm-up study runs first, so neither side pays for first imports.
Prints one JSON line: mean trial seconds each way, total wall time each way, and the
per-trial ratio (on / off) last; target <= 1.05.
Run: python -m bench.tracking_overhead [--trials 30]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import optuna


def timed_study(study_file: str, trials: int, tracking: bool, folder: str) -> dict:
    from tunetrack.search import load_study_file, run_study

    spec = load_study_file(study_file)
    spec.tracking.enabled = tracking
    start = time.perf_counter()
    study = run_study(
        spec,
        n_trials=trials,
        storage=f"sqlite:///{folder}{tracking}.db",
        tracking_uri=f"sqlite:///{folder}mlflow.db",
    )
    wall = time.perf_counter() - start
    durations = [t.duration.total_seconds() for t in study.trials]
    return {
        "trial_s": round(sum(durations) / len(durations), 3),
        "wall_s": round(wall, 1),
        "epochs": sum(t.user_attrs.get("epochs_run", 0) for t in study.trials),
        "best": round(study.best_value, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--study", default="studies/digits.yaml")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory() as folder:
        timed_study(args.study, 2, False, f"{folder}/warm-")
        off = timed_study(args.study, args.trials, False, f"{folder}/")
        on = timed_study(args.study, args.trials, True, f"{folder}/")
    print(
        json.dumps(
            {
                "bench": "tracking_overhead",
                "trials": args.trials,
                "off": off,
                "on": on,
                "ratio_wall": round(on["wall_s"] / off["wall_s"], 3),
                "ratio": round(on["trial_s"] / off["trial_s"], 3),
            }
        )
    )


if __name__ == "__main__":
    main()
