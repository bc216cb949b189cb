"""scripts/study.py end to end on the tiny model: sweep, selection, finals over seeds, evaluation, one MLflow study;
a driver killed with SIGKILL that a rerun finishes without retraining or duplicating a child; a study whose data
its children refuse stops after the first, failed."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from conftest import REPO, run_script, script_env, spelled_digits

pytestmark = pytest.mark.slow

COMMON_FLAGS = {
    "max_steps": 8, "eval_steps": 4, "logging_steps": 4, "batch_size": 8, "gradient_accumulation": 1,
    "max_length": 64, "system_metrics": False,
}  # fmt: skip


def write_study(folder: Path, model: Path, train: Path, methods: dict, seeds: list[int], **more) -> Path:
    (folder / "dev.json").write_text(json.dumps(spelled_digits(16, seed=5)))
    (folder / "benchmark.json").write_text(json.dumps(spelled_digits(4, seed=9)))
    spec = {
        "name": "tiny-study",
        "base_model": str(model),
        "dataset": str(train),
        "dev_dataset": "dev.json",  # relative: to the directory the study runs from
        "evaluation": {"benchmark": "exact-match", "data": "benchmark.json", "max_new_tokens": 6},
        "flags": COMMON_FLAGS,
        "methods": methods,
        "sweep_seeds": [1],
        "seeds": seeds,
        **more,
    }
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def study_runs(store: str) -> tuple[MlflowClient, object, list]:
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("tiny-study")
    runs = client.search_runs([experiment.experiment_id])
    [parent] = [r for r in runs if r.data.tags.get("study_role") == "parent"]
    return client, parent, [r for r in runs if r.data.tags.get("study_role") == "child"]


def identity(run) -> tuple[str, float, int]:
    return run.data.tags["method"], float(run.data.tags["learning_rate"]), int(run.data.tags["seed"])


def start_and_kill_after_first_child(tmp_path: Path, spec: Path, store: str) -> tuple[Path, int]:
    """Run the study's driver until its first child finishes, then SIGKILL it; the finished child's marker and its
    modification time."""
    command = [sys.executable, str(REPO / "scripts/study.py"), "run", str(spec), "--output-dir", "study"]
    driver = subprocess.Popen([*command, "--tracking-uri", store], cwd=tmp_path, env=script_env())
    markers = tmp_path / "study" / "runs"
    deadline = time.monotonic() + 300
    while not list(markers.glob("*/*/*/training_complete.json")) and time.monotonic() < deadline:
        time.sleep(0.2)
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    [first] = list(markers.glob("*/*/*/training_complete.json"))
    return first, first.stat().st_mtime_ns


def test_a_study_sweeps_selects_and_scores_each_method_at_its_own_rate(tmp_path, tiny_qwen2, synthetic_dataset):
    """The driver is killed with SIGKILL after its first child ends; rerunning the same command finishes the study
    without retraining that child or duplicating any, and everything below holds of the finished study."""
    methods = {"lora": {"learning_rates": [1e-3, 1e-2]}, "bitfit": {"learning_rates": [1e-3, 1e-1]}}
    # Reusing the sweep winner as the seed-1 final saves a training per method here; a study's default draws apart.
    spec = write_study(tmp_path, tiny_qwen2, synthetic_dataset, methods, seeds=[1, 2], reuse_sweep_seeds=True)
    store = f"sqlite:///{tmp_path}/mlflow.db"
    first, first_written = start_and_kill_after_first_child(tmp_path, spec, store)
    # No pause: the child in flight got SIGTERM when its driver died and may still be stopping; the rerun waits.
    result = run_script("scripts/study.py", "run", spec, "--output-dir", "study", "--tracking-uri", store, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert first.stat().st_mtime_ns == first_written, "a finished child is never retrained"
    assert "1 already ended, 3 to train" in result.stderr
    client, parent, children = study_runs(store)
    link = f"http://127.0.0.1:5000/#/experiments/{parent.info.experiment_id}?workflowType=machine_learning"
    assert f"FINISHED; its runs in MLflow: `mlflow ui --backend-store-uri {store}`, then {link}" in result.stderr

    assert parent.info.status == "FINISHED" and parent.data.tags["study"] == "tiny-study"
    grid = {(m, r, 1) for m, plan in methods.items() for r in plan["learning_rates"]}
    by_identity = {identity(run): run for run in children}
    assert len(children) == len(by_identity), "one run per child"
    sweep = {key: run for key, run in by_identity.items() if run.data.tags["phase"] == "sweep"}
    assert set(sweep) == grid
    # The chosen rate is the argmin of the best dev loss read back from the children (one sweep seed).
    for method, plan in methods.items():
        losses = {rate: sweep[(method, rate, 1)].data.metrics["best_eval_loss"] for rate in plan["learning_rates"]}
        assert float(parent.data.params[f"learning_rate.{method}"]) == min(losses, key=losses.get), losses
    chosen = {m: float(parent.data.params[f"learning_rate.{m}"]) for m in methods}
    finals = {key: run for key, run in by_identity.items() if run.data.tags["final"] == "true"}
    assert set(finals) == {(m, chosen[m], seed) for m in methods for seed in (1, 2)}
    assert set(by_identity) == grid | set(finals), "the seed-1 final child is the sweep child, reused"
    for run in children:
        assert run.info.status == "FINISHED" and run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert {k: run.data.params[k] for k in ("max_steps", "eval_steps", "patience")} == {
            "max_steps": "8", "eval_steps": "4", "patience": "3",
        }  # fmt: skip
        assert float(run.data.params["learning_rate"]) == identity(run)[1]
    for run in finals.values():  # scored on the benchmark, logged into its own training run
        assert 0 <= run.data.metrics["exact_match"] <= 1 and "contamination_fraction" in run.data.metrics
    assert not any("exact_match" in run.data.metrics for key, run in by_identity.items() if key not in finals)

    # Same seed, same records in the same order, whatever the method; another seed, another order.
    order = {key: run.data.params["data_order_sha256"] for key, run in by_identity.items()}
    assert len({digest for (m, r, seed), digest in order.items() if seed == 1}) == 1
    assert order[("lora", chosen["lora"], 1)] != order[("lora", chosen["lora"], 2)]

    # The report, written at the end of the run: its numbers are the children's own, read back here.
    report = tmp_path / "study" / "report"
    summary = {row["method"]: row for row in csv.DictReader((report / "summary.csv").open())}
    assert set(summary) == set(methods)
    for method, row in summary.items():
        scores = [run.data.metrics["exact_match"] for (m, _, _), run in finals.items() if m == method]
        assert float(row["exact_match_mean"]) == pytest.approx(sum(scores) / len(scores))
        assert float(row["learning_rate"]) == chosen[method] and row["seeds"] == "2"
    [pair] = list(csv.DictReader((report / "pairs.csv").open()))
    assert {pair["a"], pair["b"]} == set(methods) and 0 <= float(pair["p_value_holm_adjusted"]) <= 1
    curve = [row for row in csv.DictReader((report / "expected_best.csv").open()) if row["method"] == "lora"]
    assert [row["trials"] for row in curve] == ["1", "2"]
    lora_sweep = [run.data.metrics["best_eval_loss"] for (m, _, _), run in sweep.items() if m == "lora"]
    assert float(curve[0]["expected_best_dev_loss"]) == pytest.approx(sum(lora_sweep) / 2)  # one trial: the mean
    assert len(list(csv.DictReader((report / "pareto.csv").open()))) == len(methods)
    text = (report / "report.md").read_text()
    assert "## Paired comparisons" in text and "**Power**" in text and "## Reproducibility record" in text
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/report.md", "report/pareto.png", "report/expected_best.png", "report/per_task.json"} <= logged
    assert not any("samples" in path for path in logged), "the children's samples stay with the children"

    spec_artifacts = [a.path for a in client.list_artifacts(parent.info.run_id, "spec")]
    assert spec_artifacts == ["spec/spec.yaml"]
    status = run_script("scripts/study.py", "status", "--output-dir", "study", "--tracking-uri", store, cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert status.stdout.count(" done ") == len(by_identity) and "0 failed" in status.stdout


def test_a_study_whose_data_its_children_refuse_stops_after_the_first_and_fails(tmp_path, tiny_qwen2):
    train = tmp_path / "train.json"
    train.write_text(json.dumps([*spelled_digits(8, seed=3), {"input": "one two"}]))  # the last has no output
    spec = write_study(tmp_path, tiny_qwen2, train, {"lora": {"learning_rates": [1e-3, 1e-2]}}, seeds=[2])
    store = f"sqlite:///{tmp_path}/mlflow.db"
    result = run_script("scripts/study.py", "run", spec, "--output-dir", "study", "--tracking-uri", store, cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    refused = f"lora-lr0.001-seed1 was refused before it trained: {train}: record 8: field 'output' is missing"
    assert refused in result.stderr
    _, parent, children = study_runs(store)
    assert parent.info.status == "FAILED", "the parent ends as the command did"
    statuses = {run.info.run_name: run.info.status for run in children}
    assert statuses == {"lora-lr0.001-seed1": "FAILED", "lora-lr0.01-seed1": "SCHEDULED"}, "one child ran"
    status = run_script("scripts/study.py", "status", "--output-dir", "study", "--tracking-uri", store, cwd=tmp_path)
    assert "0 done, 1 failed, 0 running, 0 interrupted, 1 pending" in status.stdout
    link = f"http://127.0.0.1:5000/#/experiments/{parent.info.experiment_id}?workflowType=machine_learning"
    assert link in status.stdout
