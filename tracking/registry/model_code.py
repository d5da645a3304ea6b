"""The code a pickled network needs, so that it loads where neither tunetrack nor the
user's modules can be imported.

A network torch.export cannot trace is saved with (cloud)pickle, which stores classes by
reference: `Classifier` from `tunetrack.models.nets` around the body, and the classes of the
user's own network (`model.class_path`). tunetrack's classes are pickled by value instead
(`tunetrack_classes_by_value`, cloudpickle's `register_pickle_by_value`: a few small
classes), and the user's modules travel beside the model as MLflow `code_paths`
(`user_code_paths`), which MLflow puts on `sys.path` before it unpickles.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import torch

OURS = "tunetrack"


def _class_modules(model: torch.nn.Module) -> list[ModuleType]:
    """The modules defining the classes of `model` and its sub-modules, in order."""
    names = dict.fromkeys(type(m).__module__ for m in model.modules())
    return [sys.modules[n] for n in names if n in sys.modules]


def _installed_or_stdlib(top: str) -> bool:
    """A top-level name the serving environment gets from its requirements or Python."""
    from importlib.metadata import packages_distributions

    return top in sys.stdlib_module_names or top in packages_distributions() or top in (
        "torch", "builtins", "__main__")


def user_code_paths(model: torch.nn.Module) -> list[str]:
    """Files (a module) or folders (a package, whole) of the user's classes in `model`:
    what is neither tunetrack's, installed as a distribution, nor Python's own."""
    paths: dict[str, None] = {}
    for module in _class_modules(model):
        top = module.__name__.split(".")[0]
        if top == OURS or _installed_or_stdlib(top):
            continue
        root = sys.modules.get(top)
        package = getattr(root, "__path__", None)
        if package:  # a package: its whole folder, so its relative imports resolve
            paths[str(Path(next(iter(package))).resolve())] = None
        elif getattr(module, "__file__", None):
            paths[str(Path(module.__file__).resolve())] = None
    return list(paths)


@contextlib.contextmanager
def tunetrack_classes_by_value(model: torch.nn.Module) -> Iterator[None]:
    """While saving: tunetrack's classes in `model` are pickled by value, not by name."""
    import cloudpickle

    ours = [m for m in _class_modules(model) if m.__name__.split(".")[0] == OURS]
    for module in ours:
        cloudpickle.register_pickle_by_value(module)
    try:
        yield
    finally:
        for module in ours:
            cloudpickle.unregister_pickle_by_value(module)
