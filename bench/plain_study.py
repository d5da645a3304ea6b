"""The hand-written study script `bench.study_vs_script` races `tunetrack run` against.

The textbook workflow (`bench.textbook.run_textbook_study`): Optuna TPE + median pruner,
`optuna_integration.mlflow.MLflowCallback` logging each trial's value into a fresh MLflow
store, and the per-sample DataLoader loop, over the study file's search space and seed.
After the study it writes its trials' values and wall-clock times (`datetime_start`,
`datetime_complete`) to `--times` as JSON (milliseconds of work; the study itself stays in
memory, as such scripts keep it), so the bench can place them against this process's spawn.
Run: python -m bench.plain_study [--study studies/digits.yaml] [--trials 30] --times FILE
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--study", default="studies/digits.yaml")
    parser.add_argument("--trials", type=int, help="[default: the file's search.n_trials]")
    parser.add_argument("--tracking-uri", default="sqlite:///mlflow.db")
    parser.add_argument("--times", type=Path, required=True, help="JSON file to write")
    args = parser.parse_args()

    import optuna

    from bench.textbook import run_textbook_study
    from bench.wholeprocess import finished_trials
    from tunetrack.models import load_splits
    from tunetrack.search import load_study_file
    from tunetrack.search.space import SearchSpace

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = load_study_file(args.study)
    splits = load_splits(SearchSpace(spec).resolve({}).data)
    _, study = run_textbook_study(spec, splits, n_trials=args.trials or spec.search.n_trials,
                                  tracking_uri=args.tracking_uri)
    args.times.write_text(json.dumps([t.to_json() for t in finished_trials(study)]))
    print(json.dumps({"best_value": study.best_value}))


if __name__ == "__main__":
    main()
