"""A trial's train / validation / test splits as MLflow dataset inputs.

MLflow's run table has a Datasets column and its run page a Datasets section, filled by
`log_inputs`, not by tags: with these, two runs trained on different data are told apart
there at a glance (the digest differs), and so are runs of different splits.

One input per split, named `<dataset>-<split>` (MLflow keeps one input per dataset name
and digest in a run, so the three splits need three names), with:
- digest: the data fingerprint (a content hash of all three splits, `Splits.fingerprint`),
  the same value as the run's `data_fingerprint` tag;
- source: where the data comes from (the folder or torchvision root, or the built-in
  loader), as MLflow's `local` / `code` source JSON;
- context tag `mlflow.data.context`: train, validation or test;
- profile: the split's share of the data and the split seed (what fixes its membership).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlflow.entities import DatasetInput

    from tunetrack.models.config import DataConfig

SPLITS = ("train", "validation", "test")
_BUILT_IN = {"digits": "sklearn.datasets.load_digits", "synthetic": "tunetrack synthetic"}


def dataset_name(data: DataConfig) -> str:
    """`digits`, `FashionMNIST`, or an image folder's own name."""
    if data.name == "torchvision" and data.id:
        return data.id
    if data.name == "imagefolder" and data.path:
        return data.path.rstrip("/").rsplit("/", 1)[-1] or data.path
    return data.name


def dataset_source(data: DataConfig) -> tuple[str, str]:
    """(source_type, source JSON) as MLflow's dataset sources write them."""
    location = data.path if data.name == "imagefolder" else data.root
    if location:
        return "local", json.dumps({"uri": location})
    return "code", json.dumps({"tags": {"loader": _BUILT_IN.get(data.name, data.name)}})


def dataset_inputs(data: DataConfig, fingerprint: str) -> list[DatasetInput]:
    """What to pass to `MlflowClient.log_inputs(run_id, datasets=...)` for a trial."""
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    name = dataset_name(data)
    source_type, source = dataset_source(data)
    shares = {"train": 1.0 - data.val_fraction - data.test_fraction,
              "validation": data.val_fraction, "test": data.test_fraction}
    return [
        DatasetInput(
            Dataset(name=f"{name}-{split}", digest=fingerprint, source_type=source_type,
                    source=source, profile=json.dumps({"fraction": round(shares[split], 6),
                                                       "split_seed": data.seed,
                                                       "max_samples": data.max_samples})),
            tags=[InputTag(MLFLOW_DATASET_CONTEXT, split)],
        )
        for split in SPLITS
    ]
