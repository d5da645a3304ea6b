"""Per-trial cost of MLflow tracking: the digits study with tracking on vs off.

Trials are deterministic for a seed (same sampler draws, same initial weights, same
dropout masks), so both runs train the very same trials and differ only by tracking. A
short untracked warm-up study runs first, so neither side pays for first imports, then
`--rounds` (default 2) of off/on in the order off, on, on, off, ... so that the machine's
drift hits both sides alike. Also prints the median over trials of the paired ratio
(the same trial with / without tracking), which one slow moment cannot move.
Prints one JSON line: mean trial seconds each way, total wall time each way, and the
per-trial ratio (on / off) last; target <= 1.05.
Run: python -m bench.tracking_overhead [--trials 30]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import optuna


def timed_study(study_file: str, trials: int, tracking: bool, folder: str) -> dict:
    """Run the study once into `folder`; per-trial durations (by trial number) and totals."""
    from tunetrack.search import load_study_file, run_study

    spec = load_study_file(study_file)
    spec.tracking.enabled = tracking
    start = time.perf_counter()
    study = run_study(
        spec,
        n_trials=trials,
        storage=f"sqlite:///{folder}optuna.db",
        tracking_uri=f"sqlite:///{folder}mlflow.db",
    )
    return {
        "durations": [t.duration.total_seconds() for t in study.trials],
        "wall_s": time.perf_counter() - start,
        "epochs": sum(t.user_attrs.get("epochs_run", 0) for t in study.trials),
        "best": round(study.best_value, 4),
    }


def summary(runs: list[dict]) -> dict:
    trial_s = statistics.mean(statistics.mean(r["durations"]) for r in runs)
    return {"trial_s": round(trial_s, 3),
            "wall_s": round(statistics.mean(r["wall_s"] for r in runs), 1),
            "epochs": runs[0]["epochs"], "best": runs[0]["best"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--study", default="studies/digits.yaml")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    runs: dict[bool, list[dict]] = {False: [], True: []}
    with tempfile.TemporaryDirectory() as folder:
        timed_study(args.study, 2, False, f"{folder}/warm-")
        # off, on, on, off, ...: drift of the machine's speed hits both sides alike
        order = [False, True, True, False] * args.rounds
        for i, tracking in enumerate(order[: 2 * args.rounds]):
            runs[tracking].append(timed_study(args.study, args.trials, tracking,
                                              f"{folder}/{i}-"))
    off, on = summary(runs[False]), summary(runs[True])
    # the same trial (same seed, same params, same epochs) with and without tracking
    paired = [statistics.mean(b) / statistics.mean(a) for a, b in zip(
        zip(*(r["durations"] for r in runs[False]), strict=True),
        zip(*(r["durations"] for r in runs[True]), strict=True), strict=True)]
    print(
        json.dumps(
            {
                "bench": "tracking_overhead",
                "trials": args.trials,
                "rounds": args.rounds,
                "off": off,
                "on": on,
                "ratio_wall": round(on["wall_s"] / off["wall_s"], 3),
                "median_paired_ratio": round(statistics.median(paired), 3),
                "ratio": round(on["trial_s"] / off["trial_s"], 3),
            }
        )
    )


if __name__ == "__main__":
    main()
