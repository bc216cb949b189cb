"""The evaluation job: completions in, scores out, written beside each sample and logged to MLflow.

Scores land in the run that trained the model (written to by id with the client, so its status never changes),
and/or in an evaluation run (the one `mlflow run` created, or a new one) linked to the training run when known.
"""

import json
import logging
import math
import os
import time
from collections import Counter, defaultdict
from pathlib import Path

import click

from shared.data.records import DataError, check_string_fields, read_jsonl_lines, read_records
from shared.evaluate.benchmarks import CodeTask, HumanEvalTask, TextTask
from shared.evaluate.contamination import NGRAM_WORDS
from shared.evaluate.contamination import contaminated_tasks as find_contaminated
from shared.evaluate.sandbox import Isolation, Limits, run_programs
from shared.evaluate.scoring import bucket_scores, normalize, pass_at_k, text_scores
from shared.outputs import RUN_FILE, read_run_id
from shared.track.redaction import redact_uri, scrub

log = logging.getLogger(__name__)

RESULTS_FILE = "results.json"
SAMPLES_FILE = "samples.jsonl"
METRICS_TAG = "metrics"  # eval.<benchmark>.metrics: the metric names its latest evaluation logged
EVALUATION_TAG = "evaluation"  # eval.<benchmark>.evaluation: how many times the run was scored on it


def read_completions(path: Path, task_ids: set[str]) -> dict[str, list[str]]:
    """{task_id: [completion, ...]} from a JSONL file of {task_id, completion} records."""
    by_task: dict[str, list[str]] = defaultdict(list)
    for number, record in read_jsonl_lines(path):
        where = f"{path}: line {number}"
        if not isinstance(record, dict):
            raise DataError(f"{where} is a {type(record).__name__}, expected an object")
        check_string_fields(where, record, ("task_id", "completion"))
        if record["task_id"] not in task_ids:
            raise DataError(f"{where}: field 'task_id': {record['task_id']!r} is not a task")
        by_task[record["task_id"]].append(record["completion"])
    if not by_task:
        raise DataError(f"{path}: no completions")
    return dict(by_task)


def score_code(
    tasks: list[CodeTask],
    completions: dict[str, list[str]],
    ks: list[int],
    limits: Limits,
    workers: int | None,
    isolation: Isolation,
    answers: str = "auto",
) -> tuple[dict[str, float], list[dict]]:
    """Read every completion as a program (`answers`: auto or raw, shared.evaluate.answers) and run it with the
    task's tests in the sandbox; a sample passes when all its programs pass."""
    samples = [(task, n, text) for task in tasks for n, text in enumerate(completions.get(task.task_id, []))]
    solutions = [task.solution(text, answers) for task, _, text in samples]
    programs = [task.programs(solution) for (task, _, _), solution in zip(samples, solutions, strict=True)]
    outcomes = iter(run_programs([p for group in programs for p in group], limits, workers, isolation))
    records, passed_by_task = [], defaultdict(list)
    for (task, number, text), solution, group in zip(samples, solutions, programs, strict=True):
        results = [next(outcomes) for _ in group]
        failed = [r.reason for r in results if not r.passed]
        passed_by_task[task.task_id].append(not failed)
        record = {**_described(task), "sample": number, "completion": text, "program": solution}
        if isinstance(task, HumanEvalTask):
            record["reference"] = task.reference
        records.append({**record, "passed": not failed, "result": failed[0] if failed else "passed"})
    counts = Counter(record["result"].split(":")[0] for record in records)
    log.info("Outcomes: %s", ", ".join(f"{count} {reason}" for reason, count in counts.most_common()))
    return pass_at_k(passed_by_task, ks), records


def score_text(tasks: list[TextTask], completions: dict[str, list[str]]) -> tuple[dict[str, float], list[dict]]:
    """Exact match and BLEU of the first completion of each task; per bucket when the tasks have buckets."""
    answered = [task for task in tasks if task.task_id in completions]
    predictions = [completions[task.task_id][0] for task in answered]
    references = [task.reference for task in answered]
    if any(task.bucket for task in answered):
        scores = bucket_scores(predictions, references, [task.bucket for task in answered])
    else:
        scores = text_scores(predictions, references)
    records = []
    for task, prediction in zip(answered, predictions, strict=True):
        exact = normalize(prediction) == normalize(task.reference)
        record = {**_described(task), "bucket": task.bucket, "completion": prediction}
        records.append({**record, "reference": task.reference, "exact": exact})
    return scores, records


def _described(task: CodeTask | TextTask) -> dict[str, str]:
    """What a person needs to read a sample: its task, the record of the source data it comes from, its prompt."""
    return {"task_id": task.task_id, "source_id": task.source_id, "prompt": task.prompt}


def write_results(output_dir: Path, summary: dict, records: list[dict]) -> list[Path]:
    output_dir.mkdir(parents=True, exist_ok=True)
    results, samples = output_dir / RESULTS_FILE, output_dir / SAMPLES_FILE
    results.write_text(json.dumps(summary, indent=2) + "\n")
    samples.write_text("".join(json.dumps(record) + "\n" for record in records))
    return [results, samples]


def metric_names(benchmark: str, scores: dict[str, float]) -> dict[str, float]:
    """MLflow names: '@' is refused ('pass@1' -> 'pass_at_1'); benchmarks other than HumanEval and exact match
    are prefixed so several can sit in one run."""
    prefix = "" if benchmark in ("humaneval", "exact-match") else benchmark.replace("-", "_") + "_"
    return {prefix + name.replace("@", "_at_"): value for name, value in scores.items()}


def training_run_of(model_dir: Path) -> str | None:
    """The run that trained a folder: its mlflow_run.json (a training output), or the run of the adapter a merged
    folder was made from (merged_from.json); None when neither is there."""
    from shared.model.merging import merged_from_run

    return read_run_id(model_dir) if (model_dir / RUN_FILE).is_file() else merged_from_run(model_dir)


def check_run(tracking_uri: str | None, run_id: str) -> None:
    """Fail early, before any model loads, when the run to log into does not exist."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri)
    try:
        client.get_run(run_id)
    except MlflowException:
        uri = redact_uri(client.tracking_uri)
        raise click.ClickException(f"No MLflow run {run_id} at tracking URI {uri}: pass --run-id") from None


def log_results(
    scores: dict[str, float],
    files: list[Path],
    *,
    benchmark: str,
    tags: dict[str, str],
    run_tags: dict[str, str],
    tracking_uri: str | None,
    training_run_id: str | None,
    new_run: bool,
    experiment_name: str,
) -> list[str]:
    """Log the scores, tags (as `eval.<benchmark>.<key>`; `run_tags` as they are) and files (under
    `evaluation/<benchmark>/`), in place of the run's previous evaluation of `benchmark`; returns the runs logged to.

    The training run gets them unless `new_run`. So does the run `mlflow run` created (MLFLOW_RUN_ID), which is then
    the evaluation run; without one, an evaluation run is created when the training run is unknown or `new_run`.
    """
    from mlflow import MlflowClient
    from mlflow.entities import RunTag

    client = MlflowClient(tracking_uri)
    targets = [training_run_id] if training_run_id and not new_run else []
    attached, created = os.environ.get("MLFLOW_RUN_ID"), None
    if attached:
        link = [RunTag(key, value) for key, value in _link_tags(benchmark, training_run_id).items()]
        client.log_batch(attached, tags=link)  # `mlflow run` ends this run itself
        targets.append(attached)
    elif not targets:
        created = _create_run(client, benchmark, training_run_id, experiment_name)
        targets.append(created)
    named = {f"eval.{benchmark}.{key}": scrub(value) for key, value in tags.items()} | run_tags
    try:
        for run_id in targets:
            _log_to(client, run_id, scores, files, benchmark, named)
    except BaseException:
        if created:
            client.set_terminated(created, "FAILED")
        raise
    if created:
        client.set_terminated(created, "FINISHED")
    return targets


def _log_to(client, run_id: str, scores: dict[str, float], files: list[Path], benchmark: str, tags: dict) -> None:
    """Log one evaluation of `benchmark` in place of the run's previous one: the previous `eval.<benchmark>.` tags
    go, and its metrics this evaluation does not log are set to NaN (MLflow cannot delete a metric), so no number
    or setting of an earlier evaluation is left beside the new ones. Evaluation n logs at step n - 1."""
    from mlflow.entities import Metric, RunTag

    metrics = metric_names(benchmark, scores)
    previous = client.get_run(run_id).data.tags
    prefix = f"eval.{benchmark}."
    number = int(previous.get(prefix + EVALUATION_TAG, "0")) + 1
    tags = {**tags, prefix + METRICS_TAG: ",".join(sorted(metrics)), prefix + EVALUATION_TAG: str(number)}
    # contamination_fraction is one name for HumanEval and exact match: it stays while the other one logged it.
    logged_by_others = {
        name
        for key, value in previous.items()
        if key.endswith("." + METRICS_TAG) and not key.startswith(prefix)
        for name in value.split(",")
    }
    stale = set(previous.get(prefix + METRICS_TAG, "").split(",")) - set(metrics) - logged_by_others - {""}
    for key in previous:
        if key.startswith(prefix) and key not in tags:
            client.delete_tag(run_id, key)
    now = int(time.time() * 1000)
    batch = [Metric(key, value, now, number - 1) for key, value in metrics.items()]
    batch += [Metric(key, math.nan, now, number - 1) for key in sorted(stale)]
    client.log_batch(run_id, batch, tags=[RunTag(key, value) for key, value in tags.items()])
    for path in files:
        client.log_artifact(run_id, str(path), artifact_path=f"evaluation/{benchmark}")


def _link_tags(benchmark: str, training_run_id: str | None) -> dict[str, str]:
    tags = {"evaluation": benchmark}
    if training_run_id:
        tags.update({"training_run_id": training_run_id, "mlflow.parentRunId": training_run_id})
    return tags


def _create_run(client, benchmark: str, training_run_id: str | None, experiment_name: str) -> str:
    if training_run_id:
        experiment_id = client.get_run(training_run_id).info.experiment_id
    else:
        experiment = client.get_experiment_by_name(experiment_name)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(experiment_name)
    run = client.create_run(experiment_id, run_name=f"eval-{benchmark}", tags=_link_tags(benchmark, training_run_id))
    return run.info.run_id


def training_data_of(tracking_uri: str | None, run_id: str | None) -> list[Path]:
    """The training run's --dataset files (the param joins several with os.pathsep) that are here (a path is
    relative to where the training ran)."""
    from mlflow import MlflowClient

    if not run_id:
        return []
    dataset = MlflowClient(tracking_uri).get_run(run_id).data.params.get("dataset") or ""
    return [Path(part) for part in dataset.split(os.pathsep) if part and Path(part).is_file()]


def contaminated_tasks(tasks: list, training_files: list[Path]) -> dict[str, str] | None:
    """The tasks whose prompt the training records contain ({task_id: how}), with a warning naming them; None
    when there is no training data to look in."""
    if not training_files:
        log.info("No training data to check the benchmark's prompts against: pass --training-data")
        return None
    texts = (f"{r['input']}\n{r['output']}" for path in training_files for r in read_records(path))
    found = find_contaminated({task.task_id: task.prompt for task in tasks}, texts)
    if found:
        log.warning(
            "Contamination: the training data holds %d of the %d benchmark prompts (a prompt inside a record, or %d "
            "words in a row shared with one), e.g. %s. Their scores measure memory, not skill.",
            len(found),
            len(tasks),
            NGRAM_WORDS,
            ", ".join(sorted(found)[:5]),
        )
    return found
