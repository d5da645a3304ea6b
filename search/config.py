"""The study file's schema: `StudySpec` and its sections, as pydantic models.

A literal value is fixed; a mapping with `int`, `float` or `choice` is searched; `when:`
makes a parameter conditional. The `model`, `train` and `dataset` sections are generated
from the `tunetrack.models` config dataclasses, so every trainer option is a study option
with the same name and type, and an unknown key is an error (pydantic `extra="forbid"`).
Reading a file and the checks that need the whole search space are `study_file`'s.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import typing
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    create_model,
    field_validator,
    model_validator,
)

from tunetrack.models.choices import SCORE_DIRECTIONS
from tunetrack.models.config import SEED_ALLOWED, SEEDS, DataConfig, ModelConfig, TrainConfig
from tunetrack.models.errors import TunetrackError

STRICT = ConfigDict(extra="forbid", populate_by_name=True)
Scalar = bool | int | float | str | None


class _Searched(BaseModel):
    model_config = STRICT
    when: dict[str, Scalar | list[Scalar]] | None = None


class IntParam(_Searched):
    int_: tuple[int, int] = Field(alias="int")
    log: bool = False
    step: int = 1

    @model_validator(mode="after")
    def _check(self) -> IntParam:
        low, high = self.int_
        if low >= high:
            raise ValueError(f"low must be < high, got [{low}, {high}]")
        if self.log and low <= 0:
            raise ValueError(f"log: true needs low > 0, got low={low}")
        if self.step < 1:
            raise ValueError(f"step must be >= 1, got {self.step}")
        if self.log and self.step != 1:
            raise ValueError("log: true cannot be combined with step")
        return self


class FloatParam(_Searched):
    float_: tuple[float, float] = Field(alias="float")
    log: bool = False
    step: float | None = None

    @model_validator(mode="after")
    def _check(self) -> FloatParam:
        low, high = self.float_
        if low >= high:
            raise ValueError(f"low must be < high, got [{low}, {high}]")
        if self.log and low <= 0:
            raise ValueError(f"log: true needs low > 0, got low={low}")
        if self.step is not None and (self.step <= 0 or self.log):
            raise ValueError("step must be > 0 and cannot be combined with log: true")
        return self


class ChoiceParam(_Searched):
    choice: list[Scalar]

    @model_validator(mode="after")
    def _check(self) -> ChoiceParam:
        if not self.choice:
            raise ValueError("choice must list at least one value")
        seen: set[str] = set()  # by repr: 1, 1.0 and True are three values
        for value in self.choice:
            if repr(value) in seen:  # named alone: a choice may hold thousands of values
                raise ValueError(f"choice lists a value twice: {value!r}")
            seen.add(repr(value))
        return self


SearchedParam = IntParam | FloatParam | ChoiceParam

# what YAML 1.1 (PyYAML) reads as booleans when unquoted, by the value it gives
_YAML_BOOLEANS = {True: "on, yes or true", False: "off, no or false"}


def not_a_valid(value: Any, kind: Any) -> str:
    """"VALUE is not a valid TYPE", with the way out when VALUE is a boolean YAML made of a
    word meant for a string field (`scheduler: {choice: [none, off]}` gives False)."""
    name = getattr(kind, "__name__", None) or str(kind).replace("typing.", "")
    text = f"{value!r} is not a valid {name}"
    if isinstance(value, bool) and str in (typing.get_args(kind) or (kind,)):
        spelled = "on" if value else "off"
        text += (f" (YAML reads an unquoted {_YAML_BOOLEANS[value]} as {value}; quote the "
                 f"word: '{spelled}')")
    return text


def _param_kind(value: Any) -> str:
    if isinstance(value, dict):
        for kind in ("int", "float", "choice"):
            if kind in value:
                return kind
    if isinstance(value, (IntParam, FloatParam, ChoiceParam)):
        return {IntParam: "int", FloatParam: "float", ChoiceParam: "choice"}[type(value)]
    return "fixed"


def _param(kind: Any) -> Any:
    """Annotation for one study option: a fixed value of the field's type, or a search."""
    return Annotated[
        Annotated[IntParam, Tag("int")]
        | Annotated[FloatParam, Tag("float")]
        | Annotated[ChoiceParam, Tag("choice")]
        | Annotated[kind, Tag("fixed")],
        Discriminator(_param_kind),
    ]


@functools.cache
def section_model(config: type, searchable: bool) -> type[BaseModel]:
    """A pydantic model mirroring the dataclass `config`; None means "dataclass default"."""
    hints = typing.get_type_hints(config)
    fields: dict[str, Any] = {}
    for field in dataclasses.fields(config):
        kind = hints[field.name]
        if dataclasses.is_dataclass(kind):
            fields[field.name] = (section_model(kind, searchable) | None, None)
        elif typing.get_origin(kind) is dict:  # init_args: each argument fixed or searched
            value = _param(Any) if searchable else Any
            fields[field.name] = (dict[str, value] | None, None)
        else:
            fields[field.name] = ((_param(kind) if searchable else kind) | None, None)
    return create_model(f"{config.__name__}Section", __config__=STRICT, **fields)


ModelSection = section_model(ModelConfig, True)
TrainSection = section_model(TrainConfig, True)
DatasetSection = section_model(DataConfig, False)

# measured once, at the end: they only make sense traded off against an epoch metric
END_METRICS = ("params", "latency_ms", "cost_device_seconds")
DEFAULT_DIRECTION = {
    "val_accuracy": "maximize",
    "val_loss": "minimize",
    "params": "minimize",
    "latency_ms": "minimize",
    "cost_device_seconds": "minimize",  # training + test evaluation time of the trial
    **SCORE_DIRECTIONS,  # macro_f1, ...: from the validation split's probabilities
}
Direction = Literal["maximize", "minimize"]


def _metric_name(value: str) -> str:
    """A built-in metric, or a name a package registers under `tunetrack.metrics`."""
    if value in DEFAULT_DIRECTION:
        return value
    from tunetrack.models.user_code import plugin_names

    if value in plugin_names("metric"):
        return value
    raise ValueError(f"unknown metric {value!r}; allowed: {', '.join(DEFAULT_DIRECTION)}, "
                     f"a plugin's name (entry-point group tunetrack.metrics) or "
                     f"{{class_path: module.function, direction: maximize}}")


class MetricRef(BaseModel):
    """The user's own metric: `fn(y_true, y_prob) -> float`, by import path."""

    model_config = STRICT
    class_path: str = Field(min_length=1)
    direction: Direction | None = None  # else the callable's `direction` attribute

    @property
    def name(self) -> str:
        """The callable's own name (a lambda's `<lambda>` is no name: `user_metric`)."""
        last = re.split(r"[.:]", self.class_path)[-1]
        return last if last.isidentifier() else "user_metric"


class ObjectiveSpec(BaseModel):
    model_config = STRICT
    metric: str  # a built-in or plugin name; the name of `class_path`'s callable
    direction: Direction | None = None
    class_path: str | None = None  # the user's metric (see `MetricRef`)

    @model_validator(mode="before")
    @classmethod
    def _user_metric(cls, raw: Any) -> Any:
        """`{class_path: ..., direction: ...}` and `{metric: {class_path: ...}}` -> by name."""
        if not isinstance(raw, dict):
            return raw
        rest = {k: v for k, v in raw.items() if k not in ("metric", "direction")}
        if isinstance(raw.get("metric"), dict):
            ref = MetricRef.model_validate(raw["metric"])
        elif "class_path" in raw and "metric" not in raw:
            ref = MetricRef.model_validate(raw)
            rest = {}
        else:
            return raw
        return {**rest, "metric": ref.name, "class_path": ref.class_path,
                "direction": ref.direction or raw.get("direction")}

    @model_validator(mode="after")
    def _known(self) -> ObjectiveSpec:
        if self.class_path is None:
            _metric_name(self.metric)
        return self

    @property
    def resolved_direction(self) -> str:
        """The file's, else the built-in's, else the user callable's `direction`."""
        if self.direction or self.metric in DEFAULT_DIRECTION:
            return self.direction or DEFAULT_DIRECTION[self.metric]
        from tunetrack.models.user_code import import_object, plugin_path

        path = self.class_path or plugin_path("metric", self.metric)
        return import_object(path or self.metric, "search.metric").direction


# names the study file may use; `samplers.SAMPLERS` / `PRUNERS` build them (a test asserts
# both agree), kept here so that `validate` needs no Optuna
SAMPLER_NAMES = ("tpe", "random", "grid", "cmaes", "gp", "qmc", "nsga2")
PRUNER_NAMES = ("hyperband", "asha", "median", "percentile", "patient", "none")


class PrunerSpec(BaseModel):
    model_config = STRICT
    type: Literal[PRUNER_NAMES] = "median"  # type: ignore[valid-type]
    n_startup_trials: int = Field(5, ge=0)  # median / percentile: trials before pruning
    n_warmup_steps: int = Field(2, ge=0)  # median / percentile: epochs before pruning
    percentile: float = Field(25.0, gt=0, lt=100)
    min_resource: int = Field(1, ge=1)  # hyperband / asha: epochs
    reduction_factor: int = Field(3, ge=2)
    patience: int = Field(3, ge=0)  # patient: wraps a median pruner


class SearchSpec(BaseModel):
    model_config = STRICT
    metric: str | MetricRef = "val_accuracy"  # a name, or the user's {class_path, direction}
    direction: Direction | None = None
    objectives: list[ObjectiveSpec] | None = Field(None, min_length=2)  # multi-objective
    sampler: Literal[SAMPLER_NAMES] = "tpe"  # type: ignore[valid-type]
    n_startup_trials: int = Field(10, ge=0)  # tpe / gp: random trials before modelling
    pruner: PrunerSpec = PrunerSpec()
    n_trials: int = Field(30, ge=1)
    timeout_s: float | None = Field(None, gt=0)
    fuse: int = Field(1, strict=True)  # train up to K trials at once as one model; 1 = off

    @field_validator("fuse")
    @classmethod
    def _check_fuse(cls, k: int) -> int:
        if k < 1:
            raise ValueError(f"must be >= 1 (1 = off, K = up to K trials trained as one "
                             f"model) but got {k}")
        return k

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, value: str | MetricRef) -> str | MetricRef:
        return value if isinstance(value, MetricRef) else _metric_name(value)

    @model_validator(mode="after")
    def _check_metric(self) -> SearchSpec:
        if self.objectives is None and self.metric in END_METRICS:
            raise ValueError(
                f"search.metric must be measured every epoch in a single-objective study "
                f"but got {self.metric!r} (it alone would pick the smallest or fastest "
                f"network, however inaccurate; trade it off with search.objectives: "
                f"[{{metric: val_accuracy}}, {{metric: {self.metric}}}])"
            )
        return self

    @property
    def objective_list(self) -> list[ObjectiveSpec]:
        if self.objectives:
            return self.objectives
        if isinstance(self.metric, MetricRef):
            return [ObjectiveSpec.model_validate({"metric": self.metric.model_dump()} | (
                {"direction": self.direction} if self.direction else {}))]
        return [ObjectiveSpec(metric=self.metric, direction=self.direction)]

    @property
    def multi_objective(self) -> bool:
        return len(self.objective_list) > 1


class TrackingSpec(BaseModel):
    model_config = STRICT
    enabled: bool = True
    experiment: str | None = None  # default: the study name
    log_models: Literal["all", "best", "none"] = "best"
    system_metrics: bool = False


class RegistrySpec(BaseModel):
    model_config = STRICT
    model_name: str
    alias: str = "champion"
    min_improvement: float = Field(0.0, ge=0)
    alpha: float = Field(0.05, gt=0, lt=1)  # McNemar significance level for promotion
    # formats a new champion is logged in too, checked against torch on test: onnx
    export: list[str] = Field(default_factory=list)

    @field_validator("model_name")
    @classmethod
    def _mlflow_model_name(cls, name: str) -> str:
        from tunetrack.tracking.registry import model_name_problem  # MLflow's rule, light

        problem = model_name_problem(name)
        if problem is not None:  # else promote, after the whole study, would refuse it
            raise ValueError(problem)
        return name

    @field_validator("alias")
    @classmethod
    def _mlflow_alias(cls, alias: str) -> str:
        from tunetrack.tracking.registry import alias_problem

        problem = alias_problem(alias)
        if problem is not None:
            raise ValueError(problem)
        return alias

    @field_validator("export")
    @classmethod
    def _exportable(cls, formats: list[str]) -> list[str]:
        from tunetrack.tracking.registry import export_problem  # reads no package

        for fmt in formats:
            problem = export_problem(fmt)
            if problem is not None:  # else promote, after the whole study, would skip it
                raise ValueError(problem)
        return formats


class StudySpec(BaseModel):
    model_config = STRICT
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=120)
    seed: int = 0
    dataset: DatasetSection = DatasetSection()  # type: ignore[valid-type]
    model: ModelSection = ModelSection()  # type: ignore[valid-type]
    train: TrainSection = TrainSection()  # type: ignore[valid-type]
    search: SearchSpec = SearchSpec()
    tracking: TrackingSpec = TrackingSpec()
    registry: RegistrySpec | None = None

    @field_validator("seed")
    @classmethod
    def _seed_in_range(cls, seed: int) -> int:
        if not 0 <= seed < SEEDS:  # numpy would raise at the first split or sampler draw
            raise ValueError(f"must be {SEED_ALLOWED} but got {seed}")
        return seed

    @model_validator(mode="after")
    def _check_objectives(self) -> StudySpec:
        if self.search.multi_objective and self.search.sampler in ("cmaes", "gp"):
            raise ValueError(
                f"search.sampler {self.search.sampler!r} is single-objective; "
                f"use nsga2, tpe or random with search.objectives"
            )
        return self


SCHEMA_FILE = "study.schema.json"  # committed in studies/; `tunetrack schema` prints it


def study_json_schema() -> dict[str, Any]:
    """The study file's JSON Schema, generated from `StudySpec`, for editors (the YAML
    language server completes and checks a file whose first line names it). The checks
    that need the whole search space stay `tunetrack validate`'s."""
    schema = StudySpec.model_json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            **schema, "title": "tunetrack study file",
            "description": "A study: dataset, model and train options (a literal is fixed; "
                           "a mapping with int, float or choice is searched), search, "
                           "tracking and registry. `tunetrack validate FILE` checks the rest."}


_ENV = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")


def expand_env(text: str) -> str:
    """`${VAR}` and `${VAR:-default}` from the environment (for dataset paths)."""

    def sub(match: re.Match) -> str:
        value = os.environ.get(match.group(1)) or match.group(2)
        if value is None:
            raise TunetrackError(
                f"environment variable {match.group(1)} is not set (used in {text!r})"
            )
        return value

    return _ENV.sub(sub, text)
