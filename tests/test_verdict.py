"""`study.py verdict SCORES.csv`: a verdict from a long table of per-task scores made anywhere, on synthetic tables
whose answers are known; and every way a table can be malformed, refused with its row and column."""

import csv
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from conftest import run_in_process
from shared.study.statistics import FRESH_SEED_MIN_SEEDS


def pass_fail(rng: np.random.Generator, rate: float, tasks: int) -> list[int]:
    """A seed's outcomes passing exactly `rate` of the tasks, on tasks drawn at random."""
    return [int(v) for v in rng.permutation(tasks) < round(rate * tasks)]


def write_scores(path: Path, runs: dict[str, list[list[float]]], costs: dict | None = None) -> Path:
    """A long table: one row per method, seed (1, 2, ...) and task (t0, t1, ...); costs[method][seed] a dict."""
    costs = costs or {}
    names = sorted({name for seeds in costs.values() for run in seeds for name in run})
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["method", "seed", "task_id", "score", *names])
        for method, seeds in runs.items():
            for seed, scores in enumerate(seeds, start=1):
                run_costs = costs.get(method, [{}] * len(seeds))[seed - 1]
                for task, score in enumerate(scores):
                    writer.writerow([method, seed, f"t{task}", score, *(run_costs.get(n, "") for n in names)])
    return path


def verdict(tmp_path: Path, scores: Path) -> dict:
    result = run_in_process("scripts/study.py", "verdict", scores, "--output-dir", tmp_path / "verdict")
    assert result.returncode == 0, result.stderr[-3000:]
    folder = tmp_path / "verdict"
    read = {name: list(csv.DictReader((folder / f"{name}.csv").open())) for name in ("summary", "pairs")}
    return {**read, "text": (folder / "report.md").read_text(), "folder": folder}


def test_a_gap_that_is_seed_luck_is_not_significant(tmp_path):
    """A's seeds pass 65%, 35% and 50% of 1,000 tasks, B's 45%, 40% and 41%: A's mean is 8 points higher, far
    beyond what 1,000 tasks leave to chance, but A's own seeds differ by 30 points."""
    rng = np.random.default_rng(1)
    runs = {"a": [pass_fail(rng, r, 1000) for r in (0.65, 0.35, 0.50)]}
    runs["b"] = [pass_fail(rng, r, 1000) for r in (0.45, 0.40, 0.41)]
    [pair] = verdict(tmp_path, write_scores(tmp_path / "scores.csv", runs))["pairs"]
    assert float(pair["difference"]) == pytest.approx(0.50 - 0.42)
    assert pair["test"] == "t over seeds and tasks" and pair["replicates"] == "seeds and tasks"
    assert float(pair["p_value_holm_adjusted"]) > 0.05 and pair["significant_after_holm"] == "False"
    assert float(pair["difference_low"]) < 0 < float(pair["difference_high"])
    assert float(pair["seed_variance_share"]) > 0.9, "the seeds, not the tasks, make it uncertain"
    # Welch's t on the seed means, which is what is left once the tasks' share is small, agrees.
    welch = stats.ttest_ind([0.65, 0.35, 0.50], [0.45, 0.40, 0.41], equal_var=False)
    assert float(pair["p_value"]) == pytest.approx(welch.pvalue, abs=0.03)
    # Treating the checkpoints as fixed, as the report did, would have called it: a paired test over the tasks.
    per_task = np.mean(runs["a"], axis=0) - np.mean(runs["b"], axis=0)
    assert stats.ttest_1samp(per_task, 0).pvalue < 1e-6


def test_a_consistent_gap_over_five_seeds_is_significant(tmp_path):
    rng = np.random.default_rng(2)
    a_rates = [0.60, 0.62, 0.59, 0.61, 0.60]
    runs = {"a": [pass_fail(rng, r, 200) for r in a_rates], "b": [pass_fail(rng, r - 0.15, 200) for r in a_rates]}
    [pair] = verdict(tmp_path, write_scores(tmp_path / "scores.csv", runs))["pairs"]
    assert float(pair["difference"]) == pytest.approx(0.15)
    assert float(pair["p_value_holm_adjusted"]) < 0.01 and pair["significant_after_holm"] == "True"
    assert 0 < float(pair["difference_low"]) < 0.15 < float(pair["difference_high"])
    assert float(pair["detectable_difference"]) < 0.15


def test_holm_is_applied_across_the_pairs_in_a_column_that_says_so(tmp_path):
    rng = np.random.default_rng(3)
    rates = {"lora": 0.6, "bitfit": 0.45, "prefix": 0.44}
    runs = {m: [pass_fail(rng, r + d, 150) for d in (0.0, 0.02, -0.01)] for m, r in rates.items()}
    pairs = verdict(tmp_path, write_scores(tmp_path / "scores.csv", runs))["pairs"]
    assert [(row["a"], row["b"]) for row in pairs] == [("lora", "bitfit"), ("lora", "prefix"), ("bitfit", "prefix")]
    p = [float(row["p_value"]) for row in pairs]
    order = np.argsort(p)
    expected, running = [0.0] * 3, 0.0
    for rank, index in enumerate(order):  # Holm by hand: (m - k) p_(k), kept from falling, capped at 1
        running = max(running, min(1.0, (3 - rank) * p[index]))
        expected[index] = running
    assert [float(row["p_value_holm_adjusted"]) for row in pairs] == pytest.approx(expected)
    assert pairs[0]["significant_after_holm"] == "True" and pairs[2]["significant_after_holm"] == "False"


def test_one_seed_per_method_gives_no_fresh_seed_probability_and_tests_the_models_only(tmp_path):
    rng = np.random.default_rng(4)
    runs = {"a": [pass_fail(rng, 0.7, 20)], "b": [pass_fail(rng, 0.3, 20)]}
    result = verdict(tmp_path, write_scores(tmp_path / "scores.csv", runs))
    [pair] = result["pairs"]
    assert pair["p_a_beats_b"] == pair["p_a_beats_b_low"] == pair["p_a_beats_b_high"] == ""
    assert pair["p_a_beats_b_note"] == f"needs >= {FRESH_SEED_MIN_SEEDS} seeds of each method"
    row = next(line for line in result["text"].splitlines() if line.startswith("| a | b |"))
    assert row.endswith(f"| needs >= {FRESH_SEED_MIN_SEEDS} seeds of each method |") and "[0" not in row.split("|")[-2]
    assert pair["test"] == "exact McNemar" and pair["replicates"].startswith("tasks only")
    only_a = sum(x > y for x, y in zip(runs["a"][0], runs["b"][0], strict=True))
    only_b = sum(x < y for x, y in zip(runs["a"][0], runs["b"][0], strict=True))
    assert float(pair["p_value"]) == pytest.approx(stats.binomtest(only_a, only_a + only_b).pvalue)
    # At 20 tasks and one pair, 6 tasks all one way are the fewest that reach 5%: nothing under 0.30 can be.
    assert float(pair["detectable_difference"]) > 0.30
    assert (
        "6 tasks are the fewest that reach 0.05, so at 20 tasks nothing under 0.300 can be significant"
        in (result["text"])
    )


def test_all_zero_scores_claim_no_certainty(tmp_path):
    """Every run fails every task: nothing varies, so there is no interval (not 0 [0, 0]) and no power to state."""
    runs = {"a": [[0] * 20] * 2, "b": [[0] * 20] * 2}
    result = verdict(tmp_path, write_scores(tmp_path / "scores.csv", runs))
    [pair] = result["pairs"]
    assert float(pair["difference"]) == 0 and float(pair["p_value"]) == 1
    assert pair["difference_low"] == pair["difference_high"] == pair["detectable_difference"] == ""
    assert "| a | b | 2, 2 | 0 (no spread) | t over seeds and tasks | 1 | 1 | - |" in result["text"]


def test_from_the_minimum_seeds_the_fresh_seed_probability_has_its_interval(tmp_path):
    rng = np.random.default_rng(5)
    a_rates, b_rates = [0.5, 0.55, 0.6, 0.52], [0.45, 0.5, 0.4, 0.47]
    runs = {"a": [pass_fail(rng, r, 100) for r in a_rates], "b": [pass_fail(rng, r, 100) for r in b_rates]}
    [pair] = verdict(tmp_path, write_scores(tmp_path / "scores.csv", runs))["pairs"]
    wins = sum((a > b) + 0.5 * (a == b) for a in a_rates for b in b_rates) / 16
    assert float(pair["p_a_beats_b"]) == pytest.approx(wins)
    assert float(pair["p_a_beats_b_low"]) < wins <= float(pair["p_a_beats_b_high"]) and not pair["p_a_beats_b_note"]


def test_costs_are_positive_intervals_and_a_missing_one_keeps_a_method_off_the_front(tmp_path):
    rng = np.random.default_rng(6)
    runs = {m: [pass_fail(rng, r, 50) for _ in range(2)] for m, r in (("lora", 0.6), ("bitfit", 0.5), ("fft", 0.7))}
    costs = {
        "lora": [{"train_runtime": 4.8, "peak_memory_mb": 700}, {"train_runtime": 5.2, "peak_memory_mb": 700}],
        "bitfit": [{"train_runtime": 6.4, "peak_memory_mb": 600}, {"train_runtime": 15.4, "peak_memory_mb": 600}],
        "fft": [{"train_runtime": 1.7}, {"train_runtime": 23.1}],  # no memory recorded
    }
    result = verdict(tmp_path, write_scores(tmp_path / "scores.csv", runs, costs))
    summary = {row["method"]: row for row in result["summary"]}
    bitfit = summary["bitfit"]
    assert float(bitfit["train_runtime_geometric_mean"]) == pytest.approx(math.sqrt(6.4 * 15.4))
    assert (float(bitfit["train_runtime_low"]), float(bitfit["train_runtime_high"])) == (6.4, 15.4)
    assert bitfit["train_runtime_interval"] == "observed range"
    assert summary["fft"]["peak_memory_mb_geometric_mean"] == "" and summary["fft"]["peak_memory_mb_interval"] == (
        "missing"
    )
    pareto = {row["method"]: row for row in csv.DictReader((result["folder"] / "pareto.csv").open())}
    assert pareto["fft"]["pareto_optimal"] == "" and pareto["fft"]["missing"] == "peak_memory_mb"
    assert pareto["lora"]["pareto_optimal"] == "True", "fft scores higher and runs shorter, but lacks a memory"
    assert pareto["bitfit"]["pareto_optimal"] == "True", "the least memory"
    assert f"| fft | - | {math.sqrt(1.7 * 23.1):.4g} | 0.7 | missing peak_memory_mb |" in result["text"]
    assert "**train_runtime is too noisy to compare methods by**" in result["text"]
    assert "bitfit 6.4 to 15.4; fft 1.7 to 23.1" in result["text"]
    assert (result["folder"] / "pareto.png").stat().st_size > 0


def test_the_report_names_the_tasks_it_scored(tmp_path):
    runs = {"a": [[1, 0, 1]] * 2, "b": [[0, 0, 1]] * 2}
    text = verdict(tmp_path, write_scores(tmp_path / "scores.csv", runs))["text"]
    assert "Scored on 3 tasks (every task of scores.csv): t0-2." in text


def refused(tmp_path: Path, text: str) -> str:
    path = tmp_path / "scores.csv"
    path.write_text(text)
    result = run_in_process("scripts/study.py", "verdict", path, "--output-dir", tmp_path / "out")
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    assert not (tmp_path / "out" / "report.md").exists()
    return result.stderr


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("method,seed,score\na,1,0.5\n", "scores.csv: no column task_id"),
        ("method,seed,task_id,score\na,1,t0,1.5\nb,1,t0,0\n", "row 2, column score: 1.5 is outside [0, 1]"),
        ("method,seed,task_id,score\na,1,t0,0.5\nb,1,t0,pass\n", "row 3, column score: 'pass' is not a number"),
        ("method,seed,task_id,score\na,1,t0,0.5\nb,,t0,1\n", "row 3, column seed: empty"),
        ("method,seed,task_id,score\na,1,t0,1\nb,1,t0,0\na,1,t1,1\n", "row 4, column task_id: task t1 is scored for a "
         "but not for b"),
        ("method,seed,task_id,score\na,1,t0,1\na,2,t0,1\na,1,t1,0\nb,1,t0,0\nb,1,t1,0\n", "row 4, column task_id: "
         "task t1 is scored for another seed of a but not for seed 2"),
        ("method,seed,task_id,score\na,1,t0,1\na,1,t0,0\nb,1,t0,0\n",
         "row 3, column task_id: a seed 1 scored t0 twice"),
        ("method,seed,task_id,score,train_runtime\na,1,t0,1,5\na,1,t1,1,6\nb,1,t0,0,\nb,1,t1,0,\n",
         "row 3, column train_runtime: 6, but the run's other rows say 5"),
        ("method,seed,task_id,score,energy\na,1,t0,1,-3\nb,1,t0,0,2\n", "row 2, column energy: -3 is outside >= 0"),
        ("method,seed,task_id,score\na,1,t0,1\na,2,t0,0\n", "one method (a): a verdict compares two or more"),
    ],
)  # fmt: skip
def test_a_malformed_table_is_refused_with_its_row_and_column(tmp_path, table, message):
    assert message in refused(tmp_path, table)
