"""The study's own code (networks, datasets, metrics named by import path or plugin name):
checked before a study starts, and its scores built for the trainer.

`check` imports every callable the study names and compares its signature with the study's
`init_args` (an argument it does not take, a required one nobody passes), so a typo fails
`validate` with one line naming the field, before a study row or an MLflow run exists.
Importing runs the module's code: a study file is code (README, "Your own network").
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from tunetrack.models.choices import DATASETS, SCORE_DIRECTIONS
from tunetrack.models.errors import TunetrackError
from tunetrack.models.user_code import (
    import_object,
    import_path_of,
    plugin_path,
    signature_problems,
)

from .config import END_METRICS, ObjectiveSpec, StudySpec

if TYPE_CHECKING:
    from tunetrack.models.config import TrialConfig

# arguments tunetrack passes to a network callable whose signature names them
NETWORK_ARGUMENTS = ("num_classes", "in_shape")
BUILT_IN_EPOCH_METRICS = ("val_accuracy", "val_loss")


def metric_path(objective: ObjectiveSpec) -> str | None:
    """The import path of a user or plugin metric; None for a built-in one."""
    if objective.class_path:
        return objective.class_path
    if objective.metric in (*BUILT_IN_EPOCH_METRICS, *END_METRICS, *SCORE_DIRECTIONS):
        return None
    return plugin_path("metric", objective.metric)


def score_functions(spec: StudySpec) -> dict[str, Any]:
    """name -> fn(y_true, y_prob) for every objective the trainer scores from probabilities
    (macro_f1, the user's own, ...); val_accuracy, val_loss and the end metrics are not."""
    from tunetrack.models.metrics import SCORES

    out = {}
    for objective in spec.search.objective_list:
        path = metric_path(objective)
        if path is not None:
            out[objective.metric] = import_object(path, "search.metric")
        elif objective.metric in SCORES:
            out[objective.metric] = SCORES[objective.metric]
    return out


def used_code(spec: StudySpec, cfg: TrialConfig) -> dict[str, str]:
    """{role: import path} of the user's code one trial runs: its network, its dataset
    and its metrics (`metric`, `metric_2`, ...); what the trial's MLflow run records the
    provenance of (`tracking.runs.code_provenance`)."""
    from tunetrack.models.nets import model_path
    from tunetrack.models.user_data import dataset_path

    out = {role: path for role, path in (("model", model_path(cfg.model)),
                                         ("dataset", dataset_path(cfg.data))) if path}
    metrics = [p for objective in spec.search.objective_list if (p := metric_path(objective))]
    out.update({"metric" if n == 1 else f"metric_{n}": p for n, p in enumerate(metrics, 1)})
    return out


def _model_problems(spec: StudySpec) -> list[str]:
    model = spec.model
    families = _values(model.family)
    paths = [model.class_path] if isinstance(model.class_path, str) else []
    paths += [p for f in families if isinstance(f, str) and (p := plugin_path("model", f))]
    where = "model.class_path" if paths and model.class_path else "model.family"
    given = list((model.init_args or {}).keys())
    out = []
    for path in paths:
        try:
            fn = import_object(path, where)
        except TunetrackError as exc:
            out.append(str(exc))
            continue
        out += signature_problems(fn, given, NETWORK_ARGUMENTS, "model")
    if given and not paths:
        out.append("model.init_args: only a user network takes init_args (set "
                   "model.class_path, or a plugin's model.family)")
    return out


def _values(section_value: Any) -> list[Any]:
    """A fixed value or every choice of a searched one."""
    choice = getattr(section_value, "choice", None)
    return list(choice) if choice is not None else [section_value]


def _dataset_problems(spec: StudySpec) -> list[str]:
    data = spec.dataset
    path = data.class_path or (plugin_path("dataset", data.name) if data.name else None)
    if path is None:
        if data.init_args:
            return ["dataset.init_args: only a user dataset takes init_args (set "
                    "dataset.class_path, or a plugin's dataset.name)"]
        return []
    where = "dataset.class_path" if data.class_path else "dataset.name"
    try:
        fn = import_object(path, where)
    except TunetrackError as exc:
        return [str(exc)]
    return signature_problems(fn, list((data.init_args or {}).keys()), ("seed",), "dataset")


def _metric_problems(spec: StudySpec) -> list[str]:
    out = []
    for objective in spec.search.objective_list:
        path = metric_path(objective)
        if path is None:
            continue
        try:
            fn = import_object(path, "search.metric")
        except TunetrackError as exc:
            out.append(str(exc))
            continue
        direction = objective.direction or getattr(fn, "direction", None)
        if direction not in ("maximize", "minimize"):
            out.append(f"search.metric: {objective.metric} needs a direction (maximize or "
                       f"minimize): set search.direction, or a `direction` attribute on "
                       f"{path}")
    return out


def check(spec: StudySpec) -> list[str]:
    """Every problem with the study's own code that can be seen without running a trial."""
    return _model_problems(spec) + _dataset_problems(spec) + _metric_problems(spec)


def dry_build(spec: StudySpec) -> list[str]:
    """`validate`'s dry build: call the user's dataset and check what it returns (a Dataset
    or a {train, val, test} mapping of them)."""
    if not spec.dataset.class_path and spec.dataset.name in (None, *DATASETS):
        return []  # a built-in dataset: nothing of the user's to call, and no torch import
    from tunetrack.models.config import DataConfig
    from tunetrack.models.user_data import call_dataset, check_returned, dataset_path

    data = DataConfig(**{k: v for k, v in spec.dataset.model_dump().items() if v is not None})
    path = dataset_path(data)
    if path is None:
        return []
    try:
        value = call_dataset(data)
    except TunetrackError as exc:
        return [str(exc)]
    where = "dataset.class_path" if data.class_path else "dataset.name"
    return check_returned(value, f"{where} {path}")


def with_objects(raw: dict[str, Any], *, model: Any = None, dataset: Any = None,
                 metric: Any = None) -> dict[str, Any]:
    """A study file's mapping with the Python API's objects as its class paths (to be
    validated)."""
    raw = copy.deepcopy(raw)
    if model is not None:
        raw.setdefault("model", {})["class_path"] = import_path_of(model)
    if dataset is not None:
        raw.setdefault("dataset", {})["class_path"] = import_path_of(dataset)
    if metric is not None:
        search = raw.setdefault("search", {})
        direction = search.pop("direction", None) or getattr(metric, "direction", None)
        search["metric"] = {"class_path": import_path_of(metric)} | (
            {"direction": direction} if direction else {})
    return raw
