"""Study files (YAML) -> validated `StudySpec` objects, every problem reported at once.

Above `config` (the schema): the checks that need the whole search space live here."""

from __future__ import annotations

import functools
import typing
from pathlib import Path

from pydantic import ValidationError

from tunetrack.models.errors import TunetrackError, first_line
from tunetrack.models.user_code import add_code_dirs

from . import user_objects
from .config import StudySpec, not_a_valid
from .fused_groups import fuse_problems
from .space import SearchSpace


class StudyFileError(TunetrackError):
    """Every problem found in one study file, each as `path.to.field: message`."""

    def __init__(self, source: str, errors: list[str]):
        self.source = source
        self.errors = errors
        shown = "; ".join(errors[:3]) + (f"; and {len(errors) - 3} more" if len(errors) > 3 else "")
        super().__init__(f"{source}: {shown}")


def _format_errors(exc: ValidationError) -> list[str]:
    out = []
    for err in exc.errors():
        # drop the union tags pydantic inserts (e.g. "fixed", "function-after[...]")
        loc = [str(p) for p in err["loc"] if not str(p).startswith(("function-", "fixed"))]
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "string_type" and isinstance(err.get("input"), bool):
            msg = not_a_valid(err["input"], str)  # `optimizer: off` is False, not "off"
        where = ".".join(loc) or "(top level)"
        out.append(msg if msg.startswith(f"{where}.") else f"{where}: {msg}")  # names a field
    return out


def parse_study(raw: object, source: str = "<study>") -> StudySpec:
    """Validate an already-loaded mapping; every problem raises one `StudyFileError`."""
    if not isinstance(raw, dict):
        raise StudyFileError(source, [f"(top level): expected a mapping, got {type(raw).__name__}"])
    try:
        spec = StudySpec.model_validate(raw)
    except ValidationError as exc:
        raise StudyFileError(source, _format_errors(exc)) from None
    errors = SearchSpace.check(spec)
    errors += user_objects.check(spec)
    errors += fuse_problems(spec, SearchSpace(spec).options("model.family"))
    if errors:
        raise StudyFileError(source, errors)
    return spec


@functools.cache
def _unique_key_loader() -> type:
    """`yaml.SafeLoader` (the same safe constructors) that refuses a key given twice in one
    mapping: plain YAML keeps the last silently, so `lr: 0.1` ... `lr: 1.0` would quietly
    train at 1.0. Keys merged in by `<<:` may still be overridden, as YAML means. Built on
    libyaml's parser where PyYAML has it (`CSafeLoader`: the same documents, the same
    constructors): the pure-Python scanner takes a minute on a 5 MB file."""
    import yaml

    class UniqueKeyLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
        def construct_mapping(self, node, deep=False):
            if isinstance(node, yaml.MappingNode):
                first: dict[object, int] = {}
                for key_node, _ in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge":
                        continue
                    key = self.construct_object(key_node, deep=deep)
                    if isinstance(key, typing.Hashable) and key in first:
                        raise yaml.constructor.ConstructorError(
                            None, None, f"duplicate key {key!r} (first at line {first[key]})",
                            key_node.start_mark)
                    if isinstance(key, typing.Hashable):
                        first[key] = key_node.start_mark.line + 1
            return super().construct_mapping(node, deep=deep)

    return UniqueKeyLoader


def load_study_file(path: str | Path) -> StudySpec:
    """Read and validate a study file (safe loading only; a duplicate key is an error)."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise TunetrackError(f"study file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TunetrackError(f"study file {path} cannot be read: {exc}") from None
    try:
        raw = yaml.load(text, Loader=_unique_key_loader())  # a SafeLoader: safe_load rules
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or first_line(exc)
        raise TunetrackError(f"study file {path}: invalid YAML{where}: {problem}") from None
    if "class_path" in text:  # the study's own modules resolve from its folder first
        add_code_dirs([path.parent])
    return parse_study(raw, str(path))
