"""One MLflow run per job, against a real local MLflow store (sqlite)."""

import json
import logging
import os
import re
import time
import warnings

import click
import mlflow
import pytest
from mlflow import MlflowClient
from transformers import TrainerControl, TrainerState, TrainingArguments

from shared.outputs import RUN_FILE, read_run_id
from shared.track.costs import Costs, RunCosts
from shared.track.energy import EnergyReport
from shared.track.mlflow_run import (
    MlflowMetricsCallback,
    log_training_outputs,
    run_tags,
    tracked_run,
)
from shared.track.provenance import log_datasets
from shared.track.redaction import redact_uri


@pytest.fixture
def store(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    yield uri
    while mlflow.active_run():
        mlflow.end_run()
    mlflow.set_tracking_uri(None)


def open_run(store, output_dir, resume=False, params=None, run_name=None, experiment_name="tests"):
    return tracked_run(
        "lora",
        params or {"learning_rate": 0.001},
        output_dir,
        base_model="models/tiny",
        system_metrics=False,
        tracking_uri=store,
        experiment_name=experiment_name,
        run_name=run_name,
        resume=resume,
    )


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("https://user:s3cret@mlflow.example.com:5000/path", "https://mlflow.example.com:5000/path"),
        ("postgresql://me:pw@db/mlflow", "postgresql://db/mlflow"),
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
        ("sqlite:///mlflow.db", "sqlite:///mlflow.db"),
        (None, None),
    ],
)
def test_credentials_never_leave_a_uri(uri, expected):
    assert redact_uri(uri) == expected


def test_a_run_records_its_id_and_finishes(store, tmp_path):
    out = tmp_path / "out"
    with open_run(store, out, params={"learning_rate": 0.001, "tracking_uri": "http://u:pw@host:5000"}) as outbox:
        pass
    run_id = outbox.run_id
    run = MlflowClient(store).get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["method"] == "lora"
    expected = {"learning_rate": "0.001", "tracking_uri": "http://host:5000", "experiment_name": "tests"}
    assert run.data.params == expected
    assert json.loads((out / RUN_FILE).read_text())["run_id"] == run_id == read_run_id(out)


def test_a_finished_run_says_where_its_runs_table_is(store, tmp_path, caplog):
    with caplog.at_level(logging.INFO), open_run(store, tmp_path / "out") as outbox:
        pass
    experiment_id = MlflowClient(store).get_run(outbox.run_id).info.experiment_id
    link = f"`mlflow ui --backend-store-uri {store}`, then http://127.0.0.1:5000/#/experiments/{experiment_id}"
    assert f"Run {outbox.run_id} finished; see it with {link}?workflowType=machine_learning" in caplog.messages


def test_datasets_are_logged_with_their_source_and_without_a_warning(store, tmp_path):
    data = tmp_path / "train.json"
    data.write_text("[]")
    records = [{"input": "1", "output": "one"}]
    with warnings.catch_warnings(record=True) as caught, open_run(store, tmp_path / "out") as outbox:
        warnings.simplefilter("always")
        log_datasets({"training": (data, records), "dev": (None, records)})
    assert [str(w.message) for w in caught if issubclass(w.category, UserWarning)] == []
    inputs = MlflowClient(store).get_run(outbox.run_id).inputs.dataset_inputs
    sources = {json.loads(i.dataset.source)["uri"] for i in inputs}
    assert sources == {str(data.resolve()), "held out of the training file (dev)"}


def test_a_run_that_dies_is_marked_failed(store, tmp_path):
    with pytest.raises(RuntimeError), open_run(store, tmp_path / "out"):
        raise RuntimeError("model failed to load")
    run_id = read_run_id(tmp_path / "out")
    assert MlflowClient(store).get_run(run_id).info.status == "FAILED"
    assert mlflow.active_run() is None


def test_resume_reopens_the_same_run_and_keeps_first_params(store, tmp_path):
    out = tmp_path / "out"
    with open_run(store, out, params={"learning_rate": 0.001, "epochs": 3}) as first:
        pass
    with open_run(store, out, resume=True, params={"learning_rate": 0.001, "epochs": 5, "seed": 1}) as second:
        pass
    assert second.run_id == first.run_id
    run = MlflowClient(store).get_run(first.run_id)
    assert run.data.params == {"learning_rate": "0.001", "epochs": "3", "seed": "1", "experiment_name": "tests"}
    assert run.info.status == "FINISHED"
    assert len(MlflowClient(store).search_runs([run.info.experiment_id])) == 1


def test_resume_without_a_run_record_is_refused(store, tmp_path):
    with pytest.raises(Exception, match=f"holds no {RUN_FILE}"), open_run(store, tmp_path, resume=True):
        pass


def test_metrics_get_stable_names_throughput_and_memory(store, tmp_path):
    args, state, control = (
        TrainingArguments(output_dir=str(tmp_path), report_to="none"),
        TrainerState(),
        TrainerControl(),
    )
    with open_run(store, tmp_path / "out") as outbox:
        costs = RunCosts(lambda: None, Costs(peak_memory_mb=1e9))  # an earlier segment peaked higher
        callback = MlflowMetricsCallback(outbox, costs)
        for hook in (costs, callback):
            hook.on_train_begin(args, state, control)
        time.sleep(0.01)
        state.global_step, state.num_input_tokens_seen = 10, 5000
        for hook in (costs, callback):
            hook.on_step_end(args, state, control)
        step_log = {"loss": 2.5, "grad_norm": 1.0, "learning_rate": 1e-4, "epoch": 0.5, "train_runtime": 9.0}
        callback.on_log(args, state, control, logs=step_log)
        callback.on_log(args, state, control, logs={"eval_loss": 2.4, "epoch": 0.5})
        callback.on_log(args, state, control, logs={"train_loss": 2.6, "train_runtime": 12.0, "epoch": 1.0})
    metrics = MlflowClient(store).get_run(outbox.run_id).data.metrics
    assert metrics["train_loss"] == 2.5 and metrics["eval_loss"] == 2.4 and metrics["train_loss_mean"] == 2.6
    assert "loss" not in metrics
    assert "train_runtime" not in metrics, "this job's runtime alone; the loop logs the run's over every segment"
    assert metrics["tokens_per_second"] == pytest.approx(5000 / costs.step_seconds)
    assert metrics["peak_memory_mb"] == 1e9, "the run's peak so far, an earlier segment's included"


def launched_run(store, monkeypatch, **settings) -> str:
    """A run created as `mlflow run` (or the study driver) creates one, its id in MLFLOW_RUN_ID."""
    client = MlflowClient(store)
    created = client.create_run(client.create_experiment("projects"), **settings).info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", created)
    return created


def test_attaches_to_the_run_mlflow_run_created(store, tmp_path, monkeypatch):
    created = launched_run(store, monkeypatch)
    client = MlflowClient(store)
    client.log_param(created, "learning_rate", "1e-3")  # as `mlflow run` logs its -P values
    client.log_param(created, "bf16", "true")
    params = {"learning_rate": 0.001, "seed": 42, "bf16": True, "dataset": ("a.json", "b.json")}
    with open_run(store, tmp_path / "out", params=params, experiment_name=None) as outbox:
        pass
    assert outbox.run_id == created
    run = client.get_run(created)
    assert run.data.params == {
        "learning_rate": "1e-3",
        "seed": "42",
        "bf16": "true",
        "dataset": f"a.json{os.pathsep}b.json",
        "experiment_name": "projects",  # where the run is, not the script's default
    }
    assert run.data.tags["method"] == "lora" and run.info.status == "FINISHED"
    assert re.fullmatch(r"lora-\d{8}-\d{6}", run.info.run_name), "MLflow's made-up name is replaced"


@pytest.mark.parametrize(
    ("given", "flag", "expected"), [("study-child-3", None, "study-child-3"), (None, "mine", "mine")]
)
def test_a_launched_run_keeps_a_name_someone_chose(store, tmp_path, monkeypatch, given, flag, expected):
    created = launched_run(store, monkeypatch, run_name=given)
    with open_run(store, tmp_path / "out", run_name=flag, experiment_name=None):
        pass
    assert MlflowClient(store).get_run(created).info.run_name == expected


def test_resuming_under_mlflow_run_logs_into_the_run_that_trained_the_folder(store, tmp_path, monkeypatch):
    out = tmp_path / "out"
    with open_run(store, out) as first:
        pass
    created = launched_run(store, monkeypatch)  # `mlflow run -P resume=true` makes a run of its own
    with open_run(store, out, resume=True, experiment_name=None) as second:
        pass
    assert second.run_id == first.run_id
    client = MlflowClient(store)
    assert client.get_run(created).data.tags["resumed_run_id"] == first.run_id, "says where the training went"


def test_a_launched_run_refuses_another_experiment(store, tmp_path, monkeypatch):
    launched_run(store, monkeypatch)
    with pytest.raises(click.UsageError, match="is in experiment 'projects'.*mlflow run --experiment-name"):
        with open_run(store, tmp_path / "out", experiment_name="elsewhere"):
            pass


def test_tags_say_where_and_on_what_a_run_trained(monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    monkeypatch.setenv("CONTAINER_IMAGE", "peft-workbench:0.1.0")
    monkeypatch.setenv("GIT_COMMIT", "0123abcd")
    tags = run_tags("qlora", "Qwen/Qwen2.5-Coder-1.5B-Instruct")
    assert tags["method"] == "qlora" and tags["base_model"] == "Qwen/Qwen2.5-Coder-1.5B-Instruct"
    assert tags["slurm_job_id"] == "4242" and tags["slurm_array_task_id"] == "3"
    assert tags["container_image"] == "peft-workbench:0.1.0" and tags["mlflow.source.git.commit"] == "0123abcd"
    assert tags["host"] and "gpus" not in tags  # no GPU on this machine
    monkeypatch.delenv("SLURM_JOB_ID")
    assert "slurm_job_id" not in run_tags("lora", "m")


def test_secrets_never_reach_params_or_tags(store, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_abcdefSECRET123")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "pa55word-xyz")
    params = {
        "tracking_uri": "https://alice:pa55word-xyz@mlflow.example.com",
        "base_model": "https://user:hf_abcdefSECRET123@hub.example.com/org/model",
        "note": "token hf_abcdefSECRET123 inline",
    }
    with open_run(store, tmp_path / "out", params=params, run_name="run-hf_abcdefSECRET123") as outbox:
        pass
    run_id = outbox.run_id
    run = MlflowClient(store).get_run(run_id)
    stored = json.dumps([run.data.params, run.data.tags, run.info.run_name])
    assert "hf_abcdefSECRET123" not in stored and "pa55word-xyz" not in stored and "alice" not in stored
    assert run.data.params["tracking_uri"] == "https://mlflow.example.com"
    assert run.data.params["note"] == "token *** inline"


def test_measured_energy_becomes_metrics_and_a_power_series(store, tmp_path):
    """The report is built by hand: no GPU exists on CI to measure one."""
    out = tmp_path / "out"
    energy = EnergyReport(
        True, "nvml_power_sampling", 600.0, 4.0, power_samples=[[0.0, 140.0], [2.0, 160.0], [4.0, 150.0]]
    )
    energy.cpu_joules = 80.0
    with open_run(store, out) as outbox:
        (out / "adapter_config.json").write_text("{}")
        energy.write(out / "energy.json")
        costs = RunCosts(lambda: None).total(4.0, energy)
        log_training_outputs(outbox, out, energy, costs, best_eval_loss=1.5, tokens=30_000)
    client, run_id = MlflowClient(store), outbox.run_id
    metrics = client.get_run(run_id).data.metrics
    assert metrics["energy_joules"] == 600.0 and metrics["avg_power_watts"] == 150.0
    assert metrics["joules_per_1k_tokens"] == 20.0 and metrics["cpu_energy_joules"] == 80.0
    assert metrics["train_runtime"] == 4.0
    series = [(m.step, m.value) for m in client.get_metric_history(run_id, "gpu_power_watts")]
    assert sorted(series) == [(0, 140.0), (2, 160.0), (4, 150.0)]
    assert {a.path for a in client.list_artifacts(run_id)} >= {"energy.json", "model"}
