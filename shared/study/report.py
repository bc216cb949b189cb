"""The study's verdict, read back from MLflow: per-method intervals over seeds, paired tests on the benchmark's
tasks, the power of the comparison, expected best dev loss against tuning trials, the cost-quality Pareto front,
failures and contamination, and the record that reproduces the runs.

Everything comes from the children's own metrics and their per-task results (the evaluation's samples.jsonl,
downloaded from each final run); nothing is re-typed. Written to DIR/report/ and logged to the parent run.
"""

import csv
import io
import json
import logging
import math
import tempfile
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

from mlflow import MlflowClient

from shared.study import statistics as stats
from shared.study.children import EVAL_OUTCOME_TAG, OUTCOME_TAG, best_dev_loss
from shared.study.driver import StudyError, child_runs, find_parent
from shared.track.provenance import PROVENANCE_PARAMS

log = logging.getLogger(__name__)

SCORES = {
    "humaneval": "pass_at_1",
    "livecodebench": "livecodebench_pass_at_1",
    "exact-match": "exact_match",
    "paraphrase": "paraphrase_exact_match",
}
COSTS = ("energy_joules", "train_runtime", "peak_memory_mb", "tokens_per_second")
RECORD_PARAMS = (*PROVENANCE_PARAMS, "base_model_revision", "dataset_sha256", "dev_dataset_sha256")


@dataclass
class MethodResult:
    method: str
    rate: str
    finals: list  # MLflow runs of the final phase that ended well
    sweep: list  # MLflow runs of the sweep
    per_task: dict[str, float]  # task -> score, each task's mean over seeds and samples


def build_report(output_dir: Path, tracking_uri: str | None) -> Path:
    """Write DIR/report/ (report.md, CSVs, PNGs) for the study in `output_dir`, log it to the parent run; the
    report's path."""
    client = MlflowClient(tracking_uri)
    parent = find_parent(client, output_dir.resolve())
    runs = child_runs(client, parent.info.experiment_id, parent.info.run_id)
    benchmark = _benchmark(runs)
    score = SCORES[benchmark]
    folder = output_dir / "report"
    folder.mkdir(parents=True, exist_ok=True)
    results = _method_results(client, parent, runs, benchmark, score)
    if not results:
        raise StudyError(f"{output_dir}: no final run has been scored yet: nothing to report")
    summary = _summary_rows(results, score)
    pairs = _pair_rows(results, score)
    curves = _expected_best_rows(results)
    pareto = _pareto_rows(summary, score)
    _write_csv(folder / "summary.csv", summary)
    _write_csv(folder / "pairs.csv", pairs)
    _write_csv(folder / "expected_best.csv", curves)
    _write_csv(folder / "pareto.csv", pareto)
    figures = _plots(folder, curves, pareto, score)
    n_tasks = min(len(r.per_task) for r in results)
    n_seeds = min(len(r.finals) for r in results)
    base_rate = sum(row[f"{score}_mean"] for row in summary) / len(summary)
    text = _markdown(
        parent, benchmark, score, summary, pairs, pareto, figures, _failures(runs), _record(runs), n_tasks, n_seeds,
        base_rate, _spec_text(client, parent),
    )  # fmt: skip
    (folder / "report.md").write_text(text)
    client.log_artifacts(parent.info.run_id, str(folder), artifact_path="report")
    client.log_table(parent.info.run_id, _per_task_table(results), artifact_file="report/per_task.json")
    log.info("Report written to %s and logged to run %s", folder / "report.md", parent.info.run_id)
    return folder / "report.md"


# reading
def _benchmark(runs: dict) -> str:
    for run in runs.values():
        for tag in run.data.tags:
            if tag.startswith("eval.") and tag.endswith(".tasks"):
                return tag.split(".")[1]
    raise StudyError("no final run of this study has been scored on a benchmark yet: nothing to report")


def _method_results(client, parent, runs: dict, benchmark: str, score: str) -> list[MethodResult]:
    results = []
    methods = sorted({child.method for child in runs})
    for method in methods:
        rate = parent.data.params.get(f"learning_rate.{method}")
        mine = {child: run for child, run in runs.items() if child.method == method}
        finals = [
            run
            for child, run in sorted(mine.items(), key=lambda item: item[0].seed)
            if run.data.tags.get("final") == "true" and score in run.data.metrics
        ]
        sweep = [run for run in mine.values() if run.data.tags.get("phase") == "sweep"]
        if not finals:
            continue
        per_seed = [_task_scores(client, run, benchmark) for run in finals]
        tasks = sorted(set.intersection(*(set(scores) for scores in per_seed)))
        per_task = {task: sum(scores[task] for scores in per_seed) / len(per_seed) for task in tasks}
        results.append(MethodResult(method, rate or "", finals, sweep, per_task))
    return results


def _task_scores(client, run, benchmark: str) -> dict[str, float]:
    """Each task's score in one final run: the share of its samples that passed (or matched exactly)."""
    with tempfile.TemporaryDirectory() as scratch:  # not under report/, which is logged whole to the parent run
        downloaded = client.download_artifacts(run.info.run_id, f"evaluation/{benchmark}/samples.jsonl", scratch)
        lines = Path(downloaded).read_text().splitlines()
    outcomes: dict[str, list[float]] = {}
    for line in lines:
        record = json.loads(line)
        passed = record["passed"] if "passed" in record else record["exact"]
        outcomes.setdefault(record["task_id"], []).append(float(passed))
    return {task: sum(values) / len(values) for task, values in outcomes.items()}


# tables
def _summary_rows(results: list[MethodResult], score: str) -> list[dict]:
    rows = []
    for result in results:
        row = {"method": result.method, "learning_rate": result.rate, "seeds": len(result.finals)}
        for metric in (score, "best_eval_loss", *COSTS):
            values = [run.data.metrics[metric] for run in result.finals if metric in run.data.metrics]
            interval = stats.mean_interval(values) if len(values) == len(result.finals) else None
            row.update(_interval_columns(metric, interval))
        row["trainable_percent"] = float(result.finals[0].data.params.get("trainable_percent", "nan"))
        rows.append(row)
    return rows


def _interval_columns(metric: str, interval) -> dict:
    if interval is None:
        return {f"{metric}_mean": None, f"{metric}_low": None, f"{metric}_high": None}
    return {f"{metric}_mean": interval.estimate, f"{metric}_low": interval.low, f"{metric}_high": interval.high}


def _pair_rows(results: list[MethodResult], score: str) -> list[dict]:
    rows = []
    for a, b in combinations(results, 2):
        tasks = sorted(set(a.per_task) & set(b.per_task))
        x, y = [a.per_task[t] for t in tasks], [b.per_task[t] for t in tasks]
        difference = stats.paired_bootstrap_difference(x, y)
        binary = all(v in (0.0, 1.0) for v in x + y)
        if binary:
            p, test = stats.mcnemar_exact([v == 1.0 for v in x], [v == 1.0 for v in y]), "exact McNemar"
        else:
            p, test = stats.paired_permutation_test(x, y), "paired permutation"
        beats = stats.probability_of_improvement(
            [run.data.metrics[score] for run in a.finals], [run.data.metrics[score] for run in b.finals]
        )
        rows.append(
            {
                "a": a.method, "b": b.method, "tasks": len(tasks), "difference": difference.estimate,
                "difference_low": difference.low, "difference_high": difference.high, "test": test, "p_value": p,
                "p_holm": None, "p_a_beats_b": beats.estimate, "p_a_beats_b_low": beats.low,
                "p_a_beats_b_high": beats.high,
            }
        )  # fmt: skip
    for row, adjusted in zip(rows, stats.holm([row["p_value"] for row in rows]), strict=True):
        row["p_holm"] = adjusted
    return rows


def _expected_best_rows(results: list[MethodResult]) -> list[dict]:
    """A failed sweep child counts as the method's worst finished one: an infinite loss would make every
    expectation infinite (n draws can all be failures)."""
    rows = []
    for result in results:
        losses = [best_dev_loss(run) for run in result.sweep]
        finite = [loss for loss in losses if math.isfinite(loss)]
        if not finite:
            continue
        losses = [loss if math.isfinite(loss) else max(finite) for loss in losses]
        for n, value in enumerate(stats.expected_best_curve(losses), start=1):
            rows.append({"method": result.method, "trials": n, "expected_best_dev_loss": value})
    return rows


def _pareto_rows(summary: list[dict], score: str) -> list[dict]:
    """Energy where every method measured it, else runtime; and peak memory: both costs, against the score."""
    energy = all(row["energy_joules_mean"] is not None for row in summary)
    cost = "energy_joules" if energy else "train_runtime"
    costs = [(row[f"{cost}_mean"], row["peak_memory_mb_mean"] or 0.0) for row in summary]
    optimal = stats.pareto_front(costs, [row[f"{score}_mean"] for row in summary])
    return [
        {
            "method": row["method"],
            "cost": cost,
            "cost_mean": row[f"{cost}_mean"],
            "cost_low": row[f"{cost}_low"],
            "cost_high": row[f"{cost}_high"],
            "peak_memory_mb": row["peak_memory_mb_mean"],
            "quality": score,
            "quality_mean": row[f"{score}_mean"],
            "quality_low": row[f"{score}_low"],
            "quality_high": row[f"{score}_high"],
            "pareto_optimal": flag,
        }  # fmt: skip
        for row, flag in zip(summary, optimal, strict=True)
    ]


def _failures(runs: dict) -> list[str]:
    lines = []
    for child, run in sorted(runs.items(), key=lambda item: item[0].name):
        tags, metrics = run.data.tags, run.data.metrics
        if tags.get(OUTCOME_TAG) == "failed":
            lines.append(f"{child.name} ({tags.get('phase')}): training failed: {tags.get('study_error', '')}")
        if tags.get(EVAL_OUTCOME_TAG) == "failed":
            lines.append(f"{child.name}: evaluation failed: {tags.get('study_eval_error', '')}")
        if metrics.get("contamination_fraction", 0) > 0:
            share = metrics["contamination_fraction"]
            lines.append(
                f"{child.name}: contamination: {share:.0%} of the benchmark's prompts are in its training data"
            )
    return lines


def _record(runs: dict) -> dict[str, list[str]]:
    """Each reproducibility param's distinct values over the children (one value: they agree)."""
    values: dict[str, set[str]] = {}
    for run in runs.values():
        for key in RECORD_PARAMS:
            if key in run.data.params:
                values.setdefault(key, set()).add(run.data.params[key])
    return {key: sorted(found) for key, found in values.items()}


def _spec_text(client, parent) -> str:
    folder = client.download_artifacts(parent.info.run_id, "spec")
    return "".join(path.read_text() for path in sorted(Path(folder).iterdir()))


def _per_task_table(results: list[MethodResult]) -> dict[str, list]:
    tasks = sorted(set().union(*(r.per_task for r in results)))
    table: dict[str, list] = {"task_id": tasks}
    for result in results:
        table[result.method] = [result.per_task.get(task) for task in tasks]
    return table


def _write_csv(path: Path, rows: list[dict]) -> None:
    if not rows:
        path.write_text("")
        return
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    path.write_text(buffer.getvalue())


# figures
def _plots(folder: Path, curves: list[dict], pareto: list[dict], score: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4))
    for method in sorted({row["method"] for row in curves}):
        points = [(row["trials"], row["expected_best_dev_loss"]) for row in curves if row["method"] == method]
        axes.plot([n for n, _ in points], [v for _, v in points], marker="o", label=method)
    axes.set(xlabel="sweep trials", ylabel="expected best dev loss", title="Expected best dev loss vs tuning")
    axes.legend()
    figure.tight_layout()
    figure.savefig(folder / "expected_best.png", dpi=120)
    plt.close(figure)

    figure, axes = plt.subplots(figsize=(6, 4))
    for row in pareto:
        x, y = row["cost_mean"], row["quality_mean"]
        xerr = [[x - row["cost_low"]], [row["cost_high"] - x]]
        yerr = [[y - row["quality_low"]], [row["quality_high"] - y]]
        marker = "*" if row["pareto_optimal"] else "o"
        axes.errorbar(x, y, xerr=xerr, yerr=yerr, fmt=marker, markersize=12 if marker == "*" else 7, capsize=3)
        axes.annotate(row["method"], (x, y), textcoords="offset points", xytext=(6, 6))
    cost = pareto[0]["cost"]
    axes.set(xlabel=f"{cost} (mean, 95% interval)", ylabel=f"{score} (mean, 95% interval)", title="Cost vs quality")
    figure.tight_layout()
    figure.savefig(folder / "pareto.png", dpi=120)
    plt.close(figure)
    return ["expected_best.png", "pareto.png"]


# the text
def _number(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}g}"


def _cell(row: dict, metric: str) -> str:
    mean = row[f"{metric}_mean"]
    if mean is None:
        return "-"
    if row[f"{metric}_low"] == row[f"{metric}_high"]:
        return _number(mean)
    return f"{_number(mean)} [{_number(row[f'{metric}_low'])}, {_number(row[f'{metric}_high'])}]"


def _markdown(
    parent, benchmark, score, summary, pairs, pareto, figures, failures, record, n_tasks, n_seeds, base_rate, spec
) -> str:
    name = parent.data.tags.get("study", "")
    lines = [f"# Study {name}: report", "", f"MLflow run `{parent.info.run_id}`; benchmark `{benchmark}`, score "]
    lines[-1] += f"`{score}`; {n_tasks} tasks, {n_seeds} seeds per method at its chosen learning rate."
    lines += ["", "## Per method", ""]
    metrics = (score, "best_eval_loss", *COSTS)
    lines.append("| method | learning rate | seeds | " + " | ".join(metrics) + " | trainable % |")
    lines.append("|---|---:|---:|" + "---:|" * len(metrics) + "---:|")
    for row in summary:
        cells = " | ".join(_cell(row, metric) for metric in metrics)
        lines.append(
            f"| {row['method']} | {row['learning_rate']} | {row['seeds']} | {cells} | "
            f"{_number(row['trainable_percent'])} |"
        )
    lines += [
        "",
        "Mean over seeds with a 95% Student's t interval (bracketed): with a handful of seeds a bootstrap percentile "
        "interval cannot reach beyond the values seen and comes out too narrow. One seed gives no interval.",
        "",
        "## Paired comparisons",
        "",
        "| A | B | tasks | A - B [95% CI] | test | p | p (Holm) | P(A > B) on a fresh seed [95% CI] |",
        "|---|---|---:|---|---|---:|---:|---|",
    ]
    for row in pairs:
        lines.append(
            f"| {row['a']} | {row['b']} | {row['tasks']} | {_number(row['difference'])} "
            f"[{_number(row['difference_low'])}, {_number(row['difference_high'])}] | {row['test']} | "
            f"{_number(row['p_value'], 3)} | {_number(row['p_holm'], 3)} | {_number(row['p_a_beats_b'], 3)} "
            f"[{_number(row['p_a_beats_b_low'], 3)}, {_number(row['p_a_beats_b_high'], 3)}] |"
        )
    detectable = stats.minimum_detectable_difference(n_tasks, n_seeds, min(max(base_rate, 0.01), 0.99))
    error = stats.standard_error_of_rate(min(max(base_rate, 0.01), 0.99), n_tasks)
    lines += [
        "",
        "Differences are on per-task scores (each task's mean over seeds and samples), with a paired bootstrap "
        "interval over tasks. The p-value is the exact McNemar test when every task is a pass or a fail, a paired "
        "permutation test otherwise, Holm-corrected across all pairs. P(A > B) compares the per-seed scores "
        "(ties count half), with a bootstrap interval over seeds.",
        "",
        f"**Power**: at {n_tasks} tasks and a score near {base_rate:.2f}, the standard error of a score is "
        f"{error:.3f}, and the smallest difference this comparison resolves (5% level, 80% power) is at most "
        f"about {detectable:.3f} (an upper bound: it leaves out the pairing of tasks, which can only help). A "
        'difference below that marked "not significant" may be a real one that too few tasks could not show.',
        "",
        "## Tuning: expected best dev loss vs sweep trials",
        "",
        "![expected best dev loss](expected_best.png) (numbers: `expected_best.csv`). A method whose curve keeps "
        "falling at the last trial could still gain from a wider sweep; one that wins only at many trials wins by "
        "tuning, not by the method (Dodge et al., 2019).",
        "",
        "## Cost vs quality",
        "",
        "| method | cost | cost (mean) | peak memory (MB) | quality (mean) | Pareto-optimal |",
        "|---|---|---:|---:|---:|---|",
    ]
    for row in pareto:
        lines.append(
            f"| {row['method']} | {row['cost']} | {_number(row['cost_mean'])} | {_number(row['peak_memory_mb'])} | "
            f"{_number(row['quality_mean'])} | {'yes' if row['pareto_optimal'] else 'no'} |"
        )
    lines += ["", "![cost vs quality](pareto.png) (numbers: `pareto.csv`)", "", "## Failures and contamination", ""]
    lines += [f"- {line}" for line in failures] or ["None."]
    lines += ["", "## Reproducibility record", ""]
    mixed = [key for key, values in record.items() if len(values) > 1]
    if mixed:
        lines += [f"**The children disagree on: {', '.join(mixed)}.** Their differences may not be the method's.", ""]
    if "true" in record.get("git_dirty", []):
        lines += ["**Some children ran from a checkout with uncommitted changes (git_dirty=true).**", ""]
    lines += ["| what | value(s) |", "|---|---|"]
    lines += [f"| {key} | {', '.join(values)} |" for key, values in record.items()]
    lines += ["", "## Spec", "", "```yaml", spec.rstrip(), "```", ""]
    return "\n".join(lines)
