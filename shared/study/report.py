"""The study's report, read back from MLflow: the verdict (shared/study/verdict.py) on the final runs' per-task
scores and costs, how each learning rate was chosen (shared/study/tuning.py), failures and contamination, and the
record that reproduces the runs.

Everything comes from the children's own metrics and their per-task results (the evaluation's samples.jsonl,
downloaded from each final run); nothing is re-typed. Written to DIR/report/ and logged to the parent run.
"""

import json
import logging
import math
import tempfile
from pathlib import Path

import yaml
from mlflow import MlflowClient

from shared.study import statistics as stats
from shared.study.children import EVAL_OUTCOME_TAG, OUTCOME_TAG, best_dev_loss
from shared.study.driver import StudyError, child_runs, find_parent
from shared.study.score_table import ScoreTable
from shared.study.tuning import Trial, tuning_section
from shared.study.verdict import per_task_rows, write_verdict
from shared.track.provenance import PROVENANCE_PARAMS

log = logging.getLogger(__name__)

SCORES = {
    "humaneval": "pass_at_1",
    "livecodebench": "livecodebench_pass_at_1",
    "exact-match": "exact_match",
    "paraphrase": "paraphrase_exact_match",
}
COSTS = ("energy_joules", "train_runtime", "peak_memory_mb", "tokens_per_second")  # positive and skewed
RECORD_PARAMS = (*PROVENANCE_PARAMS, "base_model_revision", "dataset_sha256", "dev_dataset_sha256")


def build_report(output_dir: Path, tracking_uri: str | None) -> Path:
    """Write DIR/report/ (report.md, CSVs, PNGs) for the study in `output_dir`, log it to the parent run; the
    report's path."""
    client = MlflowClient(tracking_uri)
    parent = find_parent(client, output_dir.resolve())
    runs = child_runs(client, parent.info.experiment_id, parent.info.run_id)
    benchmark = _benchmark(runs)
    spec = _spec_text(client, parent)
    table = _score_table(client, parent, runs, benchmark, spec)
    folder = output_dir / "report"
    folder.mkdir(parents=True, exist_ok=True)
    chosen = {
        key.split(".", 1)[1]: float(value)
        for key, value in parent.data.params.items()
        if key.startswith("learning_rate.")
    }
    seeds = sorted({len(seeds) for seeds in table.scores.values()})
    intro = [
        f"MLflow run `{parent.info.run_id}`; benchmark `{benchmark}`, score `{table.score_name}`; "
        f"{' to '.join(map(str, seeds))} seeds per method at its chosen learning rate."
    ]
    sections = [*tuning_section(_trials(runs), chosen, folder), *_failures_section(runs), *_record_section(runs)]
    sections += ["## Spec", "", "```yaml", spec.rstrip(), "```", ""]
    name = parent.data.tags.get("study", "")
    path = write_verdict(table, folder, f"Study {name}: report", intro, sections)
    client.log_artifacts(parent.info.run_id, str(folder), artifact_path="report")
    rows = per_task_rows(table)  # also in per_task.csv; as an MLflow table, the UI shows it
    client.log_table(parent.info.run_id, {key: [row[key] for row in rows] for key in rows[0]}, "report/per_task.json")
    log.info("Report written to %s and logged to run %s", path, parent.info.run_id)
    return path


# reading
def _benchmark(runs: dict) -> str:
    for run in runs.values():
        for tag in run.data.tags:
            if tag.startswith("eval.") and tag.endswith(".tasks"):
                return tag.split(".")[1]
    raise StudyError("no final run of this study has been scored on a benchmark yet: nothing to report")


def _score_table(client, parent, runs: dict, benchmark: str, spec: str) -> ScoreTable:
    """The final runs' per-task scores and per-run numbers, each method at its chosen rate, on the tasks every final
    run was scored on."""
    score = SCORES[benchmark]
    finals = {}
    for child, run in sorted(runs.items(), key=lambda item: (item[0].method, item[0].seed)):
        if run.data.tags.get("final") == "true" and score in run.data.metrics:
            finals.setdefault(child.method, {})[str(child.seed)] = run
    if not finals:
        raise StudyError("no final run of this study has been scored yet: nothing to report")
    scores = {
        m: {seed: _task_scores(client, run, benchmark) for seed, run in seeds.items()} for m, seeds in finals.items()
    }
    every = [set(tasks) for seeds in scores.values() for tasks in seeds.values()]
    common = sorted(set.intersection(*every))
    if not common:
        raise StudyError("the final runs were scored on no task in common: nothing to compare")
    scores = {m: {seed: {t: tasks[t] for t in common} for seed, tasks in seeds.items()} for m, seeds in scores.items()}
    numbers = {m: {seed: _run_numbers(client, run) for seed, run in seeds.items()} for m, seeds in finals.items()}
    energy = all(all("energy_joules" in run for run in seeds.values()) for seeds in numbers.values())
    left_out = len(set.union(*every)) - len(common)
    return ScoreTable(
        scores,
        score_name=score,
        numbers=numbers,
        number_names=("best_eval_loss", *COSTS),
        positive=frozenset(COSTS),
        pareto_costs=("energy_joules" if energy else "train_runtime", "peak_memory_mb"),
        method_columns={
            method: {
                "learning_rate": parent.data.params.get(f"learning_rate.{method}", ""),
                "trainable_percent": _percent(next(iter(seeds.values())).data.params.get("trainable_percent")),
            }
            for method, seeds in finals.items()
        },
        tasks_note=_tasks_note(benchmark, spec)
        + (f"; {left_out} more scored by some final runs only, left out" if left_out else ""),
    )


def _percent(logged: str | None) -> str:
    return "" if logged is None else f"{float(logged):.4g}"


def _tasks_note(benchmark: str, spec: str) -> str:
    """Which of the benchmark's tasks the spec's evaluation scores, in words."""
    evaluation = (yaml.safe_load(spec) or {}).get("evaluation") or {}
    if evaluation.get("limit"):
        return f"the first {evaluation['limit']} tasks of {benchmark}, in its own order: the spec's evaluation limit"
    return f"the tasks of {benchmark} that every final run was scored on"


def _run_numbers(client, run) -> dict[str, float]:
    """A final run's best dev loss and costs. Tokens per second is the run's average: its own
    train_tokens_per_second (every token over the seconds of every training step, over all its segments) where it
    logged one, else worked out from its logging windows; never the last window's. A cost that is not positive
    was not measured: left out."""
    metrics = run.data.metrics
    numbers = {name: metrics[name] for name in ("best_eval_loss", *COSTS) if name in metrics}
    speed = metrics.get("train_tokens_per_second") or _average_tokens_per_second(client, run.info.run_id)
    numbers.pop("tokens_per_second", None)
    if speed is not None:
        numbers["tokens_per_second"] = speed
    return {name: value for name, value in numbers.items() if name == "best_eval_loss" or value > 0}


def _average_tokens_per_second(client, run_id: str) -> float | None:
    """Total tokens over total training seconds, from the rate of each logging window: each window weighs by its
    tokens (its steps x its real tokens per step where logged, else its steps)."""
    rates = _last_per_step(client.get_metric_history(run_id, "tokens_per_second"))
    per_step = _last_per_step(client.get_metric_history(run_id, "real_tokens_per_step"))
    by_tokens = all(step in per_step for step in rates)
    windows, previous = [], 0
    for step in sorted(rates):
        if step > previous and rates[step] > 0:
            windows.append((rates[step], (step - previous) * (per_step[step] if by_tokens else 1.0)))
        previous = step
    if not windows:
        return None
    return stats.run_average_rate([rate for rate, _ in windows], [weight for _, weight in windows])


def _last_per_step(history) -> dict[int, float]:
    """A metric's value at each step; a step logged twice (a resumed run redoing it) keeps its latest value."""
    return {point.step: point.value for point in sorted(history, key=lambda point: point.timestamp)}


def _trials(runs: dict) -> list[Trial]:
    trials = []
    for child, run in runs.items():
        if run.data.tags.get("phase") != "sweep":
            continue
        loss = best_dev_loss(run)
        failed = run.data.tags.get(OUTCOME_TAG) == "failed"
        outcome = "finished" if math.isfinite(loss) else "failed" if failed else "unfinished"
        trials.append(Trial(child.method, child.learning_rate, child.seed, loss, outcome))
    return trials


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


# sections
def _failures_section(runs: dict) -> list[str]:
    return ["## Failures and contamination", "", *([f"- {line}" for line in _failures(runs)] or ["None."]), ""]


def _record_section(runs: dict) -> list[str]:
    record = _record(runs)
    lines = ["## Reproducibility record", ""]
    mixed = [key for key, values in record.items() if len(values) > 1]
    if mixed:
        lines += [f"**The children disagree on: {', '.join(mixed)}.** Their differences may not be the method's.", ""]
    if "true" in record.get("git_dirty", []):
        lines += ["**Some children ran from a checkout with uncommitted changes (git_dirty=true).**", ""]
    lines += ["| what | value(s) |", "|---|---|"]
    return [*lines, *(f"| {key} | {', '.join(values)} |" for key, values in record.items()), ""]


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
