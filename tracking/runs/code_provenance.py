"""Which of the user's code a trial ran (its network, dataset, metrics), as run tags.

Tags, not an artifact: the MLflow UI lists them on the run's page, a search filter finds
every run of one file version (`tags."tunetrack.code.model.sha256" = '...'`), and
`tunetrack reproduce` reads them with the run it already fetched. Per role:
`tunetrack.code.model` = the import path, and `tunetrack.code.model.file`, `.sha256`,
`.package`, `.version`, `.folder` where known (`models.user_code.CodeRecord`).

A module is hashed the first time a trial of this process names it, not at every trial:
Python does not import a module twice, so the file as first seen is the code that runs
even when it is edited while the study goes on (a module dropped from `sys.modules` and
imported again is hashed again).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

from tunetrack.models import TunetrackError
from tunetrack.models.user_code import CodeRecord, code_record, import_object

from .. import tags as T

FIELDS = ("file", "sha256", "package", "version", "folder")
_seen: dict[str, tuple[Any, CodeRecord]] = {}  # import path -> (its module, its record)


def _record(import_path: str) -> CodeRecord:
    """The record of `import_path` as of when this process imported its module."""
    try:
        obj = import_object(import_path, "code")  # imported already: a lookup
        module = sys.modules.get(getattr(obj, "__module__", "") or "")
        seen = _seen.get(import_path)
        if seen is None or seen[0] is not module:
            seen = _seen[import_path] = (module, code_record(import_path))
    except (TunetrackError, OSError):  # it does not import (the trial fails and says why),
        return CodeRecord(import_path, None, None, None, None)  # or its file went away
    return seen[1]


def code_tags(code: Mapping[str, str]) -> dict[str, str]:
    """The run tags of `code` ({role: import path}, roles without dots: model, dataset,
    metric, metric_2, ...)."""
    out = {}
    for role, path in code.items():
        record = _record(path).as_dict()
        out[f"{T.CODE}.{role}"] = T.clip(path)
        out.update({f"{T.CODE}.{role}.{field}": T.clip(record[field]) for field in FIELDS
                    if record[field] is not None})
    return out


def code_records(tags: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """{role: CodeRecord fields} read back from a run's tags (empty for a run of built-in
    code only, or one recorded before user code was)."""
    prefix = f"{T.CODE}."
    out: dict[str, dict[str, Any]] = {}
    for key, value in tags.items():
        if not key.startswith(prefix):
            continue
        role, _, field = key.removeprefix(prefix).partition(".")
        record = out.setdefault(role, dict.fromkeys(("import_path", *FIELDS)))
        if not field:
            record["import_path"] = value
        elif field in FIELDS:
            record[field] = value
    return {role: r for role, r in out.items() if r["import_path"]}


def code_folders(records: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The folders loose user code was imported from (the study file's, a mounted one), in
    order: a process that must import it again (`reproduce`, the tracking helper reading a
    user network's trial) puts them first on sys.path; an installed package's code is found
    as installed."""
    folders = [r["folder"] for r in records.values() if r["folder"] and not r["package"]]
    return list(dict.fromkeys(folders))
