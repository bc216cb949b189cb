"""How each method's learning rate was chosen, for the report: the sweep's dev loss per method and rate, a warning
where the chosen rate sits at the edge of its grid, and the expected best dev loss against the number of trials
(Dodge et al. 2019). Pure: sweep trials in, rows and markdown out (and their CSV and figure)."""

import math
from dataclasses import dataclass
from pathlib import Path

from shared.study import statistics as stats
from shared.study.figures import expected_best_figure
from shared.study.verdict import write_csv


@dataclass(frozen=True)
class Trial:
    """One sweep child: its best dev loss, inf unless it finished; outcome finished, failed or unfinished."""

    method: str
    learning_rate: float
    seed: int
    loss: float
    outcome: str


def learning_rate_rows(trials: list[Trial], chosen: dict[str, float]) -> list[dict]:
    """Per method and rate: the mean best dev loss over the sweep seeds that finished, and how many did not."""
    rows = []
    for method, rate in sorted({(t.method, t.learning_rate) for t in trials}):
        mine = [t for t in trials if (t.method, t.learning_rate) == (method, rate)]
        finished = [t.loss for t in mine if t.outcome == "finished"]
        rows.append(
            {
                "method": method, "learning_rate": f"{rate:g}", "sweep_seeds": len(mine),
                "mean_best_dev_loss": sum(finished) / len(finished) if finished else None,
                "failed": sum(t.outcome == "failed" for t in mine),
                "unfinished": sum(t.outcome == "unfinished" for t in mine), "chosen": chosen.get(method) == rate,
            }
        )  # fmt: skip
    return rows


def edge_warnings(trials: list[Trial], chosen: dict[str, float]) -> list[str]:
    """A line for each method whose chosen rate is the lowest or highest of its grid: the best may lie beyond."""
    lines = []
    for method, rate in sorted(chosen.items()):
        grid = sorted({t.learning_rate for t in trials if t.method == method})
        if len(grid) < 2:
            lines.append(f"**{method}**: its grid holds one rate ({rate:g}): nothing was tuned.")
        elif rate in (grid[0], grid[-1]):
            side, way = ("lowest", "below") if rate == grid[0] else ("highest", "above")
            rates = ", ".join(f"{r:g}" for r in grid)
            lines.append(
                f"**{method}**: the chosen rate {rate:g} is the {side} of its grid ({rates}): the best rate may lie "
                f"{way} it. Widen the grid {way} {rate:g} and rerun the sweep."
            )
    return lines


def expected_best_rows(trials: list[Trial]) -> list[dict]:
    """Each method's expected best dev loss of n trials drawn from its sweep, n = 1 .. its trials. A trial that
    did not finish counts as the method's worst finished one: an infinite loss would make every expectation
    infinite (n draws can all be failures). Methods with no finished trial have no curve."""
    rows = []
    for method in sorted({t.method for t in trials}):
        losses = [t.loss for t in trials if t.method == method]
        finite = [loss for loss in losses if math.isfinite(loss)]
        if not finite:
            continue
        stand_ins = len(losses) - len(finite)
        losses = [loss if math.isfinite(loss) else max(finite) for loss in losses]
        for n, value in enumerate(stats.expected_best_curve(losses), start=1):
            rows.append(
                {
                    "method": method,
                    "trials": n,
                    "expected_best_dev_loss": value,
                    "unfinished_counted_as_worst": stand_ins,
                }
            )
    return rows


def tuning_section(trials: list[Trial], chosen: dict[str, float], folder: Path) -> list[str]:
    """The report's section on tuning; writes learning_rates.csv, expected_best.csv and expected_best.png."""
    rates, curves = learning_rate_rows(trials, chosen), expected_best_rows(trials)
    write_csv(folder / "learning_rates.csv", rates)
    write_csv(folder / "expected_best.csv", curves)
    lines = [
        "## Tuning: how each learning rate was chosen",
        "",
        "| method | learning rate | mean best dev loss | sweep seeds | failed | unfinished | chosen |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for row in rates:
        loss = "-" if row["mean_best_dev_loss"] is None else f"{row['mean_best_dev_loss']:.4g}"
        lines.append(
            f"| {row['method']} | {row['learning_rate']} | {loss} | {row['sweep_seeds']} | {row['failed'] or ''} | "
            f"{row['unfinished'] or ''} | {'**chosen**' if row['chosen'] else ''} |"
        )
    lines += [
        "",
        "The mean is over the sweep seeds that finished; the failed and unfinished ones are counted beside it. "
        "Each method's rate is chosen on dev loss only, never on the benchmark (numbers: `learning_rates.csv`).",
        "",
        *(f"- {line}" for line in edge_warnings(trials, chosen)),
    ]
    if not curves:
        return [*lines, ""]
    expected_best_figure(folder / "expected_best.png", curves)
    stand_ins = {row["method"]: row["unfinished_counted_as_worst"] for row in curves if row["trials"] == 1}
    replaced = [f"{method} {count}" for method, count in stand_ins.items() if count]
    lines += [
        "",
        "![expected best dev loss](expected_best.png) (numbers: `expected_best.csv`)",
        "",
        "The curve is the expected best dev loss of n trials drawn at random, with replacement, from the sweep's "
        "own results (Dodge et al., 2019): at 1 trial the mean of the grid, at many its best. The sweep is a fixed "
        "grid, not a random search, so the curve says how much a method's result hangs on trying enough of these "
        "rates: a method that is only good at many trials wins by tuning, not by the method. It cannot say what "
        "rates outside the grid would give (the warnings above do), and its fall at the last trial is no promise "
        "of a gain: drawing with replacement, it falls there whenever the best value is unique.",
    ]
    if replaced:
        lines += [
            "",
            f"Trials that failed or did not finish count as their method's worst finished trial ({', '.join(replaced)}"
            "): the curve then flatters the method, since a failure is worse than any finished trial.",
        ]
    return [*lines, ""]
