"""Study-file validation: every kind of bad input gives one clear error with its path."""

from __future__ import annotations

import pytest
import yaml

from tunetrack.models.errors import TunetrackError
from tunetrack.search.space import SearchSpace
from tunetrack.search.study_file import load_study_file

from .support import errors_of

BASE = {"name": "t", "model": {"depth": {"int": [1, 3]}}}


def with_train(**train) -> dict:
    return {**BASE, "train": train}


def test_shipped_studies_validate():
    from pathlib import Path

    files = sorted(Path(__file__).parents[1].glob("studies/*.yaml"))
    assert files, "no study files shipped"
    for file in files:
        spec = load_study_file(file)
        assert SearchSpace(spec).dimensions or spec.search.sampler == "grid", file


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({**BASE, "modle": {}}, "modle: Extra inputs are not permitted"),
        (with_train(lr={"float": [0.1, 0.01]}), "train.lr.float: low must be < high"),
        (
            with_train(lr={"float": [0.0, 0.1], "log": True}),
            "train.lr.float: log: true needs low > 0",
        ),
        (with_train(optimizer={"choice": []}), "train.optimizer.choice: choice must list"),
        (with_train(max_epochs="ten"), "train.max_epochs"),
        (
            with_train(max_epochs={"float": [1, 5]}),
            "train.max_epochs.float: train.max_epochs takes integers",
        ),
        (
            with_train(momentum={"float": [0.8, 0.9], "when": {"optimzer": "sgd"}}),
            "train.momentum.when: 'optimzer' names an unknown parameter",
        ),
        ({**BASE, "search": {"sampler": "bayes"}}, "search.sampler: Input should be 'tpe'"),
        ({**BASE, "search": {"pruner": {"type": "early"}}}, "search.pruner.type: Input should be"),
        (with_train(optimizer="adamm"), "train.optimizer: unknown value 'adamm'"),
        (
            with_train(optimizer={"choice": ["sgd", "nadam"]}),
            "train.optimizer.choice: unknown value(s) ['nadam']",
        ),
        (
            {**BASE, "model": {"activation": {"choice": ["relu", "swish"]}}},
            "unknown value(s) ['swish']",
        ),
        ({**BASE, "dataset": {"name": "mnist"}}, "dataset.name: unknown value 'mnist'"),
        (
            {**BASE, "model": {"width": {"int": [8, 64], "log": True, "step": 2}}},
            "log: true cannot be combined with step",
        ),
        (
            {**BASE, "search": {"sampler": "grid"}, "train": {"lr": {"float": [0.01, 0.1]}}},
            "train.lr: search.sampler grid needs a finite set",
        ),
    ],
)
def test_bad_input_names_the_field(raw, expected):
    errors = errors_of(raw)
    assert any(expected in e for e in errors), errors
    assert all("\n" not in e for e in errors)


def test_every_error_is_reported_not_just_the_first():
    errors = errors_of({**BASE, "train": {"lr": {"float": [1, 0]}, "batch_size": {"choice": []}}})
    assert len(errors) == 2


def test_when_values_must_exist_in_the_parent():
    errors = errors_of(
        with_train(
            optimizer={"choice": ["sgd", "adam"]},
            momentum={"float": [0.8, 0.9], "when": {"optimizer": "rmsprop"}},
        )
    )
    assert any("never takes ['rmsprop']" in e for e in errors)


def test_missing_unreadable_and_invalid_yaml(tmp_path):
    with pytest.raises(TunetrackError, match="does not exist"):
        load_study_file(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmodel: [unclosed\n")
    with pytest.raises(TunetrackError, match=r"invalid YAML at line \d+"):
        load_study_file(bad)
    folder = tmp_path / "dir.yaml"
    folder.mkdir()
    with pytest.raises(TunetrackError, match="cannot be read"):
        load_study_file(folder)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just a string\n")
    with pytest.raises(TunetrackError, match="expected a mapping"):
        load_study_file(scalar)


def test_yaml_is_loaded_safely(tmp_path):
    evil = tmp_path / "evil.yaml"
    evil.write_text("name: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(TunetrackError, match="invalid YAML"):
        load_study_file(evil)


def test_literal_fixed_and_mapping_searched(tmp_path):
    file = tmp_path / "s.yaml"
    file.write_text(
        yaml.safe_dump(
            {
                "name": "ok",
                "model": {"family": "cnn", "depth": {"int": [1, 2]}},
                "train": {"lr": {"float": [1e-3, 1e-1], "log": True}},
            }
        )
    )
    space = SearchSpace(load_study_file(file))
    assert space.fixed == {"model.family": "cnn"}
    assert [d.path for d in space.dimensions] == ["model.depth", "train.lr"]
