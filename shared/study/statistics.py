"""Statistics for comparing fine-tuning methods trained over several seeds and scored per benchmark task.

Pure functions: sequences of numbers in, numbers or small frozen dataclasses out. Every random step takes a `seed`
(default 0) for a numpy Generator, so the same inputs always give the same report.

What is computed, and where the choice comes from:
- `mean_interval`: a per-seed metric's mean with a Student's t interval over seeds.
- `paired_bootstrap_difference`, `paired_permutation_test`: two methods scored on the same tasks, compared task by
  task (a percentile bootstrap interval for the mean difference; a sign-flip permutation p-value).
- `mcnemar_exact`: paired pass/fail outcomes, the exact (binomial) McNemar test.
- `holm`: Holm's step-down adjustment across several comparisons (Holm 1979, "A simple sequentially rejective
  multiple test procedure").
- `probability_of_improvement`: P(A > B) on a fresh seed with a bootstrap interval, as Bouthillier et al. 2021
  ("Accounting for variance in machine learning benchmarks") recommend over comparing means.
- `minimum_detectable_difference`, `standard_error_of_rate`: how small a difference in pass rate a benchmark of
  n tasks can resolve at all.
- `expected_best`, `expected_best_curve`: the expected best score of n tuning trials (Dodge et al. 2019, "Show Your
  Work: Improved Reporting of Experimental Results").
- `pareto_front`: the methods no other method beats on every cost and on quality.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats


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
    a_seeds: Sequence[float],
    b_seeds: Sequence[float],
    resamples: int = 10000,
    confidence: float = 0.95,
    seed: int = 0,
    higher_is_better: bool = True,
) -> Interval:
    """P(A beats B on a fresh seed), with a percentile bootstrap interval over the seeds of A and of B.

    The estimate is the fraction of all pairs (a_i, b_j) where a_i is better, ties counting 1/2 (the Mann-Whitney
    statistic, or AUC), as in Bouthillier et al. 2021. The bootstrap resamples A's seeds and B's seeds independently.
    """
    a, b = _values(a_seeds, "a_seeds"), _values(b_seeds, "b_seeds")
    _check_confidence(confidence)
    if not higher_is_better:
        a, b = -a, -b
    wins = (a[:, None] > b[None, :]) + 0.5 * (a[:, None] == b[None, :])
    # A resample is fully described by how often it draws each seed: the mean win over its pairs is then
    # counts_a @ wins @ counts_b / (n_a * n_b), without building the resampled pairs.
    rng = np.random.default_rng(seed)
    counts_a = rng.multinomial(a.size, np.full(a.size, 1 / a.size), size=resamples)
    counts_b = rng.multinomial(b.size, np.full(b.size, 1 / b.size), size=resamples)
    resampled = np.sum((counts_a @ wins) * counts_b, axis=1) / (a.size * b.size)
    low, high = np.quantile(resampled, [(1 - confidence) / 2, (1 + confidence) / 2])
    return Interval(float(wins.mean()), float(low), float(high), "bootstrap percentile")


def standard_error_of_rate(rate: float, n_tasks: int) -> float:
    """Standard error of a pass rate measured on n_tasks tasks: sqrt(rate * (1 - rate) / n_tasks)."""
    if not 0 <= rate <= 1 or n_tasks < 1:
        raise ValueError(f"need a rate in [0, 1] and at least one task, got rate={rate}, n_tasks={n_tasks}")
    return float(np.sqrt(rate * (1 - rate) / n_tasks))


def minimum_detectable_difference(
    n_tasks: int,
    n_seeds: int,
    base_rate: float,
    alpha: float = 0.05,
    power: float = 0.8,
    seed_variance_share: float = 0.0,
) -> float:
    """The smallest difference in pass rate that two methods compared on n_tasks tasks can detect.

    Normal approximation for two proportions at base_rate: (z_{1-alpha/2} + z_{power}) * sqrt(2) * SE, with SE the
    standard error of one method's rate. Tasks are the unit. Seeds do not add tasks: averaging n_seeds seeds per
    task removes only the seed-to-seed part of a task's variance, which is unknown from the pass rate alone.
    `seed_variance_share` is that part's share of the per-task variance rate * (1 - rate); the variance is scaled by
    (1 - share + share / n_seeds). The default 0 assumes seeds agree on every task, so n_seeds has no effect and the
    answer is an upper bound. Treating the two methods as independent ignores the positive correlation of paired
    outcomes on the same tasks, which makes it an upper bound too: with correlation rho it shrinks by sqrt(1 - rho).
    """
    if n_seeds < 1 or not 0 <= seed_variance_share <= 1:
        raise ValueError(f"need n_seeds >= 1 and a share in [0, 1], got {n_seeds} and {seed_variance_share}")
    if not 0 < alpha < 1 or not 0 < power < 1:
        raise ValueError(f"alpha and power must lie in (0, 1), got {alpha} and {power}")
    seed_factor = 1 - seed_variance_share + seed_variance_share / n_seeds
    standard_error = standard_error_of_rate(base_rate, n_tasks) * np.sqrt(seed_factor)
    z = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)
    return float(z * np.sqrt(2) * standard_error)


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


def pareto_front(costs: Sequence[Sequence[float]] | Sequence[float], qualities: Sequence[float]) -> list[bool]:
    """Which points are on the Pareto front: True where no other point is at least as good on every cost axis and
    on quality and strictly better on one. Lower cost and higher quality are better; costs holds one tuple of cost
    axes per point (or one number per point); identical points do not dominate each other.
    """
    if len(costs) != len(qualities):
        raise ValueError(f"{len(costs)} costs for {len(qualities)} qualities: need one of each per point")
    if len(qualities) == 0:
        return []
    quality = np.asarray(qualities, dtype=float)
    cost = np.asarray(costs, dtype=float).reshape(quality.size, -1)
    lower_is_better = np.column_stack([cost, -quality])
    no_worse = np.all(lower_is_better[:, None, :] <= lower_is_better[None, :, :], axis=2)
    better = np.any(lower_is_better[:, None, :] < lower_is_better[None, :, :], axis=2)
    dominated = np.any(no_worse & better, axis=0)  # [j, i]: point j dominates point i
    return (~dominated).tolist()


def _values(values: Sequence[float], name: str, allow_nan: bool = False) -> np.ndarray:
    x = np.asarray(values, dtype=float).ravel()
    if x.size == 0:
        raise ValueError(f"{name} is empty")
    if not allow_nan and np.isnan(x).any():
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
