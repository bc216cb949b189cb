"""compare.py: two methods train into a real MLflow server, then get tabulated, plotted and logged as a summary."""

import csv
import filecmp
import time

import matplotlib.image
import numpy
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from conftest import FAST, load_command, run_in_process, run_script
from mlflow_server import mlflow_server  # noqa: F401

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
METHODS = ("lora", "bitfit")
compare = load_command("scripts/compare.py")
compare_module = compare.callback.__globals__  # the script's functions, for unit tests without a CLI


def assert_real_png(path):
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert matplotlib.image.imread(path).ndim == 3


def assert_points_drawn(path, drawn: bool = True):
    """The plot holds scatter points: pixels of matplotlib's first colour (#1f77b4), which nothing else uses."""
    assert_real_png(path)
    pixels = matplotlib.image.imread(path)[..., :3]
    marker = (abs(pixels - numpy.array([0x1F, 0x77, 0xB4]) / 255).max(axis=-1) < 0.05).sum()
    assert (marker > 20) == drawn, f"{marker} marker pixels"


@pytest.fixture(scope="module")
def compared(tmp_path_factory, mlflow_server, tiny_qwen2, synthetic_dataset):  # noqa: F811
    """LoRA and BitFit trained into the server's experiment 'cmp', then compare.py run against it."""
    cwd = tmp_path_factory.mktemp("compare")
    timings = {}
    for method in METHODS:
        start = time.monotonic()
        result = run_in_process(
            f"methods/{method}/train.py", "--base-model", tiny_qwen2, "--dataset", synthetic_dataset,
            "--output-dir", cwd / method, "--tracking-uri", mlflow_server, "--experiment-name", "cmp",
            "--run-name", f"{method}-cmp", *FAST, "--max-steps", 6, "--eval-steps", 3, "--logging-steps", 3,
            cwd=cwd,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        timings[method] = time.monotonic() - start
    start = time.monotonic()
    result = run_script(
        "scripts/compare.py", "--tracking-uri", mlflow_server, "--experiment-name", "cmp", "--output-dir", cwd / "cmp",
        cwd=cwd,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    timings["compare"] = time.monotonic() - start
    print(f"\n{result.stdout}\ntimings (s): {timings}")
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("cmp")
    runs = {r.data.tags["method"]: r for r in client.search_runs([experiment.experiment_id], "tags.method != ''")}
    return {"cwd": cwd, "out": cwd / "cmp", "stdout": result.stdout, "client": client, "runs": runs, "exp": experiment}


def table_rows(stdout: str) -> dict[str, list[str]]:
    """The printed table's data rows by method (cells split on whitespace: run names and numbers hold none)."""
    lines = stdout.split("\n\n")[0].splitlines()
    assert "energy J" in lines[0] and set(lines[1].replace(" ", "")) == {"-"}
    return {cells[1]: cells for cells in (line.split() for line in lines[2:])}


@pytest.mark.slow
def test_table_lists_both_methods_with_energy_missing(compared):
    rows = table_rows(compared["stdout"])
    assert set(rows) == set(METHODS)
    for method, cells in rows.items():
        run = compared["runs"][method]
        assert cells[:5] == [f"{method}-cmp", method, "-", run.data.params["learning_rate"], run.data.params["seed"]]
        assert cells[8] == "missing", "no GPU here, so no energy was measured"
        assert float(cells[10]) == pytest.approx(run.data.metrics["best_eval_loss"], rel=1e-3)


@pytest.mark.slow
def test_csv_holds_each_runs_numbers(compared):
    with (compared["out"] / "comparison.csv").open() as handle:
        rows = {row["method"]: row for row in csv.DictReader(handle)}
    assert set(rows) == set(METHODS)
    for method, row in rows.items():
        run = compared["runs"][method]
        assert row["run_id"] == run.info.run_id
        assert float(row["trainable_percent"]) == pytest.approx(float(run.data.params["trainable_percent"]))
        assert float(row["best_eval_loss"]) == run.data.metrics["best_eval_loss"]
        assert float(row["train_runtime"]) == run.data.metrics["train_runtime"]
        assert float(row["tokens_per_second"]) > 0 and float(row["peak_memory_mb"]) > 0
        assert row["energy_joules"] == ""
    assert float(rows["lora"]["trainable_percent"]) != float(rows["bitfit"]["trainable_percent"])


@pytest.mark.slow
def test_without_energy_the_plot_shows_runtime_and_says_so(compared):
    assert not (compared["out"] / "energy_vs_best_eval_loss.png").exists()
    assert_points_drawn(compared["out"] / "runtime_vs_best_eval_loss.png")


@pytest.mark.slow
def test_summary_run_serves_both_files_through_the_server(compared, tmp_path):
    client, experiment = compared["client"], compared["exp"]
    (summary,) = client.search_runs([experiment.experiment_id], "tags.summary = 'true'")
    assert summary.info.run_name == "compare-best_eval_loss" and "method" not in summary.data.tags
    assert summary.info.artifact_uri.startswith("mlflow-artifacts:"), "artifacts must go through the server"
    names = {"comparison.csv", "runtime_vs_best_eval_loss.png"}
    assert {a.path for a in client.list_artifacts(summary.info.run_id)} == names
    for name in names:
        downloaded = client.download_artifacts(summary.info.run_id, name, str(tmp_path))
        assert filecmp.cmp(downloaded, compared["out"] / name, shallow=False), name


@pytest.mark.slow
def test_training_run_artifacts_download_through_the_server(compared, tmp_path):
    run = compared["runs"]["lora"]
    downloaded = compared["client"].download_artifacts(run.info.run_id, "energy.json", str(tmp_path))
    assert filecmp.cmp(downloaded, compared["cwd"] / "lora" / "energy.json", shallow=False)


# Fast: a sqlite store in a temporary folder, no server, no training.


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"


def new_experiment(store: str, name: str, tmp_path) -> tuple[MlflowClient, str]:
    client = MlflowClient(store)
    return client, client.create_experiment(name, artifact_location=(tmp_path / "artifacts").as_uri())


def log_run(client, experiment_id, method: str, metrics: dict, percent: float) -> str:
    run = client.create_run(experiment_id, run_name=f"{method}-synthetic", tags={"method": method})
    client.log_param(run.info.run_id, "trainable_percent", percent)
    for key, value in metrics.items():
        client.log_metric(run.info.run_id, key, value)
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def invoke(store: str, *args: str):
    return CliRunner().invoke(compare, ["--tracking-uri", store, *args])


def test_unknown_experiment_is_a_clear_error(store, tmp_path):
    result = invoke(store, "--experiment-name", "nope", "--output-dir", str(tmp_path))
    assert result.exit_code != 0
    assert "No experiment named 'nope'" in result.output


def test_experiment_without_training_runs_is_a_clear_error(store, tmp_path):
    client, experiment_id = new_experiment(store, "empty", tmp_path)
    client.create_run(experiment_id, tags={"summary": "true"})
    result = invoke(store, "--experiment-name", "empty", "--output-dir", str(tmp_path))
    assert result.exit_code != 0
    assert "holds no training runs" in result.output


def test_run_with_energy_becomes_a_plot_point(store, tmp_path):
    client, experiment_id = new_experiment(store, "energy", tmp_path)
    log_run(client, experiment_id, "lora", {"energy_joules": 1234.5, "best_eval_loss": 0.7, "pass_at_1": 0.25}, 0.4)
    log_run(client, experiment_id, "bitfit", {"best_eval_loss": 0.9, "pass_at_1": 0.125}, 0.1)
    rows = compare_module["collect_rows"](client, experiment_id, "pass_at_1")
    assert [row["method"] for row in rows] == ["lora", "bitfit"]
    assert compare_module["plot_points"](rows, "pass_at_1", "energy_joules") == [("lora", 1234.5, 0.25)]
    assert compare_module["plot_title"](rows, "pass_at_1") == "Energy vs pass_at_1"
    assert "pass_at_1" in compare_module["format_table"](rows, "pass_at_1").splitlines()[0]

    out = tmp_path / "out"
    result = invoke(store, "--experiment-name", "energy", "--output-dir", str(out), "--metric", "pass_at_1")
    assert result.exit_code == 0, result.output
    with (out / "comparison.csv").open() as handle:
        csv_rows = {row["method"]: row for row in csv.DictReader(handle)}
    assert csv_rows["lora"]["energy_joules"] == "1234.5" and csv_rows["bitfit"]["energy_joules"] == ""
    assert csv_rows["lora"]["pass_at_1"] == "0.25"
    assert_points_drawn(out / "energy_vs_pass_at_1.png")
    rerun = compare_module["collect_rows"](client, experiment_id, "pass_at_1")
    assert len(rerun) == 2, "the summary run just logged is not a training run"


def test_plot_file_name_is_safe_for_any_metric_name():
    rows = [{"method": "lora", "energy_joules": 5.0, "train_runtime": 2.0, "humaneval/pass_at_1": 0.5}]
    assert compare_module["plot_name"](rows, "humaneval/pass_at_1") == "energy_vs_humaneval_pass_at_1.png"
    assert compare_module["plot_name"](rows, "code eval:pass_at_1") == "runtime_vs_code_eval_pass_at_1.png"


def test_without_energy_runtime_is_the_cost_and_the_title_says_why(tmp_path):
    rows = [
        {"method": "lora", "energy_joules": None, "train_runtime": 12.5, "eval_loss": 1.5},
        {"method": "bitfit", "energy_joules": None, "train_runtime": 8.25, "eval_loss": 1.75},
    ]
    assert (
        compare_module["plot_title"](rows, "eval_loss") == "Runtime vs eval_loss (no run has energy: runtime stands in)"
    )
    assert compare_module["plot_points"](rows, "eval_loss", "train_runtime") == [
        ("lora", 12.5, 1.5),
        ("bitfit", 8.25, 1.75),
    ]
    compare_module["write_plot"](rows, "eval_loss", tmp_path / "runtime.png")
    assert_points_drawn(tmp_path / "runtime.png")
    rows.append({"method": "fft", "energy_joules": 10.0, "train_runtime": 3.0, "eval_loss": None})
    assert compare_module["plot_title"](rows, "eval_loss").endswith(
        "(no run has both energy and eval_loss: runtime stands in)"
    )
    assert compare_module["plot_title"](rows, "pass_at_1") == "Runtime vs pass_at_1: no run has pass_at_1"
    compare_module["write_plot"](rows, "pass_at_1", tmp_path / "empty.png")
    assert_points_drawn(tmp_path / "empty.png", drawn=False)


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (0.7, "0.7000"), (1.23456, "1.235"), (100.0, "100.0"), (1234.56, "1,235"), (123456.7, "123,457"),
        (0.000123456, "0.0001235"), (-2.5, "-2.500"), (0.0, "0"), (None, "missing"), ("lora", "lora"),
    ],
)  # fmt: skip
def test_every_number_is_shown_with_four_significant_digits(value, shown):
    assert compare_module["show"](value) == shown


def test_the_table_shows_every_number_alike(store, tmp_path):
    client, experiment_id = new_experiment(store, "formats", tmp_path)
    metrics = {
        "train_runtime": 95.123,
        "tokens_per_second": 12345.678,
        "best_eval_loss": 0.04567,
        "peak_memory_mb": 1500,
    }
    log_run(client, experiment_id, "lora", metrics, 0.0123456)
    table = compare_module["format_table"](
        compare_module["collect_rows"](client, experiment_id, "best_eval_loss"), "best_eval_loss"
    )
    assert table.splitlines()[2].split()[2:] == ["-", "missing", "missing", "0.01235", "95.12", "1,500", "missing",
                                                 "12,346", "0.04567"]  # fmt: skip


def test_a_metric_a_rescored_run_no_longer_measures_is_missing_not_nan(store, tmp_path):
    client, experiment_id = new_experiment(store, "rescored", tmp_path)
    log_run(client, experiment_id, "lora", {"best_eval_loss": 0.5, "pass_at_10": float("nan")}, 0.4)
    rows = compare_module["collect_rows"](client, experiment_id, "pass_at_10")
    assert rows[0]["pass_at_10"] is None and rows[0]["best_eval_loss"] == 0.5
    assert compare_module["format_table"](rows, "pass_at_10").splitlines()[2].split()[-1] == "missing"


@pytest.mark.parametrize(
    ("runs", "labels"),
    [
        ([("lora", "0.001", "2"), ("lora", "0.001", "3"), ("bitfit", "0.01", "2"), ("bitfit", "0.01", "3")],
         ["lora seed 2", "lora seed 3", "bitfit seed 2", "bitfit seed 3"]),  # finals: a method's seeds
        ([("lora", "0.001", "1"), ("lora", "0.01", "1"), ("bitfit", "0.01", "1")],
         ["lora lr 0.001", "lora lr 0.01", "bitfit"]),  # a sweep of one seed
        ([("lora", "0.001", "1"), ("lora", "0.01", "2")], ["lora lr 0.001 seed 1", "lora lr 0.01 seed 2"]),
        ([("lora", "0.001", "1"), ("lora", "0.001", "1"), ("bitfit", "0.01", "1")],
         ["run-0", "run-1", "bitfit"]),  # alike but for their names
    ],
)  # fmt: skip
def test_each_point_is_labelled_by_what_tells_its_run_apart(runs, labels):
    rows = [
        {"run_name": f"run-{i}", "method": m, "learning_rate": lr, "seed": seed, "x": 0.5}
        | {"train_runtime": 1.0 + i, "energy_joules": None}
        for i, (m, lr, seed) in enumerate(runs)
    ]
    axes = compare_module["draw_plot"](rows, "x").axes[0]
    assert [text.get_text() for text in axes.texts] == labels
    assert axes.get_xlabel() == "runtime (s)"


def study_runs(client, experiment_id: str, study_dir) -> tuple[str, dict[str, str]]:
    """A study's parent run and its children as the study driver tags them, beside a run of no study; the parent's
    id and each child's run id by name."""
    parent = client.create_run(
        experiment_id, run_name="study-tiny",
        tags={"study": "tiny", "study_output_dir": str(study_dir.resolve()), "study_role": "parent"},
    ).info.run_id  # fmt: skip
    children = {}
    for phase, method, rate, seed in [
        ("sweep", "lora", "0.001", 1), ("sweep", "lora", "0.01", 1), ("final", "lora", "0.01", 2),
        ("final", "lora", "0.01", 3), ("final", "bitfit", "0.1", 2), ("final", "bitfit", "0.1", 3),
    ]:  # fmt: skip
        name = f"{method}-lr{rate}-seed{seed}"
        tags = {"mlflow.parentRunId": parent, "study_role": "child", "phase": phase, "method": method}
        run_id = client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
        client.log_param(run_id, "learning_rate", rate)
        client.log_param(run_id, "seed", seed)
        client.log_metric(run_id, "best_eval_loss", 1.0 + seed / 10)
        client.log_metric(run_id, "train_runtime", 10.0 * seed)
        children[name] = run_id
    log_run(client, experiment_id, "fft", {"best_eval_loss": 0.5, "train_runtime": 3.0}, 100.0)
    return parent, children


def test_the_comparison_can_be_kept_to_a_studys_finals(store, tmp_path):
    client, experiment_id = new_experiment(store, "studied", tmp_path)
    study_dir = tmp_path / "study"
    study_dir.mkdir()
    parent, children = study_runs(client, experiment_id, study_dir)
    finals = {name for name in children if "seed1" not in name}

    for study in (str(study_dir), parent):  # the study's output folder, or its run id
        result = invoke(store, "--study", study, "--phase", "final", "--output-dir", str(tmp_path / "out"))
        assert result.exit_code == 0, result.output
        shown = {line.split()[0]: line.split() for line in result.output.split("\n\n")[0].splitlines()[2:]}
        assert set(shown) == finals, "the study's finals alone: no sweep run, no run of another study"
        assert {cells[2] for cells in shown.values()} == {"final"}
        assert shown["lora-lr0.01-seed2"][3:5] == ["0.01", "2"], "the learning rate and seed have columns"
    rows = compare_module["collect_rows"](client, experiment_id, "best_eval_loss", parent, "sweep")
    assert [row["run_name"] for row in rows] == ["lora-lr0.001-seed1", "lora-lr0.01-seed1"]
    labels = [label for label, _, _ in compare_module["plot_points"](rows, "best_eval_loss", "train_runtime")]
    assert labels == ["lora lr 0.001", "lora lr 0.01"]
    elsewhere = invoke(store, "--study", parent, "--experiment-name", "other", "--output-dir", str(tmp_path / "out"))
    assert elsewhere.exit_code == 2 and "ran in experiment 'studied', not 'other'" in elsewhere.output
    summaries = client.search_runs([experiment_id], "tags.summary = 'true'")
    assert {s.data.params.get("study_run_id") for s in summaries} == {parent}
    assert {s.data.params.get("phase") for s in summaries} == {"final"}


def test_a_study_that_is_not_there_is_a_clear_error(store, tmp_path):
    client, experiment_id = new_experiment(store, "no-study", tmp_path)
    plain = log_run(client, experiment_id, "lora", {"best_eval_loss": 0.5}, 0.4)
    out = str(tmp_path / "out")
    for study, message in [
        (plain, f"--study {plain}: run 'lora-synthetic' is no study's parent run"),
        ("no-such-run", "--study no-such-run: neither a folder nor a run"),
        (str(tmp_path), f"no study ran in {tmp_path.resolve()}"),
    ]:
        result = invoke(store, "--study", study, "--output-dir", out)
        assert result.exit_code == 1 and message in result.output, result.output
    result = invoke(store, "--output-dir", out)
    assert result.exit_code == 2 and "give --experiment-name, --study, or both" in result.output
