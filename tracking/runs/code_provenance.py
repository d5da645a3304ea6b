"""Which of the user's code a trial ran (its network, dataset, metrics), as run tags.

Tags, not an artifact: the MLflow UI lists them on the run's page, a search filter finds
every run of one file version (`tags."tunetrack.code.model.sha256" = '...'`), and
`tunetrack reproduce` reads them with the run it already fetched. Per role:
`tunetrack.code.model` = the import path, and `tunetrack.code.model.file`, `.sha256`,
`.package`, `.version`, `.folder` where known (`models.user_code.CodeRecord`).

A module is hashed the first time a trial of this process names it, not at every trial:
Python does not import a module twice, so the file as first seen is the code that runs
even when it is edited while the study goes on.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from tunetrack.models import TunetrackError
from tunetrack.models.user_code import CodeRecord, code_record

from .. import tags as T

FIELDS = ("file", "sha256", "package", "version", "folder")


@functools.cache
def _record(import_path: str) -> CodeRecord:
    try:
        return code_record(import_path)
    except TunetrackError:  # it does not import: the trial fails and says why
        return CodeRecord(import_path, None, None, None, None)


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
