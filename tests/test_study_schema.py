"""`tunetrack schema`: the study file's JSON Schema for editors. The copy committed in
studies/ must be what the command prints (or editors check files against a stale schema),
every shipped study names it on its first line, and every shipped study validates against
it (with `jsonschema` when installed, else through pydantic's own model)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tunetrack.search.cli import app
from tunetrack.search.config import SCHEMA_FILE, StudySpec, study_json_schema

STUDIES = Path(__file__).parents[1] / "studies"
FILES = sorted(STUDIES.glob("*.yaml"))
FIRST_LINE = f"# yaml-language-server: $schema={SCHEMA_FILE}"


def test_committed_schema_is_what_the_command_prints():
    result = CliRunner().invoke(app, ["schema"])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert printed == json.loads((STUDIES / SCHEMA_FILE).read_text()), (
        "studies/study.schema.json is stale: tunetrack schema > studies/study.schema.json")
    assert printed["$schema"].startswith("https://json-schema.org/")
    assert {"name", "model", "train", "search"} <= set(printed["properties"])
    assert printed["additionalProperties"] is False  # unknown keys are flagged in the editor


@pytest.mark.parametrize("file", FILES, ids=lambda f: f.name)
def test_shipped_study_names_and_satisfies_the_schema(file):
    text = file.read_text()
    assert text.splitlines()[0] == FIRST_LINE
    raw = yaml.safe_load(text)
    if importlib.util.find_spec("jsonschema") is not None:
        import jsonschema

        jsonschema.validate(raw, study_json_schema())
    else:
        StudySpec.model_validate(raw)


def test_schema_rejects_what_the_study_file_rejects():
    """The schema is not a looser copy: an unknown key and a wrong type fail it too."""
    jsonschema = pytest.importorskip("jsonschema")
    schema = study_json_schema()
    for bad in ({"name": "x", "modle": {}}, {"name": "x", "seed": "zero"}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)
