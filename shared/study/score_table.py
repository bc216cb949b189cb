"""What a verdict is computed from: every run's score on every task, and optional numbers per run (costs).

A study builds it from MLflow; `read_score_table` reads it from a long CSV table made anywhere (lm-eval outputs,
earlier experiments, a colleague's table): one row per method, seed and task, columns `method, seed, task_id,
score` and any further columns as per-run costs. A table that cannot be compared as it stands is refused with its
row and column.
"""

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import click

REQUIRED_COLUMNS = ("method", "seed", "task_id", "score")

Runs = dict[str, dict[str, dict[str, float]]]  # method -> seed -> name (a task, or a cost) -> number


class ScoreTableError(click.ClickException):
    """A scores table that cannot be compared as it stands."""


@dataclass
class ScoreTable:
    """Per-task scores in [0, 1] of every run (a method and a seed), every run scored on the same tasks.

    `numbers` holds per-run numbers beside the scores (method -> seed -> name -> value; a number a run lacks is
    left out). Those named in `positive` are costs or speeds: positive and skewed, summarised on the log scale;
    `pareto_costs` are the costs the cost-quality front is drawn on (lower is better).
    """

    scores: Runs
    score_name: str = "score"
    numbers: Runs = field(default_factory=dict)
    number_names: tuple[str, ...] = ()
    positive: frozenset[str] = frozenset()
    pareto_costs: tuple[str, ...] = ()
    method_columns: dict[str, dict[str, str]] = field(default_factory=dict)  # method -> column -> value
    tasks_note: str = ""  # which tasks were scored, in words

    @property
    def methods(self) -> list[str]:
        return list(self.scores)

    @property
    def tasks(self) -> list[str]:
        first = next(iter(next(iter(self.scores.values())).values()))
        return list(first)

    def run_scores(self, method: str) -> list[list[float]]:
        """One row per seed of the method, one column per task (in `tasks` order)."""
        return [[seed[task] for task in self.tasks] for seed in self.scores[method].values()]

    def seed_scores(self, method: str) -> list[float]:
        """Each seed's score: the mean of its per-task scores."""
        return [sum(row) / len(row) for row in self.run_scores(method)]

    def run_numbers(self, method: str, name: str) -> list[float] | None:
        """The number `name` of every run of the method; None when a run lacks it (missing means missing)."""
        values = [self.numbers.get(method, {}).get(seed, {}).get(name) for seed in self.scores[method]]
        return None if any(value is None for value in values) else values


def read_score_table(path: Path) -> ScoreTable:
    """The long table at `path` as a ScoreTable; every row checked, and every method scored on the same tasks."""
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        columns = [name.strip() for name in reader.fieldnames or []]
        missing = [name for name in REQUIRED_COLUMNS if name not in columns]
        if missing:
            raise ScoreTableError(f"{path}: no column {', '.join(missing)} (the header has: {', '.join(columns)})")
        costs = tuple(name for name in columns if name not in REQUIRED_COLUMNS)
        scores: Runs = {}
        numbers: Runs = {}
        first_row: dict[tuple[str, str], int] = {}  # (method, task) -> the row that first scored it
        for row_number, raw in enumerate(reader, start=2):  # the header is row 1
            row = {key.strip(): (value or "").strip() for key, value in raw.items() if key is not None}
            where = f"{path}: row {row_number}"
            method, seed, task = (_text(row, name, where) for name in ("method", "seed", "task_id"))
            run = scores.setdefault(method, {}).setdefault(seed, {})
            if task in run:
                raise ScoreTableError(f"{where}, column task_id: {method} seed {seed} scored {task} twice")
            run[task] = _number(row, "score", where, low=0.0, high=1.0)
            first_row.setdefault((method, task), row_number)
            _add_costs(numbers.setdefault(method, {}).setdefault(seed, {}), row, costs, where)
    if not scores:
        raise ScoreTableError(f"{path}: no rows: nothing to compare")
    if len(scores) < 2:
        raise ScoreTableError(f"{path}: one method ({next(iter(scores))}): a verdict compares two or more")
    _check_same_tasks(path, scores, first_row)
    return ScoreTable(
        {method: {seed: dict(sorted(run.items())) for seed, run in seeds.items()} for method, seeds in scores.items()},
        numbers=numbers,
        number_names=costs,
        positive=frozenset(costs),
        pareto_costs=costs,
        tasks_note=f"every task of {path.name}",
    )


def _text(row: dict, column: str, where: str) -> str:
    value = row.get(column, "")
    if not value:
        raise ScoreTableError(f"{where}, column {column}: empty (every row needs a method, a seed and a task_id)")
    return value


def _number(row: dict, column: str, where: str, low: float, high: float = math.inf) -> float:
    text = row.get(column, "")
    try:
        value = float(text)
    except ValueError:
        raise ScoreTableError(f"{where}, column {column}: {text!r} is not a number") from None
    if not low <= value <= high:  # nan fails too
        bounds = f"[{low:g}, {high:g}]" if math.isfinite(high) else f">= {low:g}"
        raise ScoreTableError(f"{where}, column {column}: {text} is outside {bounds}")
    return value


def _add_costs(run: dict[str, float], row: dict, costs: tuple[str, ...], where: str) -> None:
    """A run's costs from one of its rows: a cost is the run's, so every row of the run that gives it agrees."""
    for name in costs:
        if not row.get(name):
            continue  # missing for this row: missing, never 0
        value = _number(row, name, where, low=0.0)
        if value == 0:
            raise ScoreTableError(f"{where}, column {name}: a cost must be positive (leave the cell empty if unknown)")
        if run.setdefault(name, value) != value:
            raise ScoreTableError(f"{where}, column {name}: {value:g}, but the run's other rows say {run[name]:g}")


def _check_same_tasks(path: Path, scores: Runs, first_row: dict[tuple[str, str], int]) -> None:
    """Every run of every method scored on the same tasks; else the first row of a task some run lacks."""
    every = sorted({task for seeds in scores.values() for run in seeds.values() for task in run})
    for method, seeds in scores.items():
        for seed, run in seeds.items():
            for task in every:
                if task in run:
                    continue
                if (method, task) in first_row:
                    row, scored, lacking = first_row[(method, task)], f"another seed of {method}", f"seed {seed}"
                else:
                    other = next(m for m in scores if (m, task) in first_row)
                    row, scored, lacking = first_row[(other, task)], other, method
                raise ScoreTableError(
                    f"{path}: row {row}, column task_id: task {task} is scored for {scored} but not for {lacking}: "
                    "every run must be scored on the same tasks"
                )
