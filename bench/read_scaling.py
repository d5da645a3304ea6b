"""Reading commands on big studies: `best`, `status`, `compare --top K` and `report`
beside Optuna's own reads, at 1k and 10k trials.

Each study is a SQLite file built with `optuna.trial.create_trial` (3 params, 20 reports
per trial, the states a long study has: mostly COMPLETE, some PRUNED and FAIL), so its
reads cost what a real study's do; built once per size and kept (`--keep DIR`). Each
command runs as the user runs it (a fresh `tunetrack` process, its imports included);
Optuna's reads run in a fresh Python process too, so both sides pay their start.
Prints one JSON line per size: seconds per command, Optuna's `best_trial` and
`get_trials()`, and the ratios the targets are about (`best` - `best_trial` <= 0.5 s,
`status` <= 2 s).

    python bench/read_scaling.py [--sizes 1000 10000] [--keep /tmp/read_scaling]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STUDY = "big"
REPORTS = 20
OPTUNA_READS = {
    "optuna_best_trial": "study.best_trial",
    "optuna_get_trials": "study.get_trials(deepcopy=False)",
}


def build(path: Path, n: int) -> str:
    """A study of `n` finished trials in the SQLite file `path` (built once)."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
    from optuna.trial import TrialState, create_trial

    storage = f"sqlite:///{path}"
    if path.exists():
        return storage
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=STUDY, storage=storage, direction="maximize")
    dists = {"train.lr": FloatDistribution(1e-4, 1e-1, log=True),
             "model.depth": IntDistribution(1, 4),
             "train.optimizer": CategoricalDistribution(["sgd", "adam", "adamw"])}
    trials = []
    for i in range(n):
        state = (TrialState.FAIL if i % 29 == 7 else TrialState.PRUNED if i % 3 == 1
                 else TrialState.COMPLETE)
        curve = {e: 0.5 + 0.4 * (1 - 1 / (e + 2)) + (i % 97) / 1e4 for e in range(REPORTS)}
        trials.append(create_trial(
            state=state, value=curve[REPORTS - 1] if state == TrialState.COMPLETE else None,
            params={"train.lr": 10 ** (-4 + 3 * (i % 101) / 100), "model.depth": 1 + i % 4,
                    "train.optimizer": ["sgd", "adam", "adamw"][i % 3]},
            distributions=dists, intermediate_values=curve,
            user_attrs={"test_accuracy": 0.9, "epochs_run": REPORTS}
            | ({"reason": "pruned at epoch 3"} if state != TrialState.COMPLETE else {})))
    study.add_trials(trials)
    return storage


def seconds(cmd: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=900,
                          env=os.environ | {"COLUMNS": "80"})
    took = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {done.stderr.strip()[-300:]}")
    return took


def measure(storage: str, cwd: Path) -> dict[str, float]:
    tunetrack = str(Path(sys.executable).parent / "tunetrack")
    out = {}
    for name, code in OPTUNA_READS.items():
        script = ("import optuna; optuna.logging.set_verbosity(optuna.logging.WARNING); "
                  f"study = optuna.load_study(study_name={STUDY!r}, storage={storage!r}); "
                  f"{code}")
        out[name] = seconds([sys.executable, "-c", script], cwd)
    for name, args in {"best": ["best"], "status": ["status"],
                       "compare_top10": ["compare", "--top", "10"],
                       "report": ["report", "--out", str(cwd / "report.html")]}.items():
        out[name] = seconds([tunetrack, args[0], STUDY, *args[1:], "--storage", storage,
                             "--tracking-uri", f"sqlite:///{cwd}/mlflow.db"]
                            if name in ("compare_top10", "report") else
                            [tunetrack, args[0], STUDY, *args[1:], "--storage", storage], cwd)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--keep", type=Path, default=None,
                        help="folder for the built studies (default: a temporary one)")
    args = parser.parse_args()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="read_scaling-"))
    folder.mkdir(parents=True, exist_ok=True)
    for n in args.sizes:
        start = time.perf_counter()
        storage = build(folder / f"study-{n}.db", n)
        built = time.perf_counter() - start
        times = measure(storage, folder)
        print(json.dumps({"bench": "read_scaling", "trials": n, "build_s": round(built, 1),
                          **{k: round(v, 2) for k, v in times.items()},
                          "best_minus_optuna_best_trial_s":
                              round(times["best"] - times["optuna_best_trial"], 2)}))


if __name__ == "__main__":
    main()
