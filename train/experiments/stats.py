"""Statistics of an experiment: mean ± std over seeds, paired Wilcoxon tests, learning speed.

Everything here works on plain numbers keyed by seed, so it is tested on known
inputs without training anything.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Spread:
    """Mean and sample standard deviation (ddof=1, as in the paper's tables) of n values."""

    n: int
    mean: float
    std: float | None  # None with fewer than 2 values: a spread of one value is not zero, it is unknown

    def as_dict(self) -> dict:
        return asdict(self)


def spread(values: list[float]) -> Spread:
    if not values:
        raise ValueError("spread() of no values")
    array = np.asarray(values, dtype=float)
    std = float(array.std(ddof=1)) if array.size >= 2 else None
    return Spread(n=int(array.size), mean=float(array.mean()), std=std)


def smallest_exact_p(n: int) -> float:
    """The smallest two-sided p-value the exact signed-rank test can give with n untied pairs.

    All n differences of one sign is the most extreme outcome, and it has
    probability 2 / 2**n under the null: with 5 seeds that is 0.0625, so no
    5-seed experiment can reach p < 0.05, however consistent the effect.
    """
    return 2.0 / 2**n if n > 0 else 1.0


DIFFERENCE_DECIMALS = 12
# Up to this many untied pairs, tied ranks are handled by enumerating all 2**n sign flips.
EXACT_ENUMERATION_MAX_PAIRS = 16


@dataclass(frozen=True)
class PairedTest:
    """A reference variant (ELU, or an activation with batch norm) against another, paired by seed."""

    other: str
    n_pairs: int  # seeds both variants finished
    reference_lower: int  # seeds where the reference's value was lower
    reference_higher: int
    ties: int
    mean_difference: float | None  # mean of (reference - other); negative: the reference lower
    p_value: float | None  # two-sided Wilcoxon signed-rank; None when it cannot be computed
    smallest_possible_p: float  # 2 / 2**(untied pairs): the floor this many seeds allows
    method: str  # how p was computed, or why it was not

    def as_dict(self) -> dict:
        return asdict(self)


def paired_wilcoxon(reference: dict[int, float], other: dict[int, float], other_name: str) -> PairedTest:
    """Two-sided Wilcoxon signed-rank test of reference vs other over the seeds both have.

    Ties (zero differences) are dropped, as Wilcoxon's original test does. The
    p-value is exact up to EXACT_ENUMERATION_MAX_PAIRS pairs (tied ranks
    included), beyond that the normal approximation; ``method`` says which.
    """
    from scipy.stats import PermutationMethod, wilcoxon

    seeds = sorted(set(reference) & set(other))
    # Rounded so that float noise (0.1234 - 0.12 vs 0.0034) neither hides a tie nor invents a rank.
    differences = np.round(np.array([reference[s] - other[s] for s in seeds], dtype=float), DIFFERENCE_DECIMALS)
    better = int((differences < 0).sum())
    worse = int((differences > 0).sum())
    ties = len(seeds) - better - worse
    untied = better + worse
    mean_difference = float(differences.mean()) if len(seeds) else None
    common = dict(
        other=other_name,
        n_pairs=len(seeds),
        reference_lower=better,
        reference_higher=worse,
        ties=ties,
        mean_difference=mean_difference,
        smallest_possible_p=smallest_exact_p(untied),
    )
    if untied == 0:
        reason = "no pairs" if not seeds else "all pairs tied: no evidence either way"
        return PairedTest(**common, p_value=1.0 if seeds else None, method=reason)
    nonzero = differences[differences != 0]
    tied_ranks = len(np.unique(np.abs(nonzero))) < len(nonzero)
    if not tied_ranks:
        result = wilcoxon(nonzero, zero_method="wilcox", alternative="two-sided", method="exact")
        label = "exact signed-rank"
    elif untied <= EXACT_ENUMERATION_MAX_PAIRS:
        # scipy's "exact" table assumes distinct ranks; with tied ranks, enumerating all
        # 2**n sign flips of the mid-ranks is still exact (the normal approximation is
        # not, and with few seeds it can print a p below what the data allow).
        result = wilcoxon(nonzero, zero_method="wilcox", alternative="two-sided", method=PermutationMethod(n_resamples=2**untied))
        label = "exact, all sign flips enumerated (tied ranks)"
    else:
        result = wilcoxon(nonzero, zero_method="wilcox", alternative="two-sided", method="approx")
        label = "normal approximation (tied ranks)"
    return PairedTest(**common, p_value=float(result.pvalue), method=label)


def epochs_to_threshold(train_losses: list[float], seconds: list[float], threshold: float) -> tuple[int, float] | None:
    """The first epoch (1-based) whose training loss is ≤ threshold, and the training seconds spent by then.

    ``seconds[i]`` is the cumulative training time at the end of epoch i+1.
    None when the run never got there.
    """
    for index, loss in enumerate(train_losses):
        if loss <= threshold:
            return index + 1, float(seconds[index])
    return None


def default_loss_thresholds(mean_curves: dict[str, list[float]]) -> list[float]:
    """Two training-loss levels every variant's mean curve reaches: an early one and a late one.

    Late: the highest of the final values, which the slowest variant reaches at
    its last epoch, the others sooner. Early: the geometric midpoint between
    that and the lowest first-epoch value, where the fast start the paper
    claims for ELU shows. Only the late one when the curves never got below
    their first-epoch level.
    """
    curves = [c for c in mean_curves.values() if c and all(math.isfinite(x) for x in c)]
    if not curves:
        raise ValueError("no finite training loss to choose a threshold from")
    late = max(c[-1] for c in curves)
    start = min(c[0] for c in curves)
    return [math.sqrt(start * late), late] if start > late > 0 else [late]
