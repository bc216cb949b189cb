"""The study's statistics, each checked against an independent computation on fixed inputs with known answers, and
each claim of an interval or a test (its coverage, its error rate) by a small simulation."""

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
from scipy import stats

from shared.study.statistics import (
    FRESH_SEED_MIN_SEEDS,
    Interval,
    cost_interval,
    expected_best,
    expected_best_curve,
    holm,
    mcnemar_detectable_difference,
    mcnemar_exact,
    mcnemar_fewest_flips,
    mcnemar_power,
    mean_interval,
    paired_bootstrap_difference,
    paired_permutation_test,
    pareto_front,
    probability_of_improvement,
    run_average_rate,
    seeds_and_tasks_difference,
    standard_error_of_rate,
    t_detectable_difference,
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


def test_probability_of_improvement_by_hand_and_for_losses():
    a, b = [0.1, 0.3, 0.5, 0.6], [0.2, 0.3, 0.4]
    # Pairs A wins: 0.3>0.2, 0.5>0.2, 0.5>0.4, 0.5>0.3, three for 0.6, and 0.3=0.3 as a half: 7.5 of 12.
    assert probability_of_improvement(a, b).estimate == pytest.approx(7.5 / 12)
    assert probability_of_improvement(a, b).estimate == pytest.approx(stats.mannwhitneyu(a, b).statistic / 12)
    assert probability_of_improvement(a, b, higher_is_better=False).estimate == pytest.approx(4.5 / 12)
    assert probability_of_improvement([0.3, 0.3], [0.3, 0.3, 0.3]).estimate == 0.5, "ties count one half"


def newcombe_bounds_on_a_grid(estimate: float, m: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Newcombe's method 5 interval found by scanning theta on a fine grid: every theta whose squared distance to
    the estimate is within z^2 times Hanley and McNeil's variance at theta, with N = (m + n) / 2."""
    theta = np.linspace(0, 1, 200_001)
    size = (m + n) / 2
    q1, q2 = theta / (2 - theta), 2 * theta**2 / (1 + theta)
    variance = (theta * (1 - theta) + (size - 1) * (q1 - theta**2) + (size - 1) * (q2 - theta**2)) / (m * n)
    inside = theta[(estimate - theta) ** 2 <= z**2 * variance + 1e-15]
    return inside.min(), inside.max()


def test_probability_of_improvement_interval_is_newcombes_score_interval():
    for a, b in ([[0.6, 0.7, 0.65, 0.5], [0.5, 0.55, 0.4, 0.58]], [[0.1, 0.5, 0.2, 0.4, 0.3], [0.35, 0.2, 0.6, 0.7]]):
        result = probability_of_improvement(a, b)
        low, high = newcombe_bounds_on_a_grid(result.estimate, len(a), len(b))
        assert (result.low, result.high) == pytest.approx((low, high), abs=1e-5)
        assert result.low < result.estimate < result.high or result.estimate in (0.0, 1.0)


def test_every_pair_one_way_or_every_seed_tied_is_no_certainty():
    """A bootstrap over seeds answered these with 1 [1, 1] and 0.5 [0.5, 0.5]: no uncertainty at all."""
    better = probability_of_improvement([0.6, 0.7, 0.65, 0.66], [0.5, 0.55, 0.4, 0.58])
    assert better.estimate == 1.0 and better.high == 1.0 and better.low < 0.9
    tied = probability_of_improvement([0.0] * 4, [0.0] * 4)
    assert tied.estimate == 0.5 and tied.low < 0.25 and tied.high > 0.75


def score_interval_coverage(seeds: int, truth: float, studies: int, rng: np.random.Generator) -> float:
    """The share of simulated studies (normal per-seed scores, A's shifted so that P(A > B) = truth) whose
    interval holds the truth."""
    shift = stats.norm.ppf(truth) * math.sqrt(2)
    hits = 0
    for _ in range(studies):
        result = probability_of_improvement(rng.normal(shift, 1, seeds), rng.normal(0, 1, seeds))
        hits += result.low <= truth <= result.high
    return hits / studies


def test_the_fresh_seed_interval_covers_near_nominal_from_the_minimum_seeds_on():
    rng = np.random.default_rng(2021)
    for truth in (0.5, 0.8, 0.95):
        coverage = score_interval_coverage(FRESH_SEED_MIN_SEEDS, truth, 600, rng)
        assert coverage >= 0.92, f"P = {truth}: {coverage:.3f} at {FRESH_SEED_MIN_SEEDS} seeds"
    # One seed fewer and the coverage at a coin flip falls short (0.90 in 2,000 studies; the study prints nothing).
    assert score_interval_coverage(FRESH_SEED_MIN_SEEDS - 1, 0.5, 1500, rng) < 0.925


def test_standard_error_of_a_humaneval_pass_rate_is_about_four_points():
    assert standard_error_of_rate(0.5, 164) == pytest.approx(0.039, abs=0.0005)
    assert standard_error_of_rate(0.5, 164) == pytest.approx(math.sqrt(0.25 / 164))


def test_mcnemar_fewest_flips_is_the_first_k_with_two_halves_to_the_k_under_alpha():
    for alpha in (0.05, 0.05 / 3, 0.01, 0.0625):
        k = next(k for k in range(1, 50) if 2 * 0.5**k <= alpha)
        assert mcnemar_fewest_flips(alpha) == k
        flips = [True] * k + [False] * 20
        assert mcnemar_exact(flips, [False] * k + [False] * 20) <= alpha
        assert mcnemar_exact(flips[1:], [False] * (k - 1) + [False] * 20) > alpha
    assert mcnemar_fewest_flips(0.05) == 6, "5 tasks give 0.0625, 6 give 0.031"


def test_mcnemar_power_matches_a_simulation_of_the_test():
    rng = np.random.default_rng(9)
    tasks, share, difference, alpha = 40, 0.3, 0.2, 0.05
    only_a, only_b = (share + difference) / 2, (share - difference) / 2
    rejected = 0
    for _ in range(2000):
        outcome = rng.choice(3, size=tasks, p=[only_a, only_b, 1 - share])  # 0: only A passes, 1: only B, 2: same
        rejected += mcnemar_exact(outcome == 0, outcome == 1) <= alpha
    assert mcnemar_power(tasks, share, difference, alpha) == pytest.approx(rejected / 2000, abs=0.03)
    assert mcnemar_power(tasks, share, 0.0, alpha) <= alpha, "exact: never above its level"


def test_mcnemar_detectable_difference_at_twenty_tasks():
    """At 20 tasks nothing under 6/20 = 0.30 can be significant at 5%: 80% power needs more than that."""
    detectable = mcnemar_detectable_difference(20, 0.0, 0.05)
    assert detectable > 0.30
    assert mcnemar_power(20, detectable, detectable, 0.05) == pytest.approx(0.8, abs=1e-3)
    assert mcnemar_detectable_difference(5, 0.0, 0.05) is None, "5 tasks all one way give p = 0.0625"
    # Holm's first step at three pairs tests at 0.05 / 3: 7 flips are needed, and the difference grows.
    assert mcnemar_detectable_difference(20, 0.0, 0.05 / 3) > detectable


def test_t_detectable_difference_has_the_power_it_claims():
    """Against the noncentral t: a two-sided t test at the returned difference has about the asked power."""
    error, freedom, alpha = 0.02, 6.0, 0.05 / 3
    difference = t_detectable_difference(error, freedom, alpha, power=0.8)
    critical = stats.t.ppf(1 - alpha / 2, freedom)
    power = stats.nct.sf(critical, freedom, difference / error) + stats.nct.cdf(-critical, freedom, difference / error)
    assert power == pytest.approx(0.8, abs=0.03)
    assert t_detectable_difference(error, freedom, 0.05) < difference, "a stricter level needs a bigger difference"


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


def test_pareto_front_leaves_out_a_point_missing_an_axis():
    """A missing memory is not 0 MB (which nothing beats), a missing cost not nan (which nothing dominates)."""
    memory_and_time = [(None, 1.0), (2.0, math.nan), (2.0, 5.0), (3.0, 6.0)]
    assert pareto_front(memory_and_time, [0.9, 0.9, 0.5, 0.4]) == [None, None, True, False]
    assert pareto_front([1.0, None], [0.5, None]) == [True, None]


def test_cost_interval_is_a_t_interval_on_the_logarithms():
    runtimes = [6.4, 15.4, 9.1, 11.0]
    logs = np.log(runtimes)
    low, high = stats.t.interval(0.95, len(logs) - 1, loc=logs.mean(), scale=stats.sem(logs))
    result = cost_interval(runtimes)
    assert result.estimate == pytest.approx(stats.gmean(runtimes))
    assert (result.low, result.high) == pytest.approx((math.exp(low), math.exp(high)))
    assert result.low > 0 and result.method == "t on logs"


def test_two_runs_of_a_cost_give_their_range_and_one_its_value():
    """A t interval on 2 seeds of a runtime ran from -45.9 to 67.7 s: two runs give their range, never below 0."""
    assert cost_interval([6.4, 15.4]) == Interval(pytest.approx(math.sqrt(6.4 * 15.4)), 6.4, 15.4, "observed range")
    assert cost_interval([23.1]) == Interval(23.1, 23.1, 23.1, "single run")
    with pytest.raises(ValueError, match="positive"):
        cost_interval([3.0, 0.0, 2.0])


def test_run_average_rate_is_total_tokens_over_total_seconds():
    tokens, seconds = np.array([4000.0, 4000.0, 2500.0]), np.array([2.0, 8.0, 1.0])
    rates = tokens / seconds
    assert run_average_rate(rates, tokens) == pytest.approx(tokens.sum() / seconds.sum())
    assert run_average_rate(rates, tokens) < np.mean(rates), "the slow window lasts longest"
    with pytest.raises(ValueError):
        run_average_rate([100.0, 0.0], [1.0, 1.0])


# The comparison over seeds and tasks
def crossed_scores(rng, seeds: int, tasks: int, seed_sd: float, task_sd: float, noise_sd: float, shift: float = 0.0):
    """Gaussian scores from the model the comparison assumes: a task's difficulty (shared by both methods), the
    method's own per-task deviation, one shift per seed, and noise."""
    difficulty = rng.normal(0, 1, tasks)

    def method(offset: float) -> np.ndarray:
        own = rng.normal(0, task_sd, tasks)
        luck = rng.normal(0, seed_sd, (seeds, 1))
        return offset + difficulty + own + luck + rng.normal(0, noise_sd, (seeds, tasks))

    return method(shift), method(0.0)


def test_without_task_effects_it_is_welchs_t_test_on_the_seed_means():
    """Each seed shifts all its tasks alike and nothing else varies: only the seeds can carry chance."""
    difficulty = np.linspace(0.2, 0.8, 30)
    a_luck, b_luck = np.array([0.05, -0.02, 0.01, 0.04]), np.array([-0.03, 0.0, -0.06])
    a, b = difficulty + 0.03 + a_luck[:, None], difficulty + b_luck[:, None]
    result = seeds_and_tasks_difference(a, b)
    welch = stats.ttest_ind(a.mean(axis=1), b.mean(axis=1), equal_var=False)
    assert result.p_value == pytest.approx(welch.pvalue)
    assert result.degrees_of_freedom == pytest.approx(welch.df)
    low, high = welch.confidence_interval()
    assert (result.low, result.high) == pytest.approx((low, high))
    assert result.seed_share == pytest.approx(1.0)


def test_with_identical_seeds_it_is_the_paired_t_test_over_tasks():
    """Every seed of a method scores every task alike: only the tasks can carry chance."""
    rng = np.random.default_rng(4)
    a_task, b_task = rng.uniform(0, 1, 25), rng.uniform(0, 1, 25)
    result = seeds_and_tasks_difference(np.tile(a_task, (3, 1)), np.tile(b_task, (2, 1)))
    paired = stats.ttest_rel(a_task, b_task)
    assert result.p_value == pytest.approx(paired.pvalue)
    assert result.degrees_of_freedom == pytest.approx(24)
    assert result.seed_share == 0.0


def test_when_nothing_varies_there_is_no_interval():
    result = seeds_and_tasks_difference(np.zeros((3, 10)), np.zeros((2, 10)))
    assert result.estimate == 0 and result.p_value == 1 and result.standard_error == 0
    assert math.isnan(result.low) and math.isnan(result.high)


def residual_mean_square_by_least_squares(runs: np.ndarray) -> float:
    """The noise variance of a seeds x tasks table: the residual of a fit with one term per seed and per task."""
    seeds, tasks = runs.shape
    design = np.zeros((seeds * tasks, seeds + tasks))
    for i in range(seeds):
        for t in range(tasks):
            design[i * tasks + t, i] = design[i * tasks + t, seeds + t] = 1
    fit, _, _, _ = np.linalg.lstsq(design, runs.ravel(), rcond=None)
    return float(np.sum((runs.ravel() - design @ fit) ** 2)) / ((seeds - 1) * (tasks - 1))


def test_variance_and_degrees_of_freedom_by_an_independent_route():
    rng = np.random.default_rng(12)
    a, b = crossed_scores(rng, seeds=4, tasks=15, seed_sd=0.3, task_sd=0.2, noise_sd=0.5, shift=0.1)
    b = b[:3]
    tasks = a.shape[1]
    terms = []
    for runs in (a, b):
        seeds = runs.shape[0]
        noise = residual_mean_square_by_least_squares(runs)
        seed_variance = np.var(runs.mean(axis=1), ddof=1)
        assert seed_variance > noise / tasks, "a clear seed effect in this draw"
        terms += [(seed_variance / seeds, seeds - 1), (-noise / (seeds * tasks), (seeds - 1) * (tasks - 1))]
    differences = a.mean(axis=0) - b.mean(axis=0)
    terms.append((np.var(differences, ddof=1) / tasks, tasks - 1))
    variance = sum(value for value, _ in terms)
    freedom = variance**2 / sum(value**2 / df for value, df in terms)
    result = seeds_and_tasks_difference(a, b)
    assert result.estimate == pytest.approx(a.mean() - b.mean())
    assert result.standard_error == pytest.approx(math.sqrt(variance))
    assert result.degrees_of_freedom == pytest.approx(freedom)
    assert result.p_value == pytest.approx(2 * stats.t.sf(abs(result.estimate) / math.sqrt(variance), freedom))


def test_its_variance_is_the_true_variance_of_the_difference():
    """Over many draws from the model, the estimated variance averages to the variance of the difference itself."""
    rng = np.random.default_rng(5)
    seeds, tasks, seed_sd, task_sd, noise_sd = 4, 40, 0.25, 0.3, 0.6
    truth = 2 * seed_sd**2 / seeds + 2 * task_sd**2 / tasks + 2 * noise_sd**2 / (seeds * tasks)
    draws = [crossed_scores(rng, seeds, tasks, seed_sd, task_sd, noise_sd) for _ in range(1500)]
    results = [seeds_and_tasks_difference(a, b) for a, b in draws]
    assert np.var([r.estimate for r in results]) == pytest.approx(truth, rel=0.1), "the simulation itself"
    assert np.mean([r.standard_error**2 for r in results]) == pytest.approx(truth, rel=0.1)


def test_identical_methods_with_seed_luck_are_called_different_at_the_nominal_rate():
    """Two identical methods, 164 pass/fail tasks, 3 seeds each, every seed shifting its skill on all tasks at once
    (a pass rate's seed-to-seed SD of about 5 points). Comparing tasks only calls them different far too often;
    counting the seeds keeps to about 5%."""
    rng = np.random.default_rng(27)
    studies, seeds, tasks = 400, 3, 164
    difficulty = rng.normal(0, 1.5, (studies, 1, 1, tasks))
    skill = rng.normal(0, 0.3, (studies, 2, seeds, 1))  # on the logit scale
    passed = (rng.random((studies, 2, seeds, tasks)) < 1 / (1 + np.exp(-(difficulty + skill)))).astype(float)
    seed_sd = passed.mean(axis=3).std(axis=2, ddof=1).mean()
    assert 0.035 < seed_sd < 0.07, f"realistic seed effects: {seed_sd:.3f}"
    p_values = np.array([seeds_and_tasks_difference(a, b).p_value for a, b in passed])
    assert 0.02 <= np.mean(p_values < 0.05) <= 0.08
    differences = passed[:, 0].mean(axis=1) - passed[:, 1].mean(axis=1)  # per task, over seeds
    tasks_only = stats.ttest_1samp(differences, 0, axis=1).pvalue
    assert np.mean(tasks_only < 0.05) > 0.15, "the simulation has the seed luck that fools a tasks-only test"
