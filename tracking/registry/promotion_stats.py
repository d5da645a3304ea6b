"""The statistics behind `promote`: is the candidate really better than the champion?

Both models predict the same test images once, so the evidence is *paired*: what matters
is where they disagree. b = images the champion gets right and the candidate wrong, c =
the reverse. Under "equally good" each disagreement is a fair coin, so the exact McNemar
test asks how unlikely a split as lopsided as (b, c) is for b + c coin flips. Dietterich
(1998) showed that, for two classifiers evaluated once on one test set, McNemar's test
keeps its type-I error at the nominal level, while the usual difference-of-proportions
test (which ignores the pairing) does not.

The paired bootstrap gives the size of the difference: resampling test images with
replacement resamples (b, c, agreements) from Multinomial(n, (b/n, c/n, 1 - (b+c)/n)), so
drawing those three counts directly is the same bootstrap as resampling indices, in
O(1) memory per replicate instead of O(n).

Pure numpy/scipy, no MLflow: the registry, the docs and the tests share these functions.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

BOOTSTRAP_REPLICATES = 10_000
CONFIDENCE = 0.95


@dataclass(frozen=True)
class PairedEvidence:
    """Everything a promotion decision rests on (kept in the registry's history)."""

    n: int  # test images
    champion_accuracy: float
    candidate_accuracy: float
    difference: float  # candidate - champion
    ci_low: float  # paired bootstrap CONFIDENCE interval of `difference`
    ci_high: float
    champion_only: int  # b: champion right, candidate wrong
    candidate_only: int  # c: candidate right, champion wrong
    p_value: float  # exact McNemar, two-sided

    def as_dict(self) -> dict[str, float | int]:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def discordant_counts(champion_correct: np.ndarray, candidate_correct: np.ndarray
                      ) -> tuple[int, int]:
    """(b, c): champion right & candidate wrong, candidate right & champion wrong."""
    champion = np.asarray(champion_correct, dtype=bool)
    candidate = np.asarray(candidate_correct, dtype=bool)
    if champion.shape != candidate.shape or champion.ndim != 1:
        raise ValueError(f"paired outcomes need two 1-d arrays of one length, got shapes "
                         f"{champion.shape} and {candidate.shape}")
    return int((champion & ~candidate).sum()), int((candidate & ~champion).sum())


def mcnemar_exact_p(b: int, c: int) -> float:
    """Two-sided exact McNemar p: min(1, 2 P[X <= min(b, c)]), X ~ Binomial(b + c, 1/2).

    b + c = 0 (the models never disagree) gives 1: no evidence either way.
    """
    from scipy.stats import binom

    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got b={b}, c={c}")
    if b + c == 0:
        return 1.0
    return float(min(1.0, 2.0 * binom.cdf(min(b, c), b + c, 0.5)))


def bootstrap_difference_ci(n: int, b: int, c: int, *, seed: int = 0,
                            replicates: int = BOOTSTRAP_REPLICATES,
                            confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Percentile interval of (candidate - champion) accuracy under the paired bootstrap.

    Each replicate resamples the n test images with replacement; only the resampled
    discordant counts change the difference, (c* - b*) / n, and those are one multinomial
    draw. Seeded: the same outcomes always give the same interval.
    """
    if n <= 0 or b < 0 or c < 0 or b + c > n:
        raise ValueError(f"need 0 <= b + c <= n and n > 0, got n={n}, b={b}, c={c}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1) but got {confidence}")
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, [b / n, c / n, 1 - (b + c) / n], size=replicates)
    differences = (counts[:, 1] - counts[:, 0]) / n
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(differences, [tail, 100 - tail])
    return float(low), float(high)


def paired_evidence(champion_correct: np.ndarray, candidate_correct: np.ndarray, *,
                    seed: int = 0) -> PairedEvidence:
    """McNemar and the bootstrap interval for two models' per-image outcomes."""
    b, c = discordant_counts(champion_correct, candidate_correct)
    n = len(np.asarray(champion_correct))
    if n == 0:
        raise ValueError("no test images: nothing to compare")
    champion_acc = float(np.asarray(champion_correct, dtype=bool).mean())
    candidate_acc = float(np.asarray(candidate_correct, dtype=bool).mean())
    low, high = bootstrap_difference_ci(n, b, c, seed=seed)
    return PairedEvidence(n=n, champion_accuracy=champion_acc,
                          candidate_accuracy=candidate_acc,
                          difference=(c - b) / n, ci_low=low, ci_high=high,
                          champion_only=b, candidate_only=c, p_value=mcnemar_exact_p(b, c))
