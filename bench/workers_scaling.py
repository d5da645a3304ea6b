"""Does a second worker buy throughput? The digits study with 1 vs 2 local workers.

Both runs go through the same code path (`tunetrack worker` processes started by
`search.workers.launch`, as `tunetrack run --workers N` does), on a fresh journal storage,
tracking off, same study seed and trial budget. The CPU is split as the launcher splits it:
1 worker gets all cores as torch threads, 2 workers get half each. A third run, 1 worker
with 1 thread, tells the gain of the second worker from the cost of threads fighting for
busy cores.

Throughput is trials per hour over the study's own span (first trial start to last trial
end), which leaves out interpreter start-up; the wall-clock time including start-up is
reported too, and epochs per hour, since trials differ in length (pruning, early
stopping, sampled widths). `ratio` (printed last) is 2 workers x 1 thread over 1 worker x
1 thread, the second worker's own gain; `ratio_vs_default_threads` compares with 1 worker
using all cores as threads, which is what plain `tunetrack run` does. On a machine whose
cores are busy with other work the numbers are noisy: run it twice.
Run: python -m bench.workers_scaling [--trials 12] [--study studies/digits.yaml]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

import optuna

from tunetrack.search.study_file import load_study_file
from tunetrack.search.workers import available_cores, launch, plan_workers


def run(study: Path, workers: int, trials: int, cores: int | None = None) -> dict:
    with tempfile.TemporaryDirectory(prefix="tunetrack-bench-") as tmp:
        storage = f"journal:{tmp}/bench.journal"
        plans = plan_workers(
            study.resolve(),
            workers=workers,
            storage=storage,
            gpus=[],
            device="cpu",
            cores=cores,
            worker_args=["--trials-total", str(trials), "--no-tracking"],
        )
        started = time.perf_counter()
        result = launch(plans, cwd=Path(tmp), stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - started
        if result.exit_code != 0:
            raise SystemExit(f"{workers} worker(s) failed: exit codes {result.returncodes}")
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        name = load_study_file(study).name
        done = optuna.load_study(
            study_name=name, storage=JournalStorage(JournalFileBackend(f"{tmp}/bench.journal"))
        ).get_trials(states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED))
    span = max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)
    return {
        "trials": len(done),
        "epochs": sum(t.user_attrs.get("epochs_run", 0) for t in done),
        "span_s": round(span.total_seconds(), 1),
        "wall_s": round(wall, 1),
        "epochs_per_hour": round(
            sum(t.user_attrs.get("epochs_run", 0) for t in done) * 3600 / span.total_seconds()
        ),
        "trials_per_hour": round(len(done) * 3600 / span.total_seconds(), 1),
        "threads_per_worker": plans[0].threads,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--study", default="studies/digits.yaml")
    args = parser.parse_args()
    study = Path(args.study)
    one = run(study, 1, args.trials)
    one_thread = run(study, 1, args.trials, cores=1)  # separates threads from workers
    two = run(study, 2, args.trials)
    out = {"bench": "workers_scaling", "study": str(study), "cores": available_cores()}
    for n, r in (("1", one), ("1x1thread", one_thread), ("2", two)):
        out.update({f"{k}_{n}": v for k, v in r.items()})
    # vs `tunetrack run` as it is (1 process, torch's default threads = all cores)
    out["ratio_vs_default_threads"] = round(two["trials_per_hour"] / one["trials_per_hour"], 2)
    out["wall_ratio"] = round(one_thread["wall_s"] / two["wall_s"], 2)
    out["epoch_ratio"] = round(two["epochs_per_hour"] / one_thread["epochs_per_hour"], 2)
    # the second worker's own gain: 2 workers x 1 thread vs 1 worker x 1 thread
    out["ratio"] = round(two["trials_per_hour"] / one_thread["trials_per_hour"], 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
