"""The study's report on a study written straight into MLflow (no training): each number it prints is recomputed
here from the children's own metrics and per-task samples."""

import csv
import json
import math

import pytest
from mlflow import MlflowClient

from shared.study.report import build_report

TASKS = [f"t{i}" for i in range(6)]
# method -> (learning rate, cost per run in seconds, each final seed's exact matches over TASKS)
FINALS = {
    "lora": ("0.01", 30.0, {1: [1, 1, 1, 0, 1, 0], 2: [1, 1, 0, 0, 1, 1], 3: [1, 1, 1, 0, 1, 1]}),
    "bitfit": ("0.1", 10.0, {1: [1, 0, 0, 0, 1, 0], 2: [1, 0, 1, 0, 0, 0], 3: [1, 0, 0, 0, 1, 0]}),
    "prefix": ("0.001", 40.0, {1: [0, 0, 0, 0, 1, 0], 2: [1, 0, 0, 0, 0, 0], 3: [0, 0, 0, 0, 1, 0]}),
}
SWEEP_LOSSES = {"lora": {"0.01": 1.2, "0.001": 2.0}, "bitfit": {"0.1": 2.5}, "prefix": {"0.001": 3.1}}


def child(client, experiment, parent, method, rate, seed, *, phase, final, tags=None):
    identity = {"method": method, "learning_rate": rate, "seed": str(seed), "phase": phase, "final": final}
    run = client.create_run(
        experiment, tags={"mlflow.parentRunId": parent, "study_role": "child", **identity, **(tags or {})}
    )
    return run.info.run_id


def scored(client, run_id, outcomes: list[int], runtime: float) -> None:
    samples = "".join(json.dumps({"task_id": t, "exact": bool(o)}) + "\n" for t, o in zip(TASKS, outcomes, strict=True))
    client.log_text(run_id, samples, "evaluation/exact-match/samples.jsonl")
    client.set_tag(run_id, "eval.exact-match.tasks", str(len(TASKS)))
    for key, value in {"exact_match": sum(outcomes) / len(outcomes), "train_runtime": runtime}.items():
        client.log_metric(run_id, key, value)
    client.log_metric(run_id, "peak_memory_mb", 500.0)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    folder = tmp_path_factory.mktemp("study-report")
    store = f"sqlite:///{folder}/mlflow.db"
    client = MlflowClient(store)
    experiment = client.create_experiment("study", artifact_location=str(folder / "artifacts"))
    study_dir = folder / "study"
    parent = client.create_run(
        experiment, tags={"study": "known", "study_output_dir": str(study_dir.resolve()), "study_role": "parent"}
    ).info.run_id
    client.log_text(parent, "name: known\n", "spec/spec.yaml")
    for method, (chosen, runtime, seeds) in FINALS.items():
        client.log_param(parent, f"learning_rate.{method}", chosen)
        for rate, loss in SWEEP_LOSSES[method].items():
            run_id = child(
                client, experiment, parent, method, rate, 1, phase="sweep", final=str(rate == chosen).lower()
            )
            client.log_metric(run_id, "best_eval_loss", loss)
            if rate == chosen:
                scored(client, run_id, seeds[1], runtime)
            client.set_terminated(run_id)
        for seed in (2, 3):
            run_id = child(client, experiment, parent, method, chosen, seed, phase="final", final="true")
            client.log_metric(run_id, "best_eval_loss", SWEEP_LOSSES[method][chosen])
            scored(client, run_id, seeds[seed], runtime)
            client.set_terminated(run_id)
    failed = child(client, experiment, parent, "prefix", "0.1", 1, phase="sweep", final="false",
                   tags={"study_outcome": "failed", "study_error": "training diverged"})  # fmt: skip
    client.set_terminated(failed, "FAILED")
    path = build_report(study_dir, store)
    report_dir = path.parent
    return {
        "text": path.read_text(),
        **{name: list(csv.DictReader((report_dir / f"{name}.csv").open())) for name in ("summary", "pairs", "pareto")},
        "curves": list(csv.DictReader((report_dir / "expected_best.csv").open())),
        "logged": {a.path for a in client.list_artifacts(parent, "report")},
    }


def per_task_means(method: str) -> list[float]:
    seeds = FINALS[method][2].values()
    return [sum(outcomes[i] for outcomes in seeds) / len(seeds) for i in range(len(TASKS))]


def test_each_method_is_summarised_by_its_finals_at_its_chosen_rate(report):
    rows = {row["method"]: row for row in report["summary"]}
    assert set(rows) == set(FINALS)
    for method, (rate, runtime, seeds) in FINALS.items():
        scores = [sum(outcomes) / len(TASKS) for outcomes in seeds.values()]
        row = rows[method]
        assert row["learning_rate"] == rate and row["seeds"] == "3"
        assert float(row["exact_match_mean"]) == pytest.approx(sum(scores) / 3)
        assert float(row["exact_match_low"]) <= float(row["exact_match_mean"]) <= float(row["exact_match_high"])
        assert float(row["train_runtime_mean"]) == pytest.approx(runtime)


def test_pairs_hold_the_paired_difference_over_tasks_and_holm_adjusted_p_values(report):
    pairs = {(row["a"], row["b"]): row for row in report["pairs"]}
    assert len(pairs) == 3
    for (a, b), row in pairs.items():
        x, y = per_task_means(a), per_task_means(b)
        assert int(row["tasks"]) == len(TASKS)
        assert float(row["difference"]) == pytest.approx(sum(x) / len(x) - sum(y) / len(y))
        assert row["test"] == "paired permutation", "a task's mean over three seeds is not pass/fail"
    # Holm, step by step: the k-th smallest p times (m - k), made monotone, capped at 1.
    ordered = sorted(pairs.values(), key=lambda row: float(row["p_value"]))
    running = 0.0
    for k, row in enumerate(ordered):
        running = max(running, min(1.0, (len(ordered) - k) * float(row["p_value"])))
        assert float(row["p_holm"]) == pytest.approx(running)


def test_the_dominated_method_is_off_the_pareto_front(report):
    optimal = {row["method"]: row["pareto_optimal"] for row in report["pareto"]}
    assert optimal == {"lora": "True", "bitfit": "True", "prefix": "False"}, "prefix costs most and scores least"
    assert {row["cost"] for row in report["pareto"]} == {"train_runtime"}, "no energy measured: runtime is the cost"


def test_expected_best_dev_loss_starts_at_the_sweep_mean_and_a_failed_child_counts_as_the_worst(report):
    curves = {}
    for row in report["curves"]:
        curves.setdefault(row["method"], []).append(float(row["expected_best_dev_loss"]))
    assert curves["lora"][0] == pytest.approx((1.2 + 2.0) / 2)
    assert 1.2 <= curves["lora"][1] < curves["lora"][0]
    assert curves["prefix"][0] == pytest.approx(3.1), "the diverged child stands in as the worst finished one"
    assert not any(math.isnan(value) for values in curves.values() for value in values)


def test_the_report_names_the_failure_and_is_logged_to_the_parent_run(report):
    assert "prefix-lr0.1-seed1 (sweep): training failed: training diverged" in report["text"]
    assert "## Paired comparisons" in report["text"] and "**Power**" in report["text"]
    assert {"report/report.md", "report/summary.csv", "report/pairs.csv", "report/per_task.json"} <= report["logged"]
