"""The experiment statistics on inputs whose answers are known by hand."""

import pytest

from elunet.train.experiments.stats import (
    default_loss_thresholds,
    epochs_to_threshold,
    paired_wilcoxon,
    smallest_exact_p,
    spread,
)

ZERO = {seed: 0.0 for seed in range(5)}


def test_spread_is_mean_and_sample_std():
    s = spread([1.0, 2.0, 3.0])
    assert (s.n, s.mean, s.std) == (3, 2.0, 1.0)
    assert spread([4.0]).std is None  # one value has no spread, not a spread of zero


def test_five_seeds_cannot_reach_p_below_0_0625():
    assert smallest_exact_p(5) == 0.0625
    assert smallest_exact_p(10) == pytest.approx(0.001953125)
    # ELU lower in all 5 seeds: the most extreme outcome, p = 2/32.
    test = paired_wilcoxon(ZERO, {0: 1.0, 1: 2.0, 2: 3.0, 3: 4.0, 4: 5.0}, "relu")
    assert (test.reference_lower, test.reference_higher, test.ties) == (5, 0, 0)
    assert test.p_value == pytest.approx(0.0625)
    assert test.method == "exact signed-rank"
    assert test.mean_difference == pytest.approx(-3.0)


def test_one_seed_against_elu():
    # Signed ranks -1 -2 -3 -4 +5: W+ = 5; 10 of the 32 sign patterns have W+ <= 5, two-sided p = 20/32.
    test = paired_wilcoxon(ZERO, {0: 1.0, 1: 2.0, 2: 3.0, 3: 4.0, 4: -5.0}, "relu")
    assert (test.reference_lower, test.reference_higher) == (4, 1)
    assert test.p_value == pytest.approx(0.625)


def test_tied_ranks_stay_exact():
    # |differences| 1, 1, 3, 4, 5 tie two ranks; the normal approximation would say p ~ 0.042,
    # below what 5 seeds allow. Enumerating the sign flips gives the exact 2/32.
    test = paired_wilcoxon(ZERO, {0: 1.0, 1: 1.0, 2: 3.0, 3: 4.0, 4: 5.0}, "relu")
    assert test.p_value == pytest.approx(0.0625)
    assert "exact" in test.method


def test_zero_differences_are_dropped_and_counted():
    test = paired_wilcoxon(ZERO, {0: 1.0, 1: 2.0, 2: 3.0, 3: 4.0, 4: 0.0}, "relu")
    assert test.ties == 1 and test.smallest_possible_p == 0.125
    assert test.p_value == pytest.approx(0.125)
    all_tied = paired_wilcoxon(ZERO, dict(ZERO), "relu")
    assert all_tied.p_value == 1.0 and "tied" in all_tied.method


def test_float_noise_is_not_a_difference():
    # 0.3 - 0.1 - 0.2 is 5.6e-17 in floats: the same error, a tie.
    test = paired_wilcoxon({0: 0.3, 1: 0.5}, {0: 0.1 + 0.2, 1: 0.4}, "relu")
    assert (test.ties, test.reference_higher) == (1, 1)


def test_only_common_seeds_are_paired():
    test = paired_wilcoxon({0: 0.1, 1: 0.2, 2: 0.3}, {1: 0.3, 2: 0.5, 7: 0.0}, "relu")
    assert test.n_pairs == 2 and test.reference_lower == 2


def test_epochs_to_threshold():
    losses, seconds = [1.0, 0.6, 0.4, 0.3], [10.0, 20.0, 30.0, 40.0]
    assert epochs_to_threshold(losses, seconds, 0.5) == (3, 30.0)
    assert epochs_to_threshold(losses, seconds, 0.6) == (2, 20.0)
    assert epochs_to_threshold(losses, seconds, 0.1) is None


def test_default_thresholds_are_reached_by_every_mean_curve():
    curves = {"elu": [0.9, 0.5, 0.2], "relu": [1.6, 0.7, 0.4]}
    # late: relu's final 0.4; early: sqrt(0.9 * 0.4) between it and the lowest first-epoch loss.
    assert default_loss_thresholds(curves) == pytest.approx([0.6, 0.4])
    # Curves that never fall below their start have only the late threshold.
    assert default_loss_thresholds({"relu": [2.3, 2.3, 2.3]}) == [2.3]
