"""Statistics for comparing fine-tuning methods trained over several seeds and scored per benchmark task.

Pure functions: sequences of numbers in, numbers or small frozen dataclasses out. Every random step takes a `seed`
(default 0) for a numpy Generator, so the same inputs always give the same report.

What is computed, and where the choice comes from:
- `mean_interval`: a per-seed metric's mean with a Student's t interval over seeds; `cost_interval`: a positive,
  skewed per-run cost (runtime, energy, memory) with an interval that stays positive.
- `seeds_and_tasks_difference`: two methods, each trained over several seeds and scored on the same tasks,
  compared with both sources of chance: which seeds were drawn and which tasks were drawn (a crossed random-effects
  model, its variance components estimated by the method of moments, a t reference with Satterthwaite's degrees
  of freedom).
- `paired_bootstrap_difference`, `paired_permutation_test`, `mcnemar_exact`: two fixed trained models (one seed
  each) compared task by task: a percentile bootstrap interval, a sign-flip permutation p-value, the exact
  (binomial) McNemar test for pass/fail outcomes.
- `holm`: Holm's step-down adjustment across several comparisons (Holm 1979, "A simple sequentially rejective
  multiple test procedure").
- `probability_of_improvement`: P(A > B) on a fresh seed, as Bouthillier et al. 2021 ("Accounting for variance in
  machine learning benchmarks") recommend, with a score interval (Newcombe 2006).
- `t_detectable_difference`, `mcnemar_detectable_difference`, `mcnemar_power`, `mcnemar_fewest_flips`,
  `standard_error_of_rate`: how small a difference a comparison can resolve, for the test it actually runs.
- `expected_best`, `expected_best_curve`: the expected best score of n tuning trials (Dodge et al. 2019, "Show Your
  Work: Improved Reporting of Experimental Results").
- `pareto_front`: the methods no other method beats on every cost and on quality.
- `run_average_rate`: a run's average throughput from the rates of its logging windows.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import optimize, stats

# The fewest seeds of each method from which the interval of `probability_of_improvement` covers the truth at close
# to its nominal rate: 93-98% of 95% at 4 and 5 seeds, for true values from 0.5 to 0.99 (normal per-seed scores,
# 2,000 simulated studies each); at 3 seeds it falls to 90%. tests/test_statistics.py checks it by simulation.
FRESH_SEED_MIN_SEEDS = 4


@dataclass(frozen=True)
class Interval:
    """A point estimate with a two-sided interval and the name of the method that gave the interval."""

    estimate: float
    low: float
    high: float
    method: str


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """The mean of a per-seed metric with a Student's t interval over the seeds.

    Not a bootstrap: with 2 to ~10 seeds a percentile bootstrap interval is too narrow, since it can never reach
    beyond the observed range of the seeds. One seed gives no spread to estimate: the interval is the value itself,
    with method "single seed".
    """
    x = _values(values, "values")
    _check_confidence(confidence)
    mean = float(x.mean())
    if x.size == 1:
        return Interval(mean, mean, mean, "single seed")
    half_width = stats.t.ppf((1 + confidence) / 2, x.size - 1) * x.std(ddof=1) / np.sqrt(x.size)
    return Interval(mean, float(mean - half_width), float(mean + half_width), "t")


def cost_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """The typical value of a positive, skewed per-run cost (runtime, energy, memory, throughput): its geometric mean.

    From 3 runs, a Student's t interval on the logarithms, taken back: it stays positive and is wider above than
    below, as such costs are. With 2 runs a t interval is meaningless (its factor is 12.7): the observed range. One
    run gives the value alone.
    """
    x = _values(values, "values")
    _check_confidence(confidence)
    if np.any(x <= 0):
        raise ValueError(f"a cost must be positive, got {list(values)}")
    if x.size == 1:
        return Interval(float(x[0]), float(x[0]), float(x[0]), "single run")
    logs = np.log(x)
    center = float(np.clip(np.exp(logs.mean()), x.min(), x.max()))  # equal values: that value, not its rounding
    if x.size == 2 or x.min() == x.max():  # equal runs: their value, with no rounding around it
        return Interval(center, float(x.min()), float(x.max()), "observed range" if x.size == 2 else "t on logs")
    half_width = stats.t.ppf((1 + confidence) / 2, x.size - 1) * logs.std(ddof=1) / np.sqrt(x.size)
    low, high = np.exp(logs.mean() - half_width), np.exp(logs.mean() + half_width)
    return Interval(center, float(min(low, center)), float(max(high, center)), "t on logs")


@dataclass(frozen=True)
class Comparison:
    """A difference between two methods with its interval and two-sided p-value, from a t reference."""

    estimate: float
    low: float
    high: float
    p_value: float
    standard_error: float
    degrees_of_freedom: float
    seed_share: float  # the share of the difference's variance that comes from the seeds


def seeds_and_tasks_difference(
    a_runs: Sequence[Sequence[float]], b_runs: Sequence[Sequence[float]], confidence: float = 0.95
) -> Comparison:
    """Mean score of A minus mean score of B, with seeds and tasks both random. Each method's runs are one row per
    seed, one column per task, the same tasks in the same order for both; at least 2 seeds each and 2 tasks.

    The model: a run's score on a task is the method's mean, plus the task's difficulty for that method, plus the
    seed's luck (one shift for all of that seed's tasks), plus noise. The variance of the difference of means is

        seed_A / n_A + seed_B / n_B + var(per-task differences) / T

    where seed_m, the variance of a seed's shift, is the variance of that method's per-seed means less the part
    its noise explains (the residual mean square of the seeds x tasks table over T), set to 0 where negative; and
    the per-task differences (of the means over seeds) carry both the tasks' part and the noise. The reference is
    a t distribution with Satterthwaite's degrees of freedom, which with few seeds are few: the interval widens.
    Where nothing varies at all (no seed, task or noise spread), there is no interval: its bounds are nan.
    """
    a, b = _run_matrix(a_runs, "a_runs"), _run_matrix(b_runs, "b_runs")
    _check_confidence(confidence)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"a_runs has {a.shape[1]} tasks and b_runs {b.shape[1]}: they must be the same tasks")
    if min(a.shape[0], b.shape[0]) < 2 or a.shape[1] < 2:
        raise ValueError(f"need 2 or more seeds of each method and 2 or more tasks, got {a.shape} and {b.shape}")
    tasks = a.shape[1]
    task_differences = a.mean(axis=0) - b.mean(axis=0)
    estimate = float(task_differences.mean())
    seed_terms = [*_seed_terms(a), *_seed_terms(b)]
    task_term = (float(task_differences.var(ddof=1)) / tasks, tasks - 1)
    variance = sum(value for value, _ in (*seed_terms, task_term))
    if variance <= 0:  # nothing varies (every run scored 0 everywhere, say): no spread to measure chance by
        return Comparison(estimate, math.nan, math.nan, 1.0 if estimate == 0 else 0.0, 0.0, math.nan, 0.0)
    freedom = variance**2 / sum(value**2 / df for value, df in (*seed_terms, task_term))
    error = math.sqrt(variance)
    half_width = float(stats.t.ppf((1 + confidence) / 2, freedom)) * error
    p = float(2 * stats.t.sf(abs(estimate) / error, freedom))
    seed_share = float(1 - task_term[0] / variance)
    return Comparison(estimate, estimate - half_width, estimate + half_width, p, error, float(freedom), seed_share)


def _seed_terms(runs: np.ndarray) -> list[tuple[float, float]]:
    """A method's seed part of the variance of its mean, as (value, degrees of freedom) terms; none where its
    estimate of the seeds' variance is not positive."""
    seeds, tasks = runs.shape
    seed_means_variance = float(runs.mean(axis=1).var(ddof=1))
    residual = runs - runs.mean(axis=1, keepdims=True) - runs.mean(axis=0, keepdims=True) + runs.mean()
    noise = float(np.sum(residual**2)) / ((seeds - 1) * (tasks - 1))
    if seed_means_variance - noise / tasks <= 0:
        return []
    return [(seed_means_variance / seeds, seeds - 1), (-noise / (seeds * tasks), (seeds - 1) * (tasks - 1))]


def paired_bootstrap_difference(
    a: Sequence[float], b: Sequence[float], resamples: int = 10000, confidence: float = 0.95, seed: int = 0
) -> Interval:
    """Mean per-task difference a - b with a percentile bootstrap interval, resampling tasks with their pairs.

    a and b hold one score per task (the mean over seeds of that task's score), same tasks in the same order. The
    tasks are the unit resampled: with a benchmark's ~100+ tasks the percentile interval is adequate.
    """
    differences = _paired_differences(a, b)
    _check_confidence(confidence)
    rng = np.random.default_rng(seed)
    tasks = rng.integers(0, differences.size, size=(resamples, differences.size))
    means = differences[tasks].mean(axis=1)
    low, high = np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2])
    return Interval(float(differences.mean()), float(low), float(high), "paired bootstrap percentile")


def mcnemar_exact(a_pass: Sequence[bool], b_pass: Sequence[bool]) -> float:
    """Two-sided exact McNemar p-value for paired pass/fail outcomes per task; 1.0 without discordant pairs."""
    if len(a_pass) != len(b_pass):
        raise ValueError(f"a_pass has {len(a_pass)} tasks and b_pass {len(b_pass)}: they must be the same tasks")
    a, b = np.asarray(a_pass, dtype=bool), np.asarray(b_pass, dtype=bool)
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(~a & b))
    if only_a + only_b == 0:
        return 1.0
    return float(min(1.0, 2 * stats.binom.cdf(min(only_a, only_b), only_a + only_b, 0.5)))


def paired_permutation_test(a: Sequence[float], b: Sequence[float], resamples: int = 10000, seed: int = 0) -> float:
    """Two-sided p-value for paired per-task scores, by flipping the sign of each task's difference a - b.

    With few tasks (2**n <= resamples) every sign pattern is enumerated and the p-value is exact; otherwise
    `resamples` random patterns are drawn and the observed one is counted in, p = (1 + hits) / (1 + resamples), so
    p is never 0. All differences 0 gives 1.0.
    """
    differences = _paired_differences(a, b)
    if not differences.any():
        return 1.0
    n = differences.size
    if 2**n <= resamples:
        signs = ((np.arange(2**n)[:, None] >> np.arange(n)) & 1) * 2 - 1
        extra = 0  # the enumeration already holds the observed pattern
    else:
        signs = np.random.default_rng(seed).choice([-1, 1], size=(resamples, n))
        extra = 1
    observed = abs(differences.sum())
    permuted = np.abs(signs @ differences)
    # Sums of the same numbers with other signs differ in the last bits, on the scale of the numbers, not of the
    # sum (0.3 - 0.1 - 0.2 is not 0 in floats): a statistic equal to the observed one must count as a hit.
    tolerance = 1e-9 * np.abs(differences).sum()
    hits = int(np.sum(permuted >= observed - tolerance))
    return (hits + extra) / (len(signs) + extra)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the input order (step-down, kept monotone, capped at 1)."""
    p = np.asarray(p_values, dtype=float)
    if np.any((p < 0) | (p > 1)) or np.isnan(p).any():
        raise ValueError(f"p-values must lie in [0, 1], got {list(p_values)}")
    order = np.argsort(p, kind="stable")
    scaled = (p.size - np.arange(p.size)) * p[order]
    adjusted = np.empty_like(p)
    adjusted[order] = np.minimum(1.0, np.maximum.accumulate(scaled))
    return adjusted.tolist()


def probability_of_improvement(
    a_seeds: Sequence[float], b_seeds: Sequence[float], confidence: float = 0.95, higher_is_better: bool = True
) -> Interval:
    """P(A beats B on a fresh seed), from each method's per-seed scores, with a score interval.

    The estimate is the fraction of all pairs (a_i, b_j) where a_i is better, ties counting 1/2 (the Mann-Whitney
    statistic, or AUC), as in Bouthillier et al. 2021. The interval holds every theta for which
    (estimate - theta)^2 <= z^2 V(theta), with V Hanley and McNeil's variance of the AUC taken at theta itself and
    with both sample sizes set to their mean (Newcombe 2006, "Confidence intervals for an effect size measure based
    on the Mann-Whitney statistic. Part 2", method 5). Unlike a bootstrap over seeds, it does not collapse to a
    point when every pair goes one way (or ties). Its coverage is near nominal only from FRESH_SEED_MIN_SEEDS seeds
    of each method.
    """
    a, b = _values(a_seeds, "a_seeds"), _values(b_seeds, "b_seeds")
    _check_confidence(confidence)
    if not higher_is_better:
        a, b = -a, -b
    estimate = float(np.mean((a[:, None] > b[None, :]) + 0.5 * (a[:, None] == b[None, :])))
    z = stats.norm.ppf((1 + confidence) / 2)
    size = (a.size + b.size) / 2

    def outside(theta: float) -> float:
        variance = theta * (1 - theta) * (1 + (size - 1) * ((1 - theta) / (2 - theta) + theta / (1 + theta)))
        return (estimate - theta) ** 2 - z**2 * variance / (a.size * b.size)

    # outside() is negative at the estimate (unless it is 0 or 1) and positive at the far end of [0, 1].
    inside = min(max(estimate, 1e-12), 1 - 1e-12)
    low = 0.0 if outside(0.0) <= 0 else optimize.brentq(outside, 0.0, inside)
    high = 1.0 if outside(1.0) <= 0 else optimize.brentq(outside, inside, 1.0)
    return Interval(estimate, float(low), float(high), "score interval (Newcombe 2006)")


def standard_error_of_rate(rate: float, n_tasks: int) -> float:
    """Standard error of a pass rate measured on n_tasks tasks: sqrt(rate * (1 - rate) / n_tasks)."""
    if not 0 <= rate <= 1 or n_tasks < 1:
        raise ValueError(f"need a rate in [0, 1] and at least one task, got rate={rate}, n_tasks={n_tasks}")
    return float(np.sqrt(rate * (1 - rate) / n_tasks))


def t_detectable_difference(
    standard_error: float, degrees_of_freedom: float, alpha: float, power: float = 0.8
) -> float:
    """The smallest true difference a two-sided t test at level alpha finds with the given power, at this standard
    error: (t_{1-alpha/2} + t_{power}) * SE (the usual approximation to the noncentral t)."""
    _check_level(alpha, power)
    t = stats.t.ppf(1 - alpha / 2, degrees_of_freedom) + stats.t.ppf(power, degrees_of_freedom)
    return float(t * standard_error)


def mcnemar_fewest_flips(alpha: float) -> int:
    """The fewest discordant tasks, all going one way, for which the exact McNemar test reaches alpha: k tasks give
    p = 2 * 0.5^k, so k = ceil(log2(2 / alpha)). No difference under k / n_tasks can ever be significant."""
    _check_level(alpha, 0.5)
    return math.ceil(math.log2(2 / alpha) - 1e-12)


def mcnemar_power(n_tasks: int, discordant_share: float, difference: float, alpha: float) -> float:
    """Exact power of the two-sided exact McNemar test at level alpha on n_tasks tasks, where a share
    `discordant_share` of tasks are passed by one model only and A's pass rate exceeds B's by `difference`.

    The number of discordant tasks N is Binomial(n_tasks, share); given N, those A passes are Binomial(N, q) with
    q = (share + difference) / (2 share); the test rejects when the smaller count k has 2 * P(Bin(N, 1/2) <= k) <=
    alpha.
    """
    if not 0 <= abs(difference) <= discordant_share <= 1 or n_tasks < 1:
        raise ValueError(f"need |difference| <= discordant_share <= 1, got {difference} and {discordant_share}")
    _check_level(alpha, 0.5)
    if discordant_share == 0:
        return 0.0
    discordant = np.arange(n_tasks + 1)
    critical = stats.binom.ppf(alpha / 2, discordant, 0.5)
    critical = np.where(stats.binom.cdf(critical, discordant, 0.5) <= alpha / 2, critical, critical - 1)
    q = (discordant_share + difference) / (2 * discordant_share)
    rejected = stats.binom.cdf(critical, discordant, q) + stats.binom.sf(discordant - critical - 1, discordant, q)
    rejected = np.where(critical >= 0, rejected, 0.0)
    return float(np.dot(stats.binom.pmf(discordant, n_tasks, discordant_share), rejected))


def mcnemar_detectable_difference(
    n_tasks: int, discordant_share: float, alpha: float, power: float = 0.8
) -> float | None:
    """The smallest difference in pass rate the exact McNemar test finds with the given power on n_tasks tasks,
    with the share of discordant tasks seen (or the difference itself, where that is larger: every discordant task
    then goes A's way). None where no difference can be: fewer tasks than `mcnemar_fewest_flips(alpha)`."""
    _check_level(alpha, power)
    if n_tasks < mcnemar_fewest_flips(alpha):
        return None

    def power_at(difference: float) -> float:
        return mcnemar_power(n_tasks, max(discordant_share, difference), difference, alpha)

    # Power rises with the difference, from at most alpha at 0 to 1 at 1 (every task then goes A's way).
    return float(optimize.brentq(lambda d: power_at(d) - power, 0.0, 1.0, xtol=1e-6))


def expected_best(values: Sequence[float], n: int, higher_is_better: bool = False) -> float:
    """Expected best of n trials drawn with replacement from the observed trials (Dodge et al. 2019).

    E[max of n] = sum_i v_(i) * ((i/N)^n - ((i-1)/N)^n) over the values sorted worst to best; for losses
    (higher_is_better False, the default) the best is the minimum. n = 1 gives the mean, large n approaches the
    best. A failed trial (nan, or inf for a loss) counts as the worst outcome; since n draws can all be failures,
    the expectation is then infinite at every n: give failed trials a finite worst score (e.g. the untrained
    model's loss) for a usable curve.
    """
    x = _values(values, "values", allow_nan=True)
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    sign = 1.0 if higher_is_better else -1.0
    ascending = np.sort(np.where(np.isnan(x), -np.inf, sign * x))
    if ascending[0] == -np.inf:  # exact at any n, where the failure's weight (1/N)^n would underflow to 0 * inf
        return float(sign * ascending[0])
    weights = np.diff((np.arange(x.size + 1) / x.size) ** n)
    return float(sign * np.dot(ascending, weights))


def expected_best_curve(values: Sequence[float], higher_is_better: bool = False) -> list[float]:
    """expected_best for every budget n = 1 .. len(values)."""
    return [expected_best(values, n, higher_is_better) for n in range(1, len(values) + 1)]


def pareto_front(
    costs: Sequence[Sequence[float | None]] | Sequence[float | None], qualities: Sequence[float | None]
) -> list[bool | None]:
    """Which points are on the Pareto front: True where no other point is at least as good on every cost axis and
    on quality and strictly better on one. Lower cost and higher quality are better; costs holds one tuple of cost
    axes per point (or one number per point); identical points do not dominate each other.

    A point with a missing axis (None or nan) is None: it cannot be compared, so it is neither on the front nor
    does it push another point off it.
    """
    if len(costs) != len(qualities):
        raise ValueError(f"{len(costs)} costs for {len(qualities)} qualities: need one of each per point")
    if len(qualities) == 0:
        return []
    quality = np.array(qualities, dtype=float)
    cost = np.array(costs, dtype=float).reshape(quality.size, -1)
    lower_is_better = np.column_stack([cost, -quality])
    known = ~np.isnan(lower_is_better).any(axis=1)
    points = lower_is_better[known]
    no_worse = np.all(points[:, None, :] <= points[None, :, :], axis=2)
    better = np.any(points[:, None, :] < points[None, :, :], axis=2)
    dominated = iter(np.any(no_worse & better, axis=0))  # [j, i]: point j dominates point i
    return [not next(dominated) if measured else None for measured in known]


def run_average_rate(rates: Sequence[float], weights: Sequence[float]) -> float:
    """A run's average rate (tokens per second) from the rates of its logging windows, each weighted by what it
    counted (its tokens): total tokens over total seconds, sum(w) / sum(w / rate). The plain mean of the windows'
    rates is not it: a slow window lasts longer and so weighs more in the run's time."""
    r, w = _values(rates, "rates"), _values(weights, "weights")
    if r.size != w.size or np.any(r <= 0) or np.any(w < 0) or w.sum() == 0:
        raise ValueError(f"need one positive rate per non-negative weight, got {list(rates)} and {list(weights)}")
    return float(w.sum() / np.sum(w / r))


def _values(values: Sequence[float], name: str, allow_nan: bool = False) -> np.ndarray:
    x = np.asarray(values, dtype=float).ravel()
    if x.size == 0:
        raise ValueError(f"{name} is empty")
    if not allow_nan and np.isnan(x).any():
        raise ValueError(f"{name} contains nan")
    return x


def _check_level(alpha: float, power: float) -> None:
    if not 0 < alpha < 1 or not 0 < power < 1:
        raise ValueError(f"alpha and power must lie in (0, 1), got {alpha} and {power}")


def _run_matrix(runs: Sequence[Sequence[float]], name: str) -> np.ndarray:
    x = np.asarray(runs, dtype=float)
    if x.ndim != 2 or x.size == 0:
        raise ValueError(f"{name} must be one row of task scores per seed, got shape {x.shape}")
    if np.isnan(x).any():
        raise ValueError(f"{name} contains nan")
    return x


def _check_confidence(confidence: float) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")


def _paired_differences(a: Sequence[float], b: Sequence[float]) -> np.ndarray:
    x, y = _values(a, "a"), _values(b, "b")
    if x.size != y.size:
        raise ValueError(f"a has {x.size} tasks and b {y.size}: paired scores must be the same tasks in the same order")
    return x - y
