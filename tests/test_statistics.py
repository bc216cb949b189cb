"""The study's statistics, each checked against an independent computation on fixed inputs with known answers."""

import itertools
import math
from fractions import Fraction
from statistics import NormalDist

import numpy as np
import pytest
from scipy import stats

from shared.study.statistics import (
    Interval,
    expected_best,
    expected_best_curve,
    holm,
    mcnemar_exact,
    mean_interval,
    minimum_detectable_difference,
    paired_bootstrap_difference,
    paired_permutation_test,
    pareto_front,
    probability_of_improvement,
    standard_error_of_rate,
)

SEEDS = [0.512, 0.498, 0.535, 0.521, 0.507]


def test_mean_interval_is_scipys_t_interval():
    low, high = stats.t.interval(0.95, len(SEEDS) - 1, loc=np.mean(SEEDS), scale=stats.sem(SEEDS))
    result = mean_interval(SEEDS)
    assert result.method == "t"
    assert result.estimate == pytest.approx(np.mean(SEEDS))
    assert (result.low, result.high) == pytest.approx((low, high))
    low90, high90 = stats.t.interval(0.9, len(SEEDS) - 1, loc=np.mean(SEEDS), scale=stats.sem(SEEDS))
    assert (mean_interval(SEEDS, confidence=0.9).low, mean_interval(SEEDS, confidence=0.9).high) == pytest.approx(
        (low90, high90)
    )


def test_mean_interval_over_three_seeds_reaches_beyond_the_observed_range():
    result = mean_interval([0.50, 0.52, 0.55])
    assert result.low < 0.50 and result.high > 0.55, "a percentile bootstrap could not do this; the t interval must"


def test_one_seed_has_no_spread_and_no_seed_is_an_error():
    assert mean_interval([0.7]) == Interval(0.7, 0.7, 0.7, "single seed")
    assert mean_interval([0.3, 0.3, 0.3]) == Interval(0.3, 0.3, 0.3, "t")
    with pytest.raises(ValueError, match="empty"):
        mean_interval([])


def test_paired_bootstrap_matches_scipys_percentile_bootstrap():
    rng = np.random.default_rng(7)
    a = rng.uniform(0, 1, 40)
    b = a - rng.normal(0.05, 0.1, 40)
    result = paired_bootstrap_difference(a, b)
    reference = stats.bootstrap(
        (a - b,), np.mean, n_resamples=10000, method="percentile", random_state=np.random.default_rng(1)
    ).confidence_interval
    assert result.estimate == pytest.approx(np.mean(a) - np.mean(b))
    width = reference.high - reference.low
    assert abs(result.low - reference.low) < 0.05 * width and abs(result.high - reference.high) < 0.05 * width
    assert result == paired_bootstrap_difference(a, b), "the same seed must give the same interval"
    assert result != paired_bootstrap_difference(a, b, seed=1)


def test_identical_methods_differ_by_nothing():
    scores = [0.2, 0.8, 0.5, 1.0, 0.0, 0.6]
    difference = paired_bootstrap_difference(scores, scores)
    assert (difference.estimate, difference.low, difference.high) == (0, 0, 0)
    assert paired_permutation_test(scores, scores) == 1.0
    passed = [True, False, True, True, False]
    assert mcnemar_exact(passed, passed) == 1.0


def test_a_constant_difference_has_no_spread():
    difference = paired_bootstrap_difference([0.5, 0.75, 1.0], [0.25, 0.5, 0.75])
    assert (difference.estimate, difference.low, difference.high) == (0.25, 0.25, 0.25)


def test_mcnemar_by_hand():
    # b = 1 task only A passes, c = 9 only B passes: p = 2 * (C(10,0) + C(10,1)) / 2**10; concordant tasks add nothing.
    a = [True] * 1 + [False] * 9 + [True] * 20 + [False] * 5
    b = [False] * 1 + [True] * 9 + [True] * 20 + [False] * 5
    assert mcnemar_exact(a, b) == pytest.approx(2 * (1 + 10) / 2**10)
    assert mcnemar_exact(a, b) == pytest.approx(0.021484375)
    assert mcnemar_exact(b, a) == pytest.approx(0.021484375), "two-sided: swapping the methods changes nothing"


def test_mcnemar_matches_scipys_binomial_test():
    a = [True] * 7 + [False] * 15 + [True] * 10
    b = [False] * 7 + [True] * 15 + [True] * 10
    assert mcnemar_exact(a, b) == pytest.approx(stats.binomtest(7, 22, 0.5).pvalue)
    assert mcnemar_exact([True, False] * 3, [False, True] * 3) == 1.0, "an even split is capped at 1"


def test_more_tasks_passed_is_significant():
    a = [True] * 30 + [True] * 50 + [False] * 84
    b = [False] * 30 + [True] * 50 + [False] * 84
    assert mcnemar_exact(a, b) == pytest.approx(2 / 2**30)
    a_scores, b_scores = np.array(a, dtype=float), np.array(b, dtype=float)
    assert paired_permutation_test(a_scores, b_scores) < 0.05
    assert paired_bootstrap_difference(a_scores, b_scores).low > 0


def brute_force_sign_flip_p(a: list[str], b: list[str]) -> float:
    """Exact two-sided sign-flip p-value in rational arithmetic: every pattern, ties decided exactly."""
    differences = [Fraction(x) - Fraction(y) for x, y in zip(a, b, strict=True)]
    observed = abs(sum(differences))
    patterns = list(itertools.product((-1, 1), repeat=len(differences)))
    hits = sum(abs(sum(s * d for s, d in zip(signs, differences, strict=True))) >= observed for signs in patterns)
    return hits / len(patterns)


def test_permutation_test_on_eight_tasks_is_exact():
    # Pass rates over five seeds: many sign patterns tie the observed sum, which float rounding must not hide.
    a = ["0.6", "0.8", "0.4", "1.0", "0.6", "0.2", "0.8", "0.6"]
    b = ["0.4", "0.6", "0.6", "0.6", "0.4", "0.2", "0.4", "0.8"]
    expected = brute_force_sign_flip_p(a, b)
    assert 0.05 < expected < 0.5
    assert paired_permutation_test([float(x) for x in a], [float(x) for x in b]) == pytest.approx(expected)


def test_no_net_difference_is_not_significant_despite_float_rounding():
    a, b = [0.3, 0.0, 0.0, 0.7, 0.1], [0.0, 0.1, 0.2, 0.6, 0.2]  # differences sum to 0, in floats to -5.6e-17
    assert paired_permutation_test(a, b) == 1.0


def test_permutation_test_with_many_tasks_samples_the_sign_flips():
    rng = np.random.default_rng(3)
    b = rng.uniform(0, 1, 12).round(3)
    a = (b + rng.normal(0.08, 0.15, 12)).round(3)
    expected = brute_force_sign_flip_p([str(x) for x in a], [str(x) for x in b])
    sampled = paired_permutation_test(a, b, resamples=2000)  # 2**12 > 2000: drawn, not enumerated
    assert abs(sampled - expected) < 4 * math.sqrt(expected * (1 - expected) / 2000)
    assert sampled == paired_permutation_test(a, b, resamples=2000)


def test_sampled_p_value_counts_the_observed_pattern():
    # 20 equal gains: only the two all-same-sign patterns reach the observed sum, so 999 draws almost surely miss.
    assert paired_permutation_test([1.0] * 20, [0.0] * 20, resamples=999) == 1 / 1000


def test_holm_by_hand():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    # Sorted 0.011, 0.012, 0.02, 0.5 scale to 0.044, 0.036, 0.04, 0.5; step-down keeps them from falling.
    assert holm([0.02, 0.011, 0.5, 0.012]) == pytest.approx([0.044, 0.044, 0.5, 0.044])
    assert holm([0.5, 0.6]) == [1.0, 1.0]
    assert holm([]) == []
    with pytest.raises(ValueError):
        holm([0.2, 1.5])


def test_probability_of_improvement_extremes():
    better = probability_of_improvement([0.6, 0.7, 0.65], [0.5, 0.55, 0.4, 0.58])
    assert (better.estimate, better.low, better.high) == (1.0, 1.0, 1.0)
    same = probability_of_improvement([0.5, 0.6, 0.7], [0.5, 0.6, 0.7])
    assert same.estimate == 0.5 and same.low < 0.5 < same.high
    assert probability_of_improvement([0.3, 0.3], [0.3, 0.3, 0.3]).estimate == 0.5, "ties count one half"


def test_probability_of_improvement_by_hand_and_for_losses():
    a, b = [0.1, 0.3, 0.5, 0.6], [0.2, 0.3, 0.4]
    # Pairs A wins: 0.3>0.2, 0.5>0.2, 0.5>0.4, 0.5>0.3, three for 0.6, and 0.3=0.3 as a half: 7.5 of 12.
    assert probability_of_improvement(a, b).estimate == pytest.approx(7.5 / 12)
    assert probability_of_improvement(a, b).estimate == pytest.approx(stats.mannwhitneyu(a, b).statistic / 12)
    assert probability_of_improvement(a, b, higher_is_better=False).estimate == pytest.approx(4.5 / 12)


def test_probability_of_improvement_interval_matches_a_plain_resampling():
    rng = np.random.default_rng(11)
    a, b = rng.normal(0.55, 0.03, 8), rng.normal(0.52, 0.03, 8)
    result = probability_of_improvement(a, b)
    draws = np.random.default_rng(5)
    resampled = [np.mean(draws.choice(a, a.size)[:, None] > draws.choice(b, b.size)[None, :]) for _ in range(5000)]
    low, high = np.quantile(resampled, [0.025, 0.975])
    assert result.method == "bootstrap percentile"
    assert abs(result.low - low) < 0.03 and abs(result.high - high) < 0.03
    assert result.low < result.estimate < result.high


def test_standard_error_of_a_humaneval_pass_rate_is_about_four_points():
    assert standard_error_of_rate(0.5, 164) == pytest.approx(0.039, abs=0.0005)
    assert standard_error_of_rate(0.5, 164) == pytest.approx(math.sqrt(0.25 / 164))


def test_minimum_detectable_difference_by_hand():
    z = NormalDist().inv_cdf(0.975) + NormalDist().inv_cdf(0.8)
    expected = z * math.sqrt(2 * 0.5 * 0.5 / 164)
    assert expected == pytest.approx(0.155, abs=0.001)
    assert minimum_detectable_difference(164, 5, 0.5) == pytest.approx(expected)
    assert minimum_detectable_difference(164, 1, 0.5) == minimum_detectable_difference(164, 5, 0.5), (
        "by default seeds add no tasks"
    )
    # All variance from seeds: four seeds per task halve the standard error.
    assert minimum_detectable_difference(164, 4, 0.5, seed_variance_share=1.0) == pytest.approx(expected / 2)
    assert minimum_detectable_difference(656, 1, 0.5) == pytest.approx(expected / 2), "four times the tasks"


def test_expected_best_closed_forms():
    values = [1.0, 2.0, 3.0]
    assert expected_best(values, 1) == pytest.approx(2.0)
    assert expected_best(values, 2, higher_is_better=True) == pytest.approx((1 * 1 + 2 * 3 + 3 * 5) / 9)
    assert expected_best(values, 2) == pytest.approx((1 * 5 + 2 * 3 + 3 * 1) / 9), "losses: the expected minimum"


def test_expected_best_matches_enumerating_every_draw():
    values = [0.3, 0.1, 0.7, 0.5, 0.5]
    for n in (1, 2, 3):
        draws = list(itertools.product(values, repeat=n))
        assert expected_best(values, n, higher_is_better=True) == pytest.approx(np.mean([max(d) for d in draws]))
        assert expected_best(values, n) == pytest.approx(np.mean([min(d) for d in draws]))


def test_expected_best_curve_rises_from_the_mean_towards_the_best():
    values = [0.42, 0.61, 0.55, 0.30]
    curve = expected_best_curve(values, higher_is_better=True)
    assert len(curve) == 4 and curve[0] == pytest.approx(np.mean(values))
    assert np.all(np.diff(curve) > 0)
    assert curve[-1] < 0.61
    assert expected_best(values, 500, higher_is_better=True) == pytest.approx(0.61)
    assert expected_best_curve([2.0, 1.0]) == pytest.approx([1.5, 1.25])


def test_a_failed_trial_counts_as_the_worst():
    assert expected_best([1.0, 2.0, math.inf], 3) == math.inf, "three draws can all be the failure"
    assert expected_best([1.0, math.inf], 2000) == math.inf, "however many draws"
    assert expected_best([1.0, 2.0, math.nan], 3) == math.inf
    assert expected_best([0.4, 0.6, math.nan], 2, higher_is_better=True) == -math.inf
    assert expected_best([1.0, 2.0, 10.0], 2) == pytest.approx((1 * 5 + 2 * 3 + 10 * 1) / 9)


def test_pareto_front_by_hand():
    memory = [1.0, 2.0, 2.0, 3.0, 1.0, 4.0]
    accuracy = [0.5, 0.7, 0.6, 0.7, 0.5, 0.9]
    # The third is beaten by the second (same memory, lower accuracy), the fourth too (more memory, same accuracy);
    # the first and fifth are the same point and do not knock each other out.
    assert pareto_front(memory, accuracy) == [True, True, False, False, True, True]


def test_pareto_front_over_two_cost_axes():
    memory_and_time = [(1.0, 5.0), (2.0, 1.0), (2.0, 5.0)]
    assert pareto_front(memory_and_time, [0.5, 0.5, 0.5]) == [True, True, False]
    assert pareto_front(memory_and_time, [0.5, 0.5, 0.8]) == [True, True, True]
    with pytest.raises(ValueError):
        pareto_front([(1.0, 2.0)], [0.5, 0.6])
