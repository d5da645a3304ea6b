"""One fixed trial end to end: `tunetrack run` vs the plain PyTorch script, whole processes.

The trial: an MLP on digits, 3 hidden layers x 512, batch 64, Adam (lr 1e-3), 100 epochs,
no early stopping, no pruning. tunetrack runs it as a user would: a study file with every
value fixed and `n_trials: 1`, `tunetrack run FILE --no-progress` in a fresh folder (fresh
SQLite stores for Optuna and MLflow, full tracking, `log_models: none`). The other side is
`bench.plain_trial` (per-sample DataLoader, `.item()` per batch), same split, same network
and initial weights, same epochs. Each side is timed from spawn to exit; `--repeats` runs
per side alternate (A B B A ...), medians are printed. Both report their best epoch's val
accuracy (tunetrack watches val_accuracy for it), so "same accuracy band" is shown, not
assumed. Prints one JSON line, the ratio (plain seconds / tunetrack seconds) last;
target >= 1.5.
Run: python -m bench.end_to_end_trial [--repeats 3] [--epochs 100]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from bench.wholeprocess import (
    Timed,
    alternate,
    median,
    run_process,
    stored_study,
    tunetrack_cli,
)

ACCURACY_BAND = 0.01  # best val accuracies (median over repeats) at most this far apart
DEPTH, WIDTH, BATCH, LR = 3, 512, 64, 1e-3

STUDY = """\
name: end-to-end-trial
seed: 0
dataset: {{name: digits, val_fraction: 0.15, test_fraction: 0.15}}
model: {{family: mlp, depth: {depth}, width: {width}}}
train:
  max_epochs: {epochs}
  batch_size: {batch}
  optimizer: adam
  lr: {lr}
  early_stopping: {{monitor: val_accuracy}}  # no patience: every epoch runs
search: {{metric: val_accuracy, pruner: {{type: none}}, n_trials: 1}}
tracking: {{log_models: none}}
"""


def cli_side(folder: Path, epochs: int):
    study_file = folder / "trial.yaml"
    study_file.write_text(STUDY.format(depth=DEPTH, width=WIDTH, batch=BATCH, lr=LR,
                                       epochs=epochs))

    def once(repeat: int) -> tuple[Timed, float]:
        cwd = folder / f"cli-{repeat}"
        timed = run_process(tunetrack_cli("run", str(study_file)), cwd)
        (trial,) = stored_study(f"sqlite:///{cwd}/tunetrack.db").trials
        if trial.user_attrs.get("epochs_run") != epochs:
            raise RuntimeError(f"the CLI trial ran {trial.user_attrs.get('epochs_run')} "
                               f"epochs, not {epochs}")
        return timed, trial.value

    return once


def plain_side(folder: Path, epochs: int, threads: int | None):
    def once(repeat: int) -> tuple[Timed, float]:
        timed = run_process(["-m", "bench.plain_trial", "--epochs", str(epochs),
                             "--depth", str(DEPTH), "--width", str(WIDTH),
                             "--batch-size", str(BATCH), "--lr", str(LR)],
                            folder / f"plain-{repeat}", threads)
        return timed, json.loads(timed.stdout.splitlines()[-1])["best_val_accuracy"]

    return once


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--script-threads", type=int, default=1, help=(
        "the plain script's torch threads; 0: torch's own default (2 here), which collapses "
        "several-fold whenever other work shares the cores [default: 1, tunetrack's]"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sides = {"tunetrack": cli_side(Path(tmp), args.epochs),
                 "plain": plain_side(Path(tmp), args.epochs, args.script_threads or None)}
        runs = alternate(sides, args.repeats)
    out: dict = {"bench": "end_to_end_trial", "epochs": args.epochs, "repeats": args.repeats,
                 "model": f"mlp {DEPTH}x{WIDTH}, batch {BATCH}, adam lr {LR}",
                 "script_threads": args.script_threads or "torch default"}
    for side, results in runs.items():
        out[side] = {"seconds": median([t.seconds for t, _ in results]),
                     "runs_s": [round(t.seconds, 1) for t, _ in results],
                     "cpu_s": median([t.cpu_s for t, _ in results]),
                     "best_val_acc": round(statistics.median(acc for _, acc in results), 4)}
    out["same_band"] = (abs(out["tunetrack"]["best_val_acc"] - out["plain"]["best_val_acc"])
                        <= ACCURACY_BAND)
    out["ratio_cpu"] = round(out["plain"]["cpu_s"] / out["tunetrack"]["cpu_s"], 3)
    out["ratio"] = round(out["plain"]["seconds"] / out["tunetrack"]["seconds"], 3)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
