"""Memory growth over many trials in one process: RSS after 5 vs after 100 small trials.

Tracking is on (figures, artifacts, models: the usual leak suspects), so the tracking
helper process (tracking/runs/helper_link.py) is measured too, after it has caught up. On CUDA it
also checks that allocated device memory returns to its baseline between trials.
Prints one JSON line, the growth of both processes' RSS together in MB last (target < 150).
Run: python -m bench.memory [--trials 100]
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import tempfile
from pathlib import Path

import optuna


def rss_mb(pid: int | str = "self") -> float:
    """Current resident set size (Linux /proc), falling back to our own peak elsewhere."""
    status = Path(f"/proc/{pid}/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Sampler:
    """Optuna callback recording RSS (and CUDA memory) after chosen trial counts."""

    def __init__(self, marks: tuple[int, ...]):
        self.marks, self.rss, self.helper_rss, self.cuda = marks, {}, {}, []

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        import torch

        if torch.cuda.is_available():
            self.cuda.append(torch.cuda.memory_allocated())
        done = len(study.trials)
        if done in self.marks:
            from tunetrack.tracking.runs import HELPER

            gc.collect()
            self.rss[done] = round(rss_mb(), 1)
            HELPER.flush()
            helper = HELPER.pid
            self.helper_rss[done] = round(rss_mb(helper), 1) if helper else 0.0


def main() -> None:
    from tunetrack.search import parse_study, run_study

    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=100)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = parse_study(
        {
            "name": "memory",
            "dataset": {"name": "digits"},
            "model": {
                "family": {"choice": ["mlp", "cnn"]},
                "depth": {"int": [1, 2]},
                "width": {"int": [16, 64]},
            },
            "train": {"max_epochs": 2, "batch_size": 128, "lr": {"float": [1e-3, 1e-2]}},
            "search": {"sampler": "random", "pruner": {"type": "none"}},
            "tracking": {"log_models": "all"},
        }
    )
    marks = Sampler((5, args.trials // 2, args.trials))
    with tempfile.TemporaryDirectory() as folder:
        run_study(
            spec,
            n_trials=args.trials,
            storage=f"sqlite:///{folder}/t.db",
            tracking_uri=f"sqlite:///{folder}/mlflow.db",
            callbacks=[marks],
        )
    out = {"bench": "memory", "trials": args.trials, "rss_mb": marks.rss,
           "helper_rss_mb": marks.helper_rss}
    if marks.cuda:
        out["cuda_allocated_bytes"] = {
            "first": marks.cuda[0],
            "max": max(marks.cuda),
            "last": marks.cuda[-1],
        }
    first, last = 5, args.trials
    out["main_growth_mb"] = round(marks.rss[last] - marks.rss[first], 1)
    out["growth_mb"] = round(out["main_growth_mb"] + marks.helper_rss[last]
                             - marks.helper_rss[first], 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
