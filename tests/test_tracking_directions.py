"""One rule for "which value is better": `direction_sign`, used by compare, registry and
the best-model decision."""

from __future__ import annotations

import pytest
from optuna.study import StudyDirection

from tunetrack.tracking.directions import better, direction_sign, dominates


def test_sign_sorts_best_first_for_either_direction():
    values = [0.3, 0.9, 0.1]
    assert sorted(values, key=lambda v: direction_sign(StudyDirection.MAXIMIZE) * v)[0] == 0.9
    assert sorted(values, key=lambda v: direction_sign("MINIMIZE") * v)[0] == 0.1
    assert direction_sign("maximize") == -1


def test_better_and_dominates_follow_the_sign():
    assert better(0.9, 0.8, "MAXIMIZE") and not better(0.8, 0.9, "MAXIMIZE")
    assert better(0.1, 0.2, "MINIMIZE") and not better(0.2, 0.2, "MINIMIZE")
    assert dominates([0.9, 100], [0.8, 200], ["MAXIMIZE", "MINIMIZE"])
    assert not dominates([0.9, 300], [0.8, 200], ["MAXIMIZE", "MINIMIZE"])


def test_an_unknown_direction_is_a_bug_not_a_default():
    with pytest.raises(KeyError):
        direction_sign(StudyDirection.NOT_SET)
