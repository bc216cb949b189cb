"""The study's report on a study written straight into MLflow (no training): each number it prints is recomputed
here from the children's own metrics and per-task samples, and the verdict is the one `study.py verdict` gives on
the same scores."""

import csv
import json
import math

import pytest
from mlflow import MlflowClient

from conftest import run_in_process
from shared.study.report import build_report

TASKS = [f"t{i}" for i in range(6)]
# method -> (learning rate, cost per run in seconds, each final seed's exact matches over TASKS)
FINALS = {
    "lora": ("0.01", 30.0, {1: [1, 1, 1, 0, 1, 0], 2: [1, 1, 0, 0, 1, 1], 3: [1, 1, 1, 0, 1, 1]}),
    "bitfit": ("0.1", 10.0, {1: [1, 0, 0, 0, 1, 0], 2: [1, 0, 1, 0, 0, 0], 3: [1, 0, 0, 0, 1, 0]}),
    "prefix": ("0.001", 40.0, {1: [0, 0, 0, 0, 1, 0], 2: [1, 0, 0, 0, 0, 0], 3: [0, 0, 0, 0, 1, 0]}),
}
SWEEP_LOSSES = {"lora": {"0.01": 1.2, "0.001": 2.0}, "bitfit": {"0.1": 2.5}, "prefix": {"0.001": 3.1}}
# Each final run's training, logged every 10 steps: tokens per second and real tokens per step in each window.
WINDOWS = [(10, 100.0, 40.0), (20, 50.0, 40.0), (30, 100.0, 20.0)]
AVERAGE_TOKENS_PER_SECOND = (400 + 400 + 200) / (400 / 100 + 400 / 50 + 200 / 100)  # tokens over seconds
LOGGED_AVERAGE = 64.0


def child(client, experiment, parent, method, rate, seed, *, phase, final, tags=None):
    identity = {"method": method, "learning_rate": rate, "seed": str(seed), "phase": phase, "final": final}
    run = client.create_run(
        experiment, tags={"mlflow.parentRunId": parent, "study_role": "child", **identity, **(tags or {})}
    )
    return run.info.run_id


def scored(client, run_id, method: str, outcomes: list[int], runtime: float) -> None:
    samples = "".join(json.dumps({"task_id": t, "exact": bool(o)}) + "\n" for t, o in zip(TASKS, outcomes, strict=True))
    client.log_text(run_id, samples, "evaluation/exact-match/samples.jsonl")
    client.set_tag(run_id, "eval.exact-match.tasks", str(len(TASKS)))
    for key, value in {"exact_match": sum(outcomes) / len(outcomes), "train_runtime": runtime}.items():
        client.log_metric(run_id, key, value)
    if method != "prefix":  # prefix recorded no peak memory: missing, not 0 MB
        client.log_metric(run_id, "peak_memory_mb", 500.0)
    for step, rate, per_step in WINDOWS:
        client.log_metric(run_id, "tokens_per_second", rate, step=step)
        client.log_metric(run_id, "real_tokens_per_step", per_step, step=step)
    if method == "bitfit":  # a training that logs its own average over all its segments
        client.log_metric(run_id, "train_tokens_per_second", LOGGED_AVERAGE)


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
    client.log_text(parent, "name: known\nevaluation: {benchmark: exact-match, limit: 6}\n", "spec/spec.yaml")
    for method, (chosen, runtime, seeds) in FINALS.items():
        client.log_param(parent, f"learning_rate.{method}", chosen)
        for rate, loss in SWEEP_LOSSES[method].items():
            run_id = child(
                client, experiment, parent, method, rate, 1, phase="sweep", final=str(rate == chosen).lower()
            )
            client.log_metric(run_id, "best_eval_loss", loss)
            if rate == chosen:
                scored(client, run_id, method, seeds[1], runtime)
            client.set_terminated(run_id)
        for seed in (2, 3):
            run_id = child(client, experiment, parent, method, chosen, seed, phase="final", final="true")
            client.log_metric(run_id, "best_eval_loss", SWEEP_LOSSES[method][chosen])
            scored(client, run_id, method, seeds[seed], runtime)
            client.set_terminated(run_id)
    failed = child(client, experiment, parent, "prefix", "0.1", 1, phase="sweep", final="false",
                   tags={"study_outcome": "failed", "study_error": "training diverged"})  # fmt: skip
    client.set_terminated(failed, "FAILED")
    path = build_report(study_dir, store)
    report_dir = path.parent
    names = ("summary", "pairs", "pareto", "learning_rates", "expected_best")
    return {
        "text": path.read_text(),
        **{name: list(csv.DictReader((report_dir / f"{name}.csv").open())) for name in names},
        "logged": {a.path for a in client.list_artifacts(parent, "report")},
        "folder": folder,
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
        assert float(row["train_runtime_geometric_mean"]) == pytest.approx(runtime)
        assert float(row["train_runtime_low"]) == pytest.approx(runtime), "three equal runs: no spread"
    assert rows["prefix"]["peak_memory_mb_geometric_mean"] == "" and rows["prefix"]["peak_memory_mb_interval"] == (
        "missing"
    )


def test_tokens_per_second_is_the_runs_average_not_its_last_window(report):
    speeds = {row["method"]: float(row["tokens_per_second_geometric_mean"]) for row in report["summary"]}
    assert speeds == {
        "lora": pytest.approx(AVERAGE_TOKENS_PER_SECOND),  # from its windows, each weighing by its tokens
        "prefix": pytest.approx(AVERAGE_TOKENS_PER_SECOND),
        "bitfit": LOGGED_AVERAGE,  # its own figure, where the run logged one
    }
    assert AVERAGE_TOKENS_PER_SECOND != pytest.approx(WINDOWS[-1][1])


def test_pairs_count_seeds_and_tasks_and_hold_holm_adjusted_p_values(report):
    pairs = {(row["a"], row["b"]): row for row in report["pairs"]}
    assert len(pairs) == 3
    for (a, b), row in pairs.items():
        x, y = per_task_means(a), per_task_means(b)
        assert int(row["tasks"]) == len(TASKS) and (row["seeds_a"], row["seeds_b"]) == ("3", "3")
        assert float(row["difference"]) == pytest.approx(sum(x) / len(x) - sum(y) / len(y))
        assert row["test"] == "t over seeds and tasks" and row["replicates"] == "seeds and tasks"
        assert row["p_a_beats_b"] == "" and row["p_a_beats_b_note"].startswith("needs >= 4 seeds")
    # Holm, step by step: the k-th smallest p times (m - k), made monotone, capped at 1.
    ordered = sorted(pairs.values(), key=lambda row: float(row["p_value"]))
    running = 0.0
    for k, row in enumerate(ordered):
        running = max(running, min(1.0, (len(ordered) - k) * float(row["p_value"])))
        assert float(row["p_value_holm_adjusted"]) == pytest.approx(running)


def test_the_study_verdict_is_the_one_study_py_verdict_gives_on_the_same_scores(report, tmp_path):
    table = tmp_path / "scores.csv"
    with table.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["method", "seed", "task_id", "score"])
        for method, (_, _, seeds) in sorted(FINALS.items()):  # the study's order
            for seed, outcomes in seeds.items():
                writer.writerows([method, seed, task, score] for task, score in zip(TASKS, outcomes, strict=True))
    result = run_in_process("scripts/study.py", "verdict", table, "--output-dir", tmp_path / "verdict")
    assert result.returncode == 0, result.stderr[-3000:]
    alone = list(csv.DictReader((tmp_path / "verdict" / "pairs.csv").open()))
    assert len(alone) == len(report["pairs"])
    for mine, study in zip(alone, report["pairs"], strict=True):
        assert mine == study


def test_the_dominated_method_is_off_the_front_and_a_missing_memory_is_shown_missing(report):
    optimal = {row["method"]: row["pareto_optimal"] for row in report["pareto"]}
    assert optimal == {"lora": "True", "bitfit": "True", "prefix": ""}, "prefix recorded no memory"
    assert {row["missing"] for row in report["pareto"]} == {"", "peak_memory_mb"}
    assert (
        "train_runtime_geometric_mean" in report["pareto"][0]
        and "energy_joules_geometric_mean" not in (report["pareto"][0])
    ), "no energy measured: runtime is the cost"
    assert "| prefix | 40 | - | 0.1667 | missing peak_memory_mb |" in report["text"]


def test_the_learning_rate_table_marks_failures_the_choice_and_a_rate_at_the_grids_edge(report):
    rows = {(row["method"], row["learning_rate"]): row for row in report["learning_rates"]}
    assert float(rows[("lora", "0.01")]["mean_best_dev_loss"]) == 1.2 and rows[("lora", "0.01")]["chosen"] == "True"
    assert rows[("lora", "0.001")]["chosen"] == "False"
    assert rows[("prefix", "0.1")]["mean_best_dev_loss"] == "" and rows[("prefix", "0.1")]["failed"] == "1"
    text = report["text"]
    assert "**lora**: the chosen rate 0.01 is the highest of its grid (0.001, 0.01)" in text
    assert "**prefix**: the chosen rate 0.001 is the lowest of its grid (0.001, 0.1)" in text
    assert "**bitfit**: its grid holds one rate (0.1): nothing was tuned." in text


def test_expected_best_dev_loss_starts_at_the_sweep_mean_and_says_what_stood_in_for_a_failure(report):
    curves = {}
    for row in report["expected_best"]:
        curves.setdefault(row["method"], []).append(float(row["expected_best_dev_loss"]))
    assert curves["lora"][0] == pytest.approx((1.2 + 2.0) / 2)
    assert 1.2 <= curves["lora"][1] < curves["lora"][0]
    assert curves["prefix"][0] == pytest.approx(3.1), "the diverged child stands in as the worst finished one"
    assert not any(math.isnan(value) for values in curves.values() for value in values)
    assert "count as their method's worst finished trial (prefix 1)" in report["text"]
    assert "not a random search" in report["text"]


def test_the_report_names_its_tasks_and_the_failure_and_is_logged_to_the_parent_run(report):
    text = report["text"]
    assert "Scored on 6 tasks (the first 6 tasks of exact-match, in its own order" in text and ": t0-5." in text
    assert "prefix-lr0.1-seed1 (sweep): training failed: training diverged" in text
    assert "## Paired comparisons" in text and "**Power**" in text
    expected = {"report/report.md", "report/summary.csv", "report/pairs.csv", "report/per_task.json"}
    assert expected | {"report/learning_rates.csv", "report/expected_best.png", "report/pareto.png"} <= report["logged"]
