"""The promotion statistics against hand-computed values and known truths."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest

from tunetrack.tracking.registry import (
    bootstrap_difference_ci,
    discordant_counts,
    mcnemar_exact_p,
    paired_evidence,
)


def test_mcnemar_hand_computed():
    # b=1, c=9: P[X <= 1] for X ~ Bin(10, 1/2) = (1 + 10) / 1024; two-sided doubles it
    assert mcnemar_exact_p(1, 9) == pytest.approx(2 * 11 / 1024, abs=1e-15)
    assert mcnemar_exact_p(9, 1) == mcnemar_exact_p(1, 9)
    # b=0, c=5: 2 * (1/2)^5
    assert mcnemar_exact_p(0, 5) == pytest.approx(2 / 32, abs=1e-15)
    assert mcnemar_exact_p(3, 3) == 1.0  # capped at 1
    assert mcnemar_exact_p(0, 0) == 1.0  # no disagreement: no evidence


@pytest.mark.parametrize(("b", "c"), [(1, 9), (4, 17), (30, 41), (0, 12), (7, 7), (120, 90)])
def test_mcnemar_equals_scipy_binomtest(b, c):
    assert mcnemar_exact_p(b, c) == pytest.approx(binomtest(min(b, c), b + c, 0.5).pvalue,
                                                  rel=1e-12)


def test_mcnemar_rejects_negative_counts():
    with pytest.raises(ValueError, match="discordant"):
        mcnemar_exact_p(-1, 3)


def test_discordant_counts_are_paired():
    champion = np.array([1, 1, 0, 0, 1, 0], dtype=bool)
    candidate = np.array([1, 0, 1, 1, 1, 0], dtype=bool)
    assert discordant_counts(champion, candidate) == (1, 2)
    with pytest.raises(ValueError, match="one length"):
        discordant_counts(champion, candidate[:3])


def test_bootstrap_is_seeded_and_matches_index_resampling():
    n, b, c = 270, 6, 19
    first = bootstrap_difference_ci(n, b, c, seed=3)
    assert first == bootstrap_difference_ci(n, b, c, seed=3)
    # the multinomial shortcut is the index bootstrap: compare with resampling indices
    champion = np.zeros(n, dtype=bool)
    candidate = np.zeros(n, dtype=bool)
    champion[:b] = True
    candidate[b:b + c] = True
    both = slice(b + c, b + c + 200)
    champion[both] = candidate[both] = True
    rng = np.random.default_rng(11)
    idx = rng.integers(0, n, size=(10_000, n))
    naive = candidate[idx].mean(1) - champion[idx].mean(1)
    low, high = np.percentile(naive, [2.5, 97.5])
    assert first[0] == pytest.approx(low, abs=0.008)
    assert first[1] == pytest.approx(high, abs=0.008)
    assert first[0] < (c - b) / n < first[1]


def test_bootstrap_ci_covers_the_true_difference():
    """Synthetic models with known accuracies 0.80 and 0.86 on a population: the 95 % CI
    computed on one test sample of 400 images covers the true 0.06 in about 95 % of
    independent test samples."""
    rng = np.random.default_rng(0)
    covered, trials = 0, 300
    for i in range(trials):
        champion = rng.random(400) < 0.80
        # candidate: correct wherever the champion is, plus 30 % of its errors, i.e.
        # accuracy 0.80 + 0.2 * 0.3 = 0.86
        candidate = champion | (rng.random(400) < 0.30)
        evidence = paired_evidence(champion, candidate, seed=i)
        covered += evidence.ci_low <= 0.06 <= evidence.ci_high
    assert 0.90 <= covered / trials <= 0.99, covered / trials


def test_paired_evidence_numbers():
    champion = np.array([True] * 80 + [False] * 20)
    candidate = champion.copy()
    candidate[:2] = False  # b = 2
    candidate[80:92] = True  # c = 12
    ev = paired_evidence(champion, candidate)
    assert (ev.n, ev.champion_only, ev.candidate_only) == (100, 2, 12)
    assert ev.champion_accuracy == 0.80 and ev.candidate_accuracy == 0.90
    assert ev.difference == pytest.approx(0.10)
    assert ev.p_value == pytest.approx(binomtest(2, 14, 0.5).pvalue)
    assert ev.ci_low < 0.10 < ev.ci_high
    assert ev.ci_low > 0  # 12 vs 2 is clear
