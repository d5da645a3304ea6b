"""The search space of a study: fixed values, searched dimensions and their conditions.

Sampling is define-by-run: `sample(trial)` walks the dimensions in dependency order and
asks Optuna only for those whose `when` conditions hold, so a scheduler's knobs are
sampled only in trials that use that scheduler. Parameter names are the dotted study-file
paths (`train.lr`, `model.depth`), the same names MLflow shows as params.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, TypeAdapter, ValidationError

from tunetrack.models.choices import (
    BACKBONE_STAGES,
    FIELD_CHOICES,
    freeze_problem,
    missing_weights_file,
    weights_for,
)
from tunetrack.models.config import (
    AugmentConfig,
    DataConfig,
    EarlyStoppingConfig,
    ModelConfig,
    TrainConfig,
    TrialConfig,
)
from tunetrack.models.errors import TunetrackError
from tunetrack.models.user_code import plugin_names

from .config import (
    ChoiceParam,
    FloatParam,
    IntParam,
    SearchedParam,
    StudySpec,
    expand_env,
    not_a_valid,
)

# knobs that only matter for one optimizer / scheduler / model family: conditional unless
# the file says otherwise
IMPLIED_WHEN: dict[str, dict[str, list[Any]]] = {
    "train.momentum": {"train.optimizer": ["sgd", "rmsprop"]},
    "train.nesterov": {"train.optimizer": ["sgd"]},
    "train.step_size": {"train.scheduler": ["step"]},
    "train.step_gamma": {"train.scheduler": ["step"]},
    "train.exp_gamma": {"train.scheduler": ["exponential"]},
    "train.cosine_eta_min": {"train.scheduler": ["cosine"]},
    "train.onecycle_pct_start": {"train.scheduler": ["onecycle"]},
    "train.plateau_factor": {"train.scheduler": ["plateau"]},
    "train.plateau_patience": {"train.scheduler": ["plateau"]},
    "model.backbone": {"model.family": ["torchvision"]},
    "model.freeze": {"model.family": ["torchvision"]},
    "model.backbone_lr_factor": {"model.family": ["torchvision"]},
    "model.weights": {"model.family": ["torchvision"]},
    "model.preprocess": {"model.family": ["torchvision"]},
    "model.input_size": {"model.family": ["torchvision"]},
}
GRID_MAX_POINTS = 1000
SHOWN_CHOICES = 12  # a longer choice list is shortened where it is shown


@dataclass(frozen=True)
class Dimension:
    path: str  # e.g. "train.lr"
    param: SearchedParam
    field_type: Any
    when: tuple[tuple[str, tuple[Any, ...]], ...] = ()  # (parent path, allowed values)

    @property
    def kind(self) -> str:
        return {IntParam: "int", FloatParam: "float", ChoiceParam: "choice"}[type(self.param)]

    def values(self) -> list[Any] | None:
        """Every value the dimension can take, or None when it is continuous."""
        p = self.param
        if isinstance(p, ChoiceParam):
            return list(p.choice)
        if isinstance(p, IntParam) and not p.log:
            return list(range(p.int_[0], p.int_[1] + 1, p.step))
        if isinstance(p, FloatParam) and p.step:
            low, high = p.float_
            n = round((high - low) / p.step)
            return [low + i * p.step for i in range(n + 1)]
        return None

    def suggest(self, trial: Any) -> Any:
        p = self.param
        if isinstance(p, IntParam):
            return trial.suggest_int(self.path, *p.int_, step=p.step, log=p.log)
        if isinstance(p, FloatParam):
            return trial.suggest_float(self.path, *p.float_, step=p.step, log=p.log)
        return trial.suggest_categorical(self.path, p.choice)

    def describe(self) -> str:
        p = self.param
        if isinstance(p, ChoiceParam):  # a long list shortened: one table cell, one line
            hidden = len(p.choice) - SHOWN_CHOICES
            return "choice " + ", ".join(map(str, p.choice[:SHOWN_CHOICES])) + (
                f", ... ({hidden} more)" if hidden > 0 else "")
        low, high = p.int_ if isinstance(p, IntParam) else p.float_
        extra = " log" if p.log else (f" step {p.step}" if p.step not in (None, 1) else "")
        return f"{self.kind} [{low}, {high}]{extra}"


def _walk(section: BaseModel | None, config: type, prefix: str):
    """Yield (path, value, field type) for every option the file sets."""
    if section is None:
        return
    hints = typing.get_type_hints(config)
    for field in dataclasses.fields(config):
        value = getattr(section, field.name)
        if value is None:
            continue
        kind = hints[field.name]
        path = f"{prefix}.{field.name}"
        if dataclasses.is_dataclass(kind):
            yield from _walk(value, kind, path)
        elif typing.get_origin(kind) is dict:  # init_args: the user's callable's arguments
            for name, arg in value.items():
                yield f"{path}.{name}", arg, Any
        else:
            yield path, value, kind


def _is_numeric(kind: Any) -> bool:
    args = typing.get_args(kind) or (kind,)
    return any(a in (int, float) for a in args) and bool not in args


class SearchSpace:
    """Fixed values and searched dimensions of a validated `StudySpec`."""

    def __init__(self, spec: StudySpec):
        self.spec = spec
        self.fixed: dict[str, Any] = {}
        found: dict[str, tuple[SearchedParam, Any]] = {}
        for section, config in ((spec.model, ModelConfig), (spec.train, TrainConfig)):
            prefix = "model" if config is ModelConfig else "train"
            for path, value, kind in _walk(section, config, prefix):
                if isinstance(value, (IntParam, FloatParam, ChoiceParam)):
                    found[path] = (value, kind)
                else:
                    self.fixed[path] = value
        self.errors: list[str] = []
        names = [*found, *self.fixed]
        dims = {
            path: Dimension(path, param, kind, self._conditions(path, param, names))
            for path, (param, kind) in found.items()
        }
        # a condition on a fixed parameter is decided now: drop dimensions that never apply
        dims = {
            path: dim
            for path, dim in dims.items()
            if all(p not in self.fixed or self.fixed[p] in allowed for p, allowed in dim.when)
        }
        self.dimensions = self._ordered(dims)

    def _resolve_name(self, name: str, names: list[str], where: str) -> str | None:
        matches = [n for n in names if n == name or n.endswith("." + name)]
        if len(matches) == 1:
            return matches[0]
        reason = "is ambiguous" if matches else "names an unknown parameter"
        self.errors.append(f"{where}.when: {name!r} {reason}; parameters: {', '.join(names)}")
        return None

    def _conditions(self, path: str, param: SearchedParam, names: list[str]):
        if param.when is None:
            implied = IMPLIED_WHEN.get(path, {})
            return tuple((k, tuple(v)) for k, v in implied.items() if k in names)
        out = []
        for name, allowed in param.when.items():
            parent = self._resolve_name(name, names, path)
            if parent == path:
                self.errors.append(f"{path}.when: a parameter cannot depend on itself")
            elif parent is not None:
                out.append((parent, tuple(allowed if isinstance(allowed, list) else [allowed])))
        return tuple(out)

    def _ordered(self, dims: dict[str, Dimension]) -> list[Dimension]:
        """Parents before children; a dependency cycle is an error."""
        ordered: list[Dimension] = []
        state: dict[str, str] = {}

        def visit(path: str) -> None:
            if state.get(path) == "done":
                return
            if state.get(path) == "visiting":
                self.errors.append(f"{path}.when: conditions form a cycle")
                return
            state[path] = "visiting"
            for parent, _ in dims[path].when:
                if parent in dims:
                    visit(parent)
            state[path] = "done"
            ordered.append(dims[path])

        for path in dims:
            visit(path)
        return ordered

    @classmethod
    def check(cls, spec: StudySpec) -> list[str]:
        """Every problem pydantic cannot see: types, names, conditions, grid limits, and
        values no trial could train with (augmentation bounds, transfer options), so a bad
        study fails here, before a study row or an MLflow run exists."""
        space = cls(spec)
        errors = list(space.errors)
        for dim in space.dimensions:
            errors += _check_dimension(dim)
            for parent, allowed in dim.when if dim.param.when is not None else ():
                options = space.options(parent)
                known = set(options or ())  # scalars: hashable; a set keeps this linear
                bad = [a for a in allowed if options is not None and a not in known]
                if bad:
                    errors.append(
                        f"{dim.path}.when: {parent} never takes {bad}; it takes {options}"
                    )
        for path, value in [
            *space.fixed.items(),
            *(("dataset." + k, v) for k, v in spec.dataset.model_dump().items()),
        ]:
            allowed = allowed_names(path)
            if allowed and value is not None and value not in allowed:
                errors.append(f"{path}: unknown value {value!r}; allowed: {', '.join(allowed)}")
        if spec.search.sampler == "grid":
            errors += space._check_grid()
        errors += _check_values(space)
        errors += _check_transfer(space)
        return list(dict.fromkeys(errors))  # one line per problem, however many backbones

    def dimension(self, path: str) -> Dimension | None:
        return next((d for d in self.dimensions if d.path == path), None)

    def options(self, path: str) -> list[Any] | None:
        if path in self.fixed:
            return [self.fixed[path]]
        dim = self.dimension(path)
        return None if dim is None else dim.values()

    def edges(self, path: str) -> list[tuple[str, Any]]:
        """(where, value) to check for option `path`: its fixed value, both ends of its
        range, or every choice; [] when the file leaves it at its default.

        The trainer's bounds are intervals, so a range whose ends pass passes everywhere.
        `where` is the path an error should name: `path`, or `path.int` / `.float` /
        `.choice` for a searched one.
        """
        if path in self.fixed:
            return [(path, self.fixed[path])]
        dim = self.dimension(path)
        if dim is None:
            return []
        p = dim.param
        if isinstance(p, ChoiceParam):
            ends = list(p.choice)
        else:
            low, high = p.int_ if isinstance(p, IntParam) else p.float_
            ends = [low, _top(low, high, p.step)]
        return [(f"{path}.{dim.kind}", value) for value in ends]

    def _check_grid(self) -> list[str]:
        errors, points = [], 1
        for dim in self.dimensions:
            values = dim.values()
            if values is None:
                errors.append(
                    f"{dim.path}: search.sampler grid needs a finite set of values "
                    f"(choice, int, or float with step)"
                )
            else:
                points *= len(values)
        if points > GRID_MAX_POINTS:
            errors.append(f"search.sampler: the grid has {points} points (> {GRID_MAX_POINTS})")
        return errors

    def grid(self) -> dict[str, list[Any]]:
        return {d.path: d.values() or [] for d in self.dimensions}

    def active(self, dim: Dimension, values: dict[str, Any]) -> bool:
        return all(parent in values and values[parent] in allowed for parent, allowed in dim.when)

    def sample(self, trial: Any) -> dict[str, Any]:
        """Suggest every active dimension; returns {path: value} of the sampled ones."""
        values = dict(self.fixed)
        sampled: dict[str, Any] = {}
        for dim in self.dimensions:
            if self.active(dim, values):
                sampled[dim.path] = values[dim.path] = dim.suggest(trial)
        return sampled

    def resolve(self, sampled: dict[str, Any], *, device: str | None = None) -> TrialConfig:
        """Fixed + sampled values on top of the dataclass defaults -> a plain `TrialConfig`."""
        data = {k: v for k, v in self.spec.dataset.model_dump().items() if v is not None}
        for key in ("path", "root"):
            if key in data:
                data[key] = expand_env(data[key])
        data.setdefault("seed", self.spec.seed)
        cfg = TrialConfig(data=DataConfig(**data), model=ModelConfig(), train=TrainConfig())
        cfg.train.seed = self.spec.seed
        for path, value in {**self.fixed, **sampled}.items():
            *parents, name = path.split(".")
            target: Any = cfg
            for part in parents:
                target = getattr(target, part)
            if isinstance(target, dict):  # model.init_args.NAME
                target[name] = value
            else:
                setattr(target, name, value)
        if device is not None:
            cfg.train.device = device
        _resolve_transfer(cfg, self.spec)
        return cfg

    def rows(self) -> list[tuple[str, str, str]]:
        """(parameter, searched-or-fixed description, condition) for `tunetrack validate`."""
        out = [
            (d.path, d.describe(), " and ".join(f"{p} in {list(a)}" for p, a in d.when))
            for d in self.dimensions
        ]
        out += [(path, f"fixed {value}", "") for path, value in self.fixed.items()]
        return out


def _top(low: float, high: float, step: float | None) -> float:
    """The largest value Optuna samples: the last whole step at or below `high` (decimal
    arithmetic, as Optuna's own adjustment, so [0, 0.5] step 0.1 keeps 0.5)."""
    if not step:
        return high
    d_low, d_high, d_step = (Decimal(str(v)) for v in (low, high, step))
    top = (d_high - d_low) // d_step * d_step + d_low
    return type(high)(top)


def _resolve_transfer(cfg: TrialConfig, spec: StudySpec) -> None:
    """torchvision family: `${VAR}` in `model.weights`, and `dataset.image_size` as the
    side the backbone sees unless `model.input_size` says otherwise (no resize inside the
    model: the images are already decoded at the size the study asked for)."""
    model = cfg.model
    if model.family != "torchvision":
        return
    if model.weights is not None:
        model.weights = expand_env(model.weights)
    if model.input_size is None and spec.dataset.image_size is not None:
        model.input_size = spec.dataset.image_size


def _named(where: str, path: str, problem: str) -> str:
    """A checker's own line (it already names `path`), prefixed with `where` when the value
    came from a searched spec (`path.int`, `path.choice`, ...)."""
    return problem if where == path else f"{where}: {problem}"


# config class -> the study-file section it is written under
SECTIONS: dict[type, str] = {
    ModelConfig: "model",
    TrainConfig: "train",
    EarlyStoppingConfig: "train.early_stopping",
    AugmentConfig: "train.augment",
}


def _check_values(space: SearchSpace) -> list[str]:
    """Values no trial could train with, by the config classes' own `problems()` (the rules
    the trainer runs; no copy here): every fixed value, both ends of every range and every
    choice. Each option is checked alone, the others at their (valid) defaults, so every
    line belongs to the option that caused it; a rule on one field holds on an interval,
    so two good ends make a good range. Conditional options are checked at every value
    (when their condition holds, each value reaches the trainer); options whose condition
    can never hold are not in the space and never reach it. The dataset is never searched,
    so it is checked whole, with its one rule across fields (val + test < 1)."""
    errors = []
    for config, prefix in SECTIONS.items():
        for field in dataclasses.fields(config):
            path = f"{prefix}.{field.name}"
            for where, value in space.edges(path):
                try:
                    problems = config(**{field.name: value}).problems()
                except TypeError:  # a choice of the wrong type: `_check_dimension` names it
                    continue
                errors += [_named(where, path, problem) for problem in problems]
    data = {k: v for k, v in space.spec.dataset.model_dump().items() if v is not None}
    return errors + DataConfig(**data).problems()


def _check_transfer(space: SearchSpace) -> list[str]:
    """`model.freeze` beyond a backbone's stages and `model.weights` files that do not exist,
    for every backbone the study can pick: these would otherwise fail each trial that draws
    them, after the study and its MLflow runs exist. Weights *names* (DEFAULT, ...) are left
    to the trial: finding torchvision's cache takes torch."""
    families = space.options("model.family") or [ModelConfig.family]
    if "torchvision" not in families:
        return []
    backbones = [b for b in space.options("model.backbone") or [ModelConfig.backbone]
                 if b in BACKBONE_STAGES]  # an unknown name is reported on its own
    errors = []
    freeze = space.dimension("model.freeze")
    only = dict(freeze.when).get("model.backbone") if freeze is not None else None
    for where, value in space.edges("model.freeze"):
        for backbone in backbones:
            problem = (freeze_problem(backbone, value) if isinstance(value, int)
                       and (only is None or backbone in only) else None)
            if problem is not None:
                errors.append(_named(where, "model.freeze", problem))
    for where, value in space.edges("model.weights"):
        if not isinstance(value, str):
            continue
        try:
            value = expand_env(value)
        except TunetrackError as exc:  # an unset ${VAR}: every trial would stop on it
            errors.append(f"{where}: {exc}")
            continue
        for backbone in backbones:
            problem = missing_weights_file(weights_for(value, backbone))
            if problem is not None:
                errors.append(f"{where}: {problem}")
    return errors


# study-file fields whose names a package can add to (entry points, `models.user_code`)
PLUGIN_FIELDS = {"model.family": "model", "dataset.name": "dataset"}


def allowed_names(path: str) -> tuple[str, ...]:
    """The names field `path` takes: the built-ins, and installed plugins' where a package
    can register more; () for a free field."""
    builtin = FIELD_CHOICES.get(path, ())
    if path in PLUGIN_FIELDS:
        return (*builtin, *sorted(plugin_names(PLUGIN_FIELDS[path])))
    return builtin


def _check_dimension(dim: Dimension) -> list[str]:
    p, kind = dim.param, dim.field_type
    if kind is Any:  # the user's init_args: their callable's signature says (user_objects)
        return []
    if isinstance(p, (IntParam, FloatParam)) and not _is_numeric(kind):
        return [f"{dim.path}.{dim.kind}: {dim.path} is not numeric; use choice"]
    if isinstance(p, FloatParam) and float not in (typing.get_args(kind) or (kind,)):
        return [f"{dim.path}.float: {dim.path} takes integers; use int"]
    if isinstance(p, ChoiceParam):
        adapter = TypeAdapter(kind)
        errors: list[str] = []
        mistyped: set[str] = set()
        for option in p.choice:
            try:
                adapter.validate_python(option, strict=True)
            except ValidationError:
                if not (isinstance(option, int) and float in (typing.get_args(kind) or (kind,))):
                    errors.append(f"{dim.path}.choice: {not_a_valid(option, kind)}")
                    mistyped.add(repr(option))
        allowed = allowed_names(dim.path)  # a mistyped value is said once, above
        bad = [o for o in p.choice if allowed and o not in allowed and repr(o) not in mistyped]
        if bad:
            more = f" and {len(bad) - SHOWN_CHOICES} more" if len(bad) > SHOWN_CHOICES else ""
            errors.append(f"{dim.path}.choice: unknown value(s) {bad[:SHOWN_CHOICES]}{more}; "
                          f"allowed: {', '.join(allowed)}")
        return errors
    return []
