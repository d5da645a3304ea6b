"""README.md's runnable blocks run as written: every `tunetrack ...` command of a code block
marked `<!-- runnable ... -->` runs against a small tracked study (the study's name and
file substituted for the README's) and exits 0, so the README cannot drift from the CLI.
The runs are `slow` (`make test-slow`); finding the blocks is checked in every run."""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tunetrack.search.cli import app

from .studyfiles import write_study

README = Path(__file__).parents[1] / "README.md"
RUNNABLE = re.compile(r"^<!-- runnable\b.*?-->\n```(?:bash|sh|console)?\n(.*?)^```", re.M | re.S)
README_STUDY, README_FILE = "digits-mlp", "studies/digits.yaml"
runner = CliRunner(env={"COLUMNS": "200"})


def runnable_commands(text: str) -> list[list[str]]:
    """The `tunetrack` commands of the marked blocks, as argument lists: continuation lines
    joined, comments and a trailing `> FILE` dropped (the runner captures the output)."""
    commands = []
    for block in RUNNABLE.findall(text):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words[:1] != ["tunetrack"]:
                continue
            if ">" in words:
                words = words[:words.index(">")]
            commands.append(words[1:])
    return commands


def test_the_readme_has_runnable_blocks():
    commands = runnable_commands(README.read_text(encoding="utf-8"))
    assert {c[0] for c in commands} >= {"status", "best", "compare", "report", "promote"}


def test_runnable_commands_are_found_as_a_shell_reads_them():
    text = ("<!-- runnable -->\n```bash\ntunetrack status s   # why\ntunetrack report s \\\n"
            "  --top 2\nexport X=1\ntunetrack schema > s.json\n```\n```bash\ntunetrack no\n```\n")
    assert runnable_commands(text) == [["status", "s"], ["report", "s", "--top", "2"],
                                       ["schema"]]


@pytest.fixture(scope="module")
def study_folder(tmp_path_factory, template_db):
    """A small tracked study run in its own folder with the default stores, as after
    `make demo` (models logged, so `promote` has one to register)."""
    folder = tmp_path_factory.mktemp("readme")
    shutil.copy(template_db, folder / "mlflow.db")
    write_study(folder, "tiny", n_trials=2, max_epochs=1,
                tracking={"enabled": True, "log_models": "best"},
                registry={"model_name": "tiny-classifier"})
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        patch.delenv("TUNETRACK_STORAGE", raising=False)
        result = runner.invoke(app, ["run", "tiny.yaml", "--no-progress"])
        assert result.exit_code == 0, result.output
        yield folder


@pytest.mark.slow  # about a minute: the study with its models, then report and promote
@pytest.mark.parametrize("command", runnable_commands(README.read_text(encoding="utf-8")),
                         ids=" ".join)
def test_readme_command_runs(command, study_folder, monkeypatch):
    monkeypatch.chdir(study_folder)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("TUNETRACK_STORAGE", raising=False)
    args = [{README_STUDY: "tiny", README_FILE: "tiny.yaml"}.get(word, word) for word in command]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, f"tunetrack {shlex.join(args)}:\n{result.output}"
