"""The user's own code named in a study file: import paths, plugins and their provenance.

A study names a callable by import path (`acme.nets.WideNet`, the LightningCLI/Hydra
convention; `acme.nets:WideNet` also works) or, once a package registers it, by a short
name under an entry-point group (`tunetrack.models`, `tunetrack.datasets`,
`tunetrack.metrics`, as timm's plugins do). Importing a module runs its code: a study file
is code, as a Hydra config is.

Import-light (no torch): `tunetrack validate` resolves and checks callables with it.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import inspect
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import TunetrackError

GROUPS = {"model": "tunetrack.models", "dataset": "tunetrack.datasets",
          "metric": "tunetrack.metrics"}
# objects handed to the Python API that have no import path of their own (a lambda, a
# class defined in a notebook cell): reachable in this process only, under this prefix
LOCAL_PREFIX = "<local>."
_LOCAL: dict[str, Any] = {}


class UserCodeError(TunetrackError):
    """The user's code raised while a trial ran: that trial fails, the study goes on."""


def last_line(exc: BaseException) -> str:
    """`Type: message` as a traceback's last line shows it, the message's last line only."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[-1]}" if lines else type(exc).__name__


def add_code_dirs(dirs: Sequence[str | Path]) -> None:
    """Put folders first on `sys.path` (the study file's folder: its modules win over the
    environment's, as a script's folder does for `python script.py`), and on PYTHONPATH
    for the processes this one starts (the tracking helper unpickles the user's network,
    `run --workers N` starts workers)."""
    folders = [str(Path(d).resolve()) for d in dirs]
    for folder in reversed(folders):
        if folder in sys.path:
            sys.path.remove(folder)
        sys.path.insert(0, folder)
    inherited = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
                 if p and p not in folders]
    os.environ["PYTHONPATH"] = os.pathsep.join(folders + inherited)


@contextmanager
def code_dirs(dirs: Sequence[str | Path]) -> Iterator[None]:
    """`add_code_dirs` for the duration of a block (validation, reproduce)."""
    saved, saved_env = list(sys.path), os.environ.get("PYTHONPATH")
    add_code_dirs(dirs)
    try:
        yield
    finally:
        sys.path[:] = saved
        if saved_env is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved_env


def import_object(path: str, where: str) -> Any:
    """The object at `path` ("pkg.mod.Name", "pkg.mod:Name", "pkg.mod.Cls.method").

    Raises one `TunetrackError` line naming the study-file field `where`."""
    if path in _LOCAL:
        return _LOCAL[path]
    if path.startswith(LOCAL_PREFIX):
        raise TunetrackError(f"{where}: {path} was passed as a Python object to another "
                             f"process; give it an import path (a module file) instead")
    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise TunetrackError(f"{where}: {path!r} is not an import path (module.name, e.g. "
                             f"acme.nets.WideNet)")
    parts = attr.split(".")
    # "pkg.mod.Cls.method": walk back until a prefix imports
    while True:
        try:
            obj: Any = importlib.import_module(module_name)
            break
        except ModuleNotFoundError as exc:
            ours = exc.name is not None and (module_name + ".").startswith(exc.name + ".")
            if not ours or "." not in module_name:  # a dependency of the module is missing
                raise TunetrackError(f"{where}: cannot import {path!r}: {last_line(exc)}"
                                     ) from None
            module_name, _, head = module_name.rpartition(".")
            parts.insert(0, head)
        except Exception as exc:  # the module itself raised while importing
            raise TunetrackError(f"{where}: importing {module_name} failed: "
                                 f"{last_line(exc)}") from None
    for name in parts:
        try:
            obj = getattr(obj, name)
        except AttributeError:
            raise TunetrackError(f"{where}: {module_name} has no {'.'.join(parts)!r} "
                                 f"(from {path!r})") from None
    if not callable(obj):
        raise TunetrackError(f"{where}: {path!r} is a {type(obj).__name__}, not a callable")
    return obj


def plugin_names(kind: str) -> dict[str, str]:
    """{name: "module:attr"} registered under `kind`'s entry-point group."""
    from importlib.metadata import entry_points

    return {ep.name: ep.value for ep in entry_points(group=GROUPS[kind])}


def plugin_path(kind: str, name: str) -> str | None:
    """The import path a plugin name stands for, or None when no package registers it."""
    return plugin_names(kind).get(name)


def import_path_of(obj: Any) -> str:
    """An import path that finds `obj` again in another process; an object without one
    (a lambda, a class made in a notebook) is kept in this process under `<local>.NAME`."""
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    if module and qualname and module != "__main__" and "<" not in qualname:
        try:
            if import_object(f"{module}:{qualname}", "object") is obj:
                return f"{module}.{qualname}" if "." not in qualname else \
                    f"{module}:{qualname}"
        except TunetrackError:
            pass
    name = f"{LOCAL_PREFIX}{qualname or type(obj).__name__}"
    key, n = name, 1
    while key in _LOCAL and _LOCAL[key] is not obj:
        n += 1
        key = f"{name}#{n}"
    _LOCAL[key] = obj
    return key


def accepts(fn: Callable, name: str) -> bool:
    """Does `fn`'s signature name the keyword `name`? (A `**kwargs` does not count: it
    often forwards to a parent that would refuse it.)"""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # builtins without a signature
        return False
    return name in params and params[name].kind in (
        inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def call_user(path: str, where: str, init_args: Mapping[str, Any],
              offered: Mapping[str, Any] | None = None) -> Any:
    """The user's callable at `path` called with `init_args`, plus each `offered` argument
    (num_classes, seed, ...) that its signature names; whatever it raises becomes a
    `UserCodeError` naming `where` and `path`, with the exception's last line."""
    fn = import_object(path, where)
    kwargs = dict(init_args)
    for name, value in (offered or {}).items():
        if accepts(fn, name):
            kwargs.setdefault(name, value)
    try:
        return fn(**kwargs)
    except Exception as exc:
        raise UserCodeError(f"{where} {path}: {last_line(exc)}") from exc


def signature_problems(fn: Callable, given: Sequence[str], provided: Sequence[str],
                       where: str) -> list[str]:
    """What calling `fn(**given, **provided)` would refuse: `given` (the study's init_args)
    naming no parameter, a required parameter that nobody passes. `provided` are the
    arguments tunetrack passes when the signature names them (num_classes, in_shape)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return []
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    named = {n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    out = [f"{where}.init_args.{name}: {_short(fn)} takes no argument {name!r}; it takes "
           f"{', '.join(sorted(named)) or 'none'}" for name in given
           if name not in named and not takes_any]
    for name, p in params.items():
        if (p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
                and name not in given and name not in provided):
            out.append(f"{where}.init_args: {_short(fn)} needs argument {name!r}")
    return out


def _short(fn: Callable) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)


@dataclass(frozen=True)
class CodeRecord:
    """Where one user object came from, so `reproduce` can tell whether it changed."""

    import_path: str
    file: str | None  # the module's source file (None: a local object or a builtin module)
    sha256: str | None
    package: str | None  # the distribution that installed it, when one did
    version: str | None
    folder: str | None = None  # the sys.path entry it was imported from (reproduce puts it back)

    def as_dict(self) -> dict[str, str | None]:
        return dict(self.__dict__)


def file_hash(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@functools.cache
def _distributions() -> dict[str, list[str]]:
    from importlib.metadata import packages_distributions

    return packages_distributions()


def import_root(module: Any) -> str | None:
    """The `sys.path` entry a module was imported from: its file's folder, one level up
    per dot in its name (one more for a package's `__init__.py`); a zip on sys.path too."""
    file, name = getattr(module, "__file__", None), getattr(module, "__name__", "")
    if not file or not name:
        return None
    path = Path(os.path.abspath(file))
    levels = name.count(".") + (path.stem == "__init__")
    return str(path.parents[levels]) if levels < len(path.parents) else None


def code_record(import_path: str) -> CodeRecord:
    """The module file, its hash, its installed package and the folder it was imported
    from, of the object at `import_path`."""
    if import_path.startswith(LOCAL_PREFIX):
        return CodeRecord(import_path, None, None, None, None)
    obj = import_object(import_path, "code")
    module = sys.modules.get(getattr(obj, "__module__", "") or "")
    file = getattr(module, "__file__", None)
    package = version = None
    top = (getattr(module, "__name__", "") or "").split(".")[0]
    names = _distributions().get(top)
    if names:
        from importlib.metadata import version as dist_version

        package, version = names[0], dist_version(names[0])
    return CodeRecord(import_path, str(Path(file).resolve()) if file else None,
                      file_hash(file) if file else None, package, version,
                      import_root(module))


def changed_code(rec: Mapping[str, Any]) -> str | None:
    """One line saying why the recorded object `rec` (`CodeRecord` fields) is not the code
    it was: its module file changed or went missing, or it has no import path to rebuild it
    from; None when it is as recorded."""
    path, file = rec["import_path"], rec.get("file")
    if path.startswith(LOCAL_PREFIX):
        return (f"{path} was passed to run_study as a Python object without an import "
                f"path: it cannot be rebuilt")
    if file is None:
        return None
    if not Path(file).is_file():
        return f"{file} (the code of {path}) no longer exists"
    if file_hash(file) != rec.get("sha256"):
        return f"{file} changed since the run (the code of {path}); it cannot be the same"
    return None
