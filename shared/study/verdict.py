"""The verdict on methods scored over seeds and tasks, from a ScoreTable: each method's score and costs with
intervals, every pair compared with seeds and tasks both counted as chance, Holm across the pairs, the power of
each test at the level Holm applies, P(A > B) on a fresh seed where enough seeds allow it, and the cost-quality
front. Written as summary.csv, pairs.csv, per_task.csv, pareto.csv and pareto.png (where there are costs) and
report.md. A study's report and `study.py verdict` both go through here.
"""

import csv
import io
import math
import re
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

from shared.study import statistics as stats
from shared.study.figures import pareto_figure
from shared.study.score_table import ScoreTable

ALPHA, POWER = 0.05, 0.8
NOISY_SPREAD = 1.5  # runs of one method with the same settings differing more than this factor: too noisy to rank
SEEDS_AND_TASKS, TASKS_ONLY = "seeds and tasks", "tasks only (one seed: these trained models, not the methods)"


@dataclass
class Verdict:
    summary: list[dict]
    pairs: list[dict]
    pareto: list[dict]
    pareto_costs: list[str]
    noisy: list[str]  # one line per cost too noisy to rank methods by


def judge(table: ScoreTable) -> Verdict:
    summary = summary_rows(table)
    costs = [cost for cost in table.pareto_costs if any(row[f"{cost}_geometric_mean"] is not None for row in summary)]
    return Verdict(summary, pair_rows(table), pareto_rows(summary, costs, table.score_name), costs, noisy_costs(table))


def write_verdict(table: ScoreTable, folder: Path, title: str, intro: list[str], sections: list[str]) -> Path:
    """Write the verdict's files into `folder`, report.md holding the title, the `intro` lines, the verdict and
    the caller's further `sections` (markdown lines); report.md's path."""
    folder.mkdir(parents=True, exist_ok=True)
    verdict = judge(table)
    write_csv(folder / "summary.csv", verdict.summary)
    write_csv(folder / "pairs.csv", verdict.pairs)
    write_csv(folder / "per_task.csv", per_task_rows(table))
    if verdict.pareto_costs:
        write_csv(folder / "pareto.csv", verdict.pareto)
        pareto_figure(folder / "pareto.png", verdict.pareto, verdict.pareto_costs, table.score_name)
    lines = [f"# {title}", "", *intro, "", *markdown(table, verdict), *sections]
    (folder / "report.md").write_text("\n".join(lines).rstrip() + "\n")
    return folder / "report.md"


# tables
def summary_rows(table: ScoreTable) -> list[dict]:
    rows = []
    for method in table.methods:
        row = {"method": method, **table.method_columns.get(method, {}), "seeds": len(table.scores[method])}
        row.update(_columns(table.score_name, stats.mean_interval(table.seed_scores(method))))
        for name in table.number_names:
            values, positive = table.run_numbers(method, name), name in table.positive
            summarise = stats.cost_interval if positive else stats.mean_interval
            interval = None if values is None else summarise(values)
            row.update(_columns(name, interval, "geometric_mean" if positive else "mean"))
        rows.append(row)
    return rows


def _columns(name: str, interval: stats.Interval | None, center: str = "mean") -> dict:
    if interval is None:
        return {f"{name}_{center}": None, f"{name}_low": None, f"{name}_high": None, f"{name}_interval": "missing"}
    return {
        f"{name}_{center}": interval.estimate,
        f"{name}_low": interval.low,
        f"{name}_high": interval.high,
        f"{name}_interval": interval.method,
    }


def pair_rows(table: ScoreTable) -> list[dict]:
    pairs = list(combinations(table.methods, 2))
    level = ALPHA / max(len(pairs), 1)  # Holm's first step: the smallest p-value is tested at alpha / pairs
    rows = [_pair_row(table, a, b, level) for a, b in pairs]
    for row, adjusted in zip(rows, stats.holm([row["p_value"] for row in rows]), strict=True):
        row["p_value_holm_adjusted"] = adjusted
        row["significant_after_holm"] = adjusted <= ALPHA
    return rows


def _pair_row(table: ScoreTable, a: str, b: str, level: float) -> dict:
    a_runs, b_runs = table.run_scores(a), table.run_scores(b)
    row = {"a": a, "b": b, "tasks": len(table.tasks), "seeds_a": len(a_runs), "seeds_b": len(b_runs)}
    if min(len(a_runs), len(b_runs)) >= 2:
        row |= _over_seeds_and_tasks(a_runs, b_runs, level)
    else:
        row |= _over_tasks(a_runs, b_runs, level)
    row["p_value_holm_adjusted"], row["significant_after_holm"] = None, None  # set once every pair has its p
    return row | _fresh_seed(table.seed_scores(a), table.seed_scores(b))


def _over_seeds_and_tasks(a_runs: list[list[float]], b_runs: list[list[float]], level: float) -> dict:
    found = stats.seeds_and_tasks_difference(a_runs, b_runs)
    row = {"difference": found.estimate, "difference_low": None, "difference_high": None}
    row |= {"replicates": SEEDS_AND_TASKS, "test": "t over seeds and tasks", "degrees_of_freedom": None}
    row |= {"seed_variance_share": None, "p_value": found.p_value, "detectable_difference": None}
    if found.standard_error > 0:  # else nothing varied: no interval, no power to speak of
        row |= {"difference_low": found.low, "difference_high": found.high, "seed_variance_share": found.seed_share}
        row["degrees_of_freedom"] = found.degrees_of_freedom
        row["detectable_difference"] = stats.t_detectable_difference(
            found.standard_error, found.degrees_of_freedom, level, POWER
        )
    return row


def _over_tasks(a_runs: list[list[float]], b_runs: list[list[float]], level: float) -> dict:
    """One seed of a method: the two trained models compared task by task, which is all one seed allows."""
    x, y = _task_means(a_runs), _task_means(b_runs)
    tasks = len(x)
    spread = _standard_deviation([u - v for u, v in zip(x, y, strict=True)])
    difference = stats.paired_bootstrap_difference(x, y)
    row = {"difference": difference.estimate, "difference_low": None, "difference_high": None}
    row |= {"replicates": TASKS_ONLY, "degrees_of_freedom": None, "seed_variance_share": None}
    if spread > 0:
        row |= {"difference_low": difference.low, "difference_high": difference.high}
    if len(a_runs) == len(b_runs) == 1 and all(v in (0.0, 1.0) for v in x + y):
        discordant = sum(u != v for u, v in zip(x, y, strict=True)) / tasks
        return row | {
            "test": "exact McNemar",
            "p_value": stats.mcnemar_exact([v == 1.0 for v in x], [v == 1.0 for v in y]),
            "detectable_difference": stats.mcnemar_detectable_difference(tasks, discordant, level, POWER),
        }
    error = spread / math.sqrt(tasks)
    return row | {
        "test": "paired permutation",
        "p_value": stats.paired_permutation_test(x, y),
        "detectable_difference": stats.t_detectable_difference(error, tasks - 1, level, POWER) if spread else None,
    }


def _fresh_seed(a_seeds: list[float], b_seeds: list[float]) -> dict:
    if min(len(a_seeds), len(b_seeds)) < stats.FRESH_SEED_MIN_SEEDS:
        return {
            "p_a_beats_b": None, "p_a_beats_b_low": None, "p_a_beats_b_high": None,
            "p_a_beats_b_note": f"needs >= {stats.FRESH_SEED_MIN_SEEDS} seeds of each method",
        }  # fmt: skip
    beats = stats.probability_of_improvement(a_seeds, b_seeds)
    return {"p_a_beats_b": beats.estimate, "p_a_beats_b_low": beats.low, "p_a_beats_b_high": beats.high,
            "p_a_beats_b_note": ""}  # fmt: skip


def _task_means(runs: list[list[float]]) -> list[float]:
    return [sum(column) / len(column) for column in zip(*runs, strict=True)]


def _standard_deviation(values: list[float]) -> float:
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / max(len(values) - 1, 1))


def pareto_rows(summary: list[dict], costs: list[str], score: str) -> list[dict]:
    """One row per method: its score and every cost the front is computed on; a method missing one is off it."""
    if not costs:
        return []
    points = [[row[f"{cost}_geometric_mean"] for cost in costs] for row in summary]
    optimal = stats.pareto_front(points, [row[f"{score}_mean"] for row in summary])
    rows = []
    for row, flag in zip(summary, optimal, strict=True):
        pareto = {"method": row["method"], "pareto_optimal": flag}
        pareto["missing"] = " ".join(cost for cost in costs if row[f"{cost}_geometric_mean"] is None)
        for name, center in ((score, "mean"), *((cost, "geometric_mean") for cost in costs)):
            pareto |= {f"{name}_{center}": row[f"{name}_{center}"], f"{name}_low": row[f"{name}_low"]}
            pareto[f"{name}_high"] = row[f"{name}_high"]
        rows.append(pareto)
    return rows


def noisy_costs(table: ScoreTable) -> list[str]:
    """A line for each cost or speed whose runs of one method, with the same settings, differ by more than
    NOISY_SPREAD: on that machine it measures the moment as much as the method."""
    lines = []
    for name in table.number_names:
        if name not in table.positive:
            continue
        spreads = []
        for method in table.methods:
            values = table.run_numbers(method, name) or []
            if len(values) > 1 and max(values) > NOISY_SPREAD * min(values):
                spreads.append(f"{method} {_number(min(values))} to {_number(max(values))}")
        if spreads:
            lines.append(
                f"**{name} is too noisy to compare methods by**: runs with the same settings differed by more than "
                f"{NOISY_SPREAD:g}x ({'; '.join(spreads)}). Measure it on a quiet, dedicated machine."
            )
    return lines


def per_task_rows(table: ScoreTable) -> list[dict]:
    means = {method: _task_means(table.run_scores(method)) for method in table.methods}
    return [{"task_id": task, **{m: means[m][i] for m in table.methods}} for i, task in enumerate(table.tasks)]


def write_csv(path: Path, rows: list[dict]) -> None:
    if not rows:
        path.write_text("")
        return
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    path.write_text(buffer.getvalue())


# the text
def markdown(table: ScoreTable, verdict: Verdict) -> list[str]:
    score, tasks = table.score_name, table.tasks
    lines = [f"Scored on {len(tasks)} tasks ({table.tasks_note}): {describe_tasks(tasks)}.", ""]
    lines += _per_method(table, verdict)
    lines += _pairs(table, verdict)
    if verdict.pareto_costs:
        lines += _pareto(verdict, score)
    return lines


def _per_method(table: ScoreTable, verdict: Verdict) -> list[str]:
    extra = list(dict.fromkeys(column for columns in table.method_columns.values() for column in columns))
    names = (table.score_name, *table.number_names)
    lines = ["## Per method", ""]
    header = ["method", *(column.replace("_", " ") for column in extra), "seeds", *names]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|---|" + "---:|" * (len(extra) + 1 + len(names)))
    for row in verdict.summary:
        cells = [row["method"], *(str(row.get(c, "")) for c in extra), str(row["seeds"])]
        cells += [_cell(row, name, "geometric_mean" if name in table.positive else "mean") for name in names]
        lines.append("| " + " | ".join(cells) + " |")
    means = [name for name in names if name not in table.positive]
    lines += [
        "",
        f"{', '.join(f'`{name}`' for name in means)}: the mean over seeds with a 95% Student's t interval over the "
        "seeds (bracketed), on these tasks; one seed gives no interval. With a handful of seeds a bootstrap "
        "interval could not reach past the values seen and would be too narrow.",
    ]
    positive = [name for name in table.number_names if name in table.positive]
    if positive:
        lines += [
            "",
            f"{', '.join(f'`{name}`' for name in positive)}: positive and skewed, so the geometric mean over runs, "
            "with a 95% t interval on the log scale from 3 runs, the observed range at 2, the value alone at 1. A `-` "
            "is a number some run did not record: missing, not zero.",
        ]
    for line in verdict.noisy:
        lines += ["", line]
    return [*lines, ""]


def _pairs(table: ScoreTable, verdict: Verdict) -> list[str]:
    pairs = verdict.pairs
    lines = [
        "## Paired comparisons",
        "",
        "| A | B | seeds | A - B [95% CI] | test | p | p (Holm) | detectable | P(A > B) on a fresh seed [95% CI] |",
        "|---|---|---:|---|---|---:|---:|---:|---|",
    ]
    for row in pairs:
        fresh = row["p_a_beats_b_note"] or (
            f"{_number(row['p_a_beats_b'], 3)} [{_number(row['p_a_beats_b_low'], 3)}, "
            f"{_number(row['p_a_beats_b_high'], 3)}]"
        )
        lines.append(
            f"| {row['a']} | {row['b']} | {row['seeds_a']}, {row['seeds_b']} | {_difference(row)} | {row['test']} | "
            f"{_number(row['p_value'], 3)} | {_number(row['p_value_holm_adjusted'], 3)}"
            f"{' *' if row['significant_after_holm'] else ''} | {_number(row['detectable_difference'], 3)} | {fresh} |"
        )
    level = ALPHA / max(len(pairs), 1)
    lines += [
        "",
        "A - B is the difference of the methods' mean scores. **Chance enters twice**: through the seeds (one "
        "seed's model is luckier than another on every task at once) and through the tasks (another set of tasks "
        "from the same source would rank the methods a little differently). The interval and the p-value count "
        "both: the spread of each method's per-seed scores, less what task-level noise explains, gives the seeds' "
        "part, and the spread of the per-task differences the tasks' part; a t distribution with the degrees of "
        "freedom these leave (few with few seeds) gives the interval and p (a mixed model with a seed and a task "
        "effect; see docs/study.md). Pairs with one seed of a method cannot measure seed luck: they are compared "
        "task by task only (the exact McNemar test on pass/fail tasks, else a paired permutation test), which "
        "tests those two trained models, not the methods. "
        + (f"p (Holm) is adjusted across the {len(pairs)} pairs" if len(pairs) > 1 else "With one pair, Holm leaves p")
        + f"; `*` marks a difference significant at {ALPHA:g} after it.",
        "",
        f"P(A > B) is the chance that A scores above B on a fresh seed (per-seed scores, ties half; Bouthillier et "
        f"al., 2021), with a score interval (Newcombe, 2006). It is printed from {stats.FRESH_SEED_MIN_SEEDS} seeds "
        "of each method, where its interval covers the truth close to 95% of the time (checked by simulation); "
        "with fewer, the table says what it needs instead of printing a number that would read as certain.",
        "",
        *_power(table, verdict, level),
    ]
    return [*lines, ""]


def _difference(row: dict) -> str:
    if row["difference_low"] is None:
        return f"{_number(row['difference'])} (no spread)"
    return f"{_number(row['difference'])} [{_number(row['difference_low'])}, {_number(row['difference_high'])}]"


def _power(table: ScoreTable, verdict: Verdict, level: float) -> list[str]:
    tasks = len(table.tasks)
    base = sum(row[f"{table.score_name}_mean"] for row in verdict.summary) / len(verdict.summary)
    error = stats.standard_error_of_rate(min(max(base, 0.01), 0.99), tasks)
    holm = f"Holm tests the smallest p-value at {ALPHA:g} / {len(verdict.pairs)} = {level:.3g}"
    text = (
        f"**Power**: {holm if len(verdict.pairs) > 1 else f'one pair is tested at {ALPHA:g}'}, so each "
        f"pair's `detectable` is the smallest true difference its test finds at that level with "
        f"{POWER:.0%} power, at the variance this study saw (for the t test, (t(1 - level/2) + t({POWER:g})) x "
        f"its standard error). At {tasks} tasks and a score near {base:.2f}, one model's score has a standard "
        f"error of {error:.3f} from the tasks alone."
    )
    if any(row["test"] == "exact McNemar" for row in verdict.pairs):
        flips = stats.mcnemar_fewest_flips(level)
        floor = f"nothing under {flips / tasks:.3f} can be significant" if flips <= tasks else "nothing can be"
        text += (
            f" Under the exact McNemar test, k tasks all flipping one way give p = 2 x 0.5^k: {flips} tasks are the "
            f"fewest that reach {level:.3g}, so at {tasks} tasks {floor}."
        )
    text += ' A difference below `detectable` marked "not significant" may still be real.'
    if any(row["difference_low"] is None for row in verdict.pairs):
        text += (
            ' "No spread" marks a pair whose runs did not vary at all (every run scored alike on every task, all '
            "zeros say): with nothing to measure chance by there is no interval and no `detectable`, and no "
            "certainty either; more tasks, or a benchmark these models can pass some of, are needed."
        )
    return [text]


def _pareto(verdict: Verdict, score: str) -> list[str]:
    costs = verdict.pareto_costs
    lines = [
        "## Cost vs quality",
        "",
        "| method | " + " | ".join(costs) + f" | {score} | Pareto-optimal |",
        "|---|" + "---:|" * (len(costs) + 1) + "---|",
    ]
    for row in verdict.pareto:
        flag = {True: "yes", False: "no", None: f"missing {row['missing']}"}[row["pareto_optimal"]]
        cells = [_number(row[f"{cost}_geometric_mean"]) for cost in costs]
        lines.append(f"| {row['method']} | {' | '.join(cells)} | {_number(row[f'{score}_mean'])} | {flag} |")
    lines += [
        "",
        f"The front is computed on {', '.join(costs)} (lower is better) and {score} (higher is better): a method is "
        "on it when no other is at least as good on every one of them and better on one. A method missing a cost "
        "cannot be compared: it is neither on the front nor pushes another off it. Each panel of the figure draws "
        "one of these costs against the score (geometric mean and mean, 95% intervals), the front's methods as "
        "stars in every panel.",
        "",
        "![cost vs quality](pareto.png) (numbers: `pareto.csv`)",
        "",
    ]
    return lines


def describe_tasks(tasks: list[str], most: int = 400) -> str:
    """Task ids in a few words: numbered ids with a common stem as ranges (HumanEval/0-19), the rest listed."""
    numbered: dict[str, list[int]] = {}
    others = []
    for task in tasks:
        match = re.fullmatch(r"(.*?)(\d+)", task)
        if match and not (len(match[2]) > 1 and match[2].startswith("0")):
            numbered.setdefault(match[1], []).append(int(match[2]))
        else:
            others.append(task)
    parts = [f"{stem}{span}" for stem, numbers in numbered.items() for span in _spans(sorted(numbers))]
    parts += sorted(others)
    text = ", ".join(parts)
    return text if len(text) <= most else text[:most].rsplit(", ", 1)[0] + ", ... (all of them in per_task.csv)"


def _spans(numbers: list[int]) -> list[str]:
    spans, start = [], numbers[0]
    for previous, current in zip(numbers, [*numbers[1:], None], strict=True):
        if current != previous + 1:
            spans.append(str(start) if start == previous else f"{start}-{previous}")
            start = current
    return spans


def _number(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}g}"


def _cell(row: dict, name: str, center: str) -> str:
    estimate, low, high = row[f"{name}_{center}"], row[f"{name}_low"], row[f"{name}_high"]
    if estimate is None:
        return "-"
    if low == high:
        return _number(estimate)
    return f"{_number(estimate)} [{_number(low)}, {_number(high)}]"
