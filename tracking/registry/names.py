"""MLflow's rules for registered model names and aliases, without importing MLflow.

`tunetrack validate` checks `registry:` with these (a study file whose model name MLflow
would refuse fails before any trial, not at `promote` after the study), and `promote`
checks its arguments with the same functions. The rules are MLflow's
(`mlflow.utils.validation._validate_model_name` and the alias checks): a name is not blank,
has no '/' or ':', and reads as one plain path (no '.', '..', leading '/' or '//'); an
alias is letters, digits, '_' or '-', and neither `latest` nor `vN`, which MLflow keeps
for versions.
"""

from __future__ import annotations

import posixpath
import re


def model_name_problem(name: str) -> str | None:
    """What MLflow would refuse in registered model name `name`, or None."""
    if not name or not name.strip():
        return "must not be blank"
    if "/" in name or ":" in name:
        return f"must not contain '/' or ':' (MLflow's rule), got {name!r}"
    normalized = posixpath.normpath(name)
    if normalized != name or normalized == "." or normalized.startswith(".."):
        return f"must read as one plain name (MLflow treats it as a path), got {name!r}"
    return None


def alias_problem(alias: str) -> str | None:
    """What MLflow would refuse in model alias `alias`, or None."""
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,255}", alias or ""):
        return f"must be letters, digits, '_' or '-', got {alias!r}"
    if alias.lower() == "latest" or re.fullmatch(r"v\d+", alias, flags=re.IGNORECASE):
        return f"{alias!r} is reserved by MLflow for versions; choose another"
    return None
