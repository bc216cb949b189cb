"""Runs left RUNNING by a killed job: what a run records of its process, its heartbeat, and scripts/runs.py."""

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from conftest import FAST, REPO, load_command, run_script, script_env
from mlflow_server import free_port, mlflow_server  # noqa: F401
from shared.track.reaping import HeartbeatSettingError, boot_id, heartbeat, process_start_ticks, process_tags

runs_command = load_command("scripts/runs.py")
HOST = socket.gethostname()
ELSEWHERE = {"host": "elsewhere", "boot_id": "another-boot", "pid": "1234", "pid_start_ticks": "99"}


@pytest.fixture
def store(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    yield uri
    mlflow.set_tracking_uri(None)


def dead_process() -> dict[str, str]:
    """Process tags of a process of this machine that has exited."""
    child = subprocess.Popen(["sleep", "30"])
    tags = {
        "host": HOST,
        "boot_id": boot_id(),
        "pid": str(child.pid),
        "pid_start_ticks": process_start_ticks(child.pid),
    }
    child.kill()
    child.wait()
    return tags


def create_runs(client: MlflowClient, experiment: str, tagged: dict[str, dict[str, str]]) -> dict[str, str]:
    """A RUNNING run per name with those tags, in a new experiment; their ids by name."""
    experiment_id = client.create_experiment(experiment)
    return {
        name: client.create_run(experiment_id, tags=tags, run_name=name).info.run_id for name, tags in tagged.items()
    }


def reap(uri: str, experiment: str, *args) -> dict[str, str]:
    """`scripts/runs.py reap`: its line for each run, by run id."""
    result = CliRunner().invoke(runs_command, ["reap", "--experiment-name", experiment, "--tracking-uri", uri, *args])
    assert result.exit_code == 0, result.output
    verdicts = (re.match(r"(?:would reap|reaped|left) (\w+) ", line) for line in result.output.splitlines())
    return {verdict[1]: verdict.string for verdict in verdicts if verdict}


def test_process_tags_name_this_process_and_a_gone_one_has_no_start_time():
    tags = process_tags()
    assert tags["pid"] == str(os.getpid())
    assert tags["boot_id"] == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    assert int(tags["pid_start_ticks"]) > 0
    assert process_start_ticks(int(dead_process()["pid"])) is None


def test_reap_ends_the_runs_whose_process_is_gone_and_says_why_for_each(store):
    now = time.time()
    client = MlflowClient(store)
    this_process = {"host": HOST, **process_tags()}
    ids = create_runs(
        client,
        "reap",
        {
            "dead": dead_process(),
            "reused-pid": {**this_process, "pid_start_ticks": "1"},  # this pid, but a process started at boot
            "alive": this_process,
            "stale": {**ELSEWHERE, "heartbeat": str(int(now - 1000))},
            "fresh": {**ELSEWHERE, "heartbeat": str(int(now - 10))},
            "untagged": {},
            "ended": dead_process(),
        },
    )
    client.set_terminated(ids["ended"], "FINISHED")

    planned = reap(store, "reap", "--dry-run")
    assert {run_id for run_id, line in planned.items() if line.startswith("would reap")} == {
        ids["dead"], ids["reused-pid"], ids["stale"]
    }  # fmt: skip
    assert {client.get_run(i).info.status for i in ids.values()} == {"RUNNING", "FINISHED"}, "a dry run changes nothing"

    lines = reap(store, "reap")
    assert ids["ended"] not in lines, "only RUNNING runs are judged"
    dead_pid = client.get_run(ids["dead"]).data.tags["pid"]
    expected = {
        "dead": ("reaped", f"process {dead_pid} on host {HOST} no longer runs"),
        "reused-pid": ("reaped", f"process {os.getpid()} on host {HOST} no longer runs"),
        "alive": ("left", f"process {os.getpid()} on host {HOST} still runs"),
        "stale": ("reaped", "no heartbeat for 10"),
        "fresh": ("left", "heartbeat 1"),
        "untagged": ("left", "no heartbeat tag"),
    }
    for name, (action, reason) in expected.items():
        assert lines[ids[name]].startswith(f"{action} {ids[name]} ({name}): {reason}"), lines[ids[name]]
        run = client.get_run(ids[name])
        assert run.info.status == ("FAILED" if action == "reaped" else "RUNNING"), name
        if action == "reaped":
            assert run.data.tags["reaped"] == "true" and run.data.tags["reaped_reason"].startswith(reason)


@pytest.mark.slow
def test_reap_against_a_tracking_server_judges_other_hosts_by_their_heartbeat(mlflow_server):  # noqa: F811
    client = MlflowClient(mlflow_server)
    now = time.time()
    ids = create_runs(
        client,
        f"reap-{free_port()}",  # the server lives for the session: an experiment of this test's own
        {"stale": {**ELSEWHERE, "heartbeat": str(int(now - 120))}, "fresh": {**ELSEWHERE, "heartbeat": str(int(now))}},
    )
    experiment = client.get_run(ids["stale"]).info.experiment_id
    lines = reap(mlflow_server, client.get_experiment(experiment).name, "--stale-after", "60")
    assert lines[ids["stale"]].startswith(f"reaped {ids['stale']} (stale): no heartbeat for 12")
    assert lines[ids["fresh"]].startswith(f"left {ids['fresh']} (fresh): heartbeat ")
    assert client.get_run(ids["stale"]).info.status == "FAILED"
    assert client.get_run(ids["fresh"]).info.status == "RUNNING"


def test_reap_names_an_experiment_that_is_not_there(store):
    result = CliRunner().invoke(runs_command, ["reap", "--experiment-name", "nope", "--tracking-uri", store])
    assert result.exit_code == 1
    assert "no experiment named 'nope' in this tracking store" in result.output


def test_mark_failed_ends_a_running_run_and_leaves_an_ended_one(store, tmp_path):
    client = MlflowClient(store)
    ids = create_runs(client, "mark", {"running": {}, "finished": {}})
    client.set_terminated(ids["finished"], "FINISHED")
    for name, run_id in ids.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "mlflow_run.json").write_text(json.dumps({"run_id": run_id}))
        args = ["mark-failed", "--output-dir", tmp_path / name, "--reason", "killed", "--tracking-uri", store]
        result = CliRunner().invoke(runs_command, list(map(str, args)))
        assert result.exit_code == 0, result.output
    assert client.get_run(ids["running"]).info.status == "FAILED"
    assert client.get_run(ids["running"]).data.tags["reaped_reason"] == "killed"
    assert client.get_run(ids["finished"]).info.status == "FINISHED"
    assert "reaped" not in client.get_run(ids["finished"]).data.tags
    assert "already ended FINISHED: left as it is" in result.output


@pytest.mark.slow
def test_a_heartbeat_is_refreshed_while_the_block_runs(store, monkeypatch):
    monkeypatch.setenv("PEFT_WORKBENCH_HEARTBEAT_SECONDS", "0.1")
    mlflow.set_tracking_uri(store)
    client = MlflowClient(store)
    run_id = create_runs(client, "beat", {"run": {}})["run"]
    with heartbeat(run_id):
        first = wait_for_tag(client, run_id, "heartbeat", lambda value: True)
        wait_for_tag(client, run_id, "heartbeat", lambda value: value != first)  # whole seconds: a new one within 3
    assert abs(int(client.get_run(run_id).data.tags["heartbeat"]) - time.time()) < 5


def wait_for_tag(client: MlflowClient, run_id: str, key: str, condition, timeout: float = 3.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = client.get_run(run_id).data.tags.get(key)
        if value is not None and condition(value):
            return value
        time.sleep(0.05)
    raise AssertionError(f"tag {key} of run {run_id} not as expected after {timeout} s")


def test_a_heartbeat_to_a_lost_server_neither_raises_nor_holds_up_the_job(monkeypatch, caplog):
    monkeypatch.setenv("PEFT_WORKBENCH_HEARTBEAT_SECONDS", "0.1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    mlflow.set_tracking_uri(f"http://127.0.0.1:{free_port()}")  # nothing listens there
    try:
        with caplog.at_level(logging.DEBUG, logger="shared.track.reaping"):
            with heartbeat("0123456789abcdef"):
                time.sleep(0.5)
            started = time.monotonic()
        assert time.monotonic() - started < 1.5, "a beat in flight is waited for 1 s at most"
    finally:
        mlflow.set_tracking_uri(None)
    assert "Heartbeat of run 0123456789abcdef not recorded" in caplog.text


@pytest.mark.parametrize("value", ["0", "-5", "soon"])
def test_a_heartbeat_interval_must_be_a_positive_number(monkeypatch, value):
    monkeypatch.setenv("PEFT_WORKBENCH_HEARTBEAT_SECONDS", value)
    with pytest.raises(HeartbeatSettingError, match="PEFT_WORKBENCH_HEARTBEAT_SECONDS"):
        with heartbeat("0123456789abcdef"):
            pass


# Long enough that a job is still training when the test is done with it; it is killed then.
FOREVER = 100000


def training_args(model, dataset, out, steps: int) -> list:
    args = ["--base-model", model, "--dataset", dataset, "--output-dir", out, "--experiment-name", "tests", *FAST]
    args += ["--gradient-accumulation", 4, "--eval-steps", 5, "--max-steps", steps, "--no-system-metrics"]
    return [*args, "--patience", 100000]  # the step count decides when training ends, not early stopping


def start_training(cwd, model, dataset, out, steps: int, env=None) -> subprocess.Popen:
    args = training_args(model, dataset, out, steps)
    command = [sys.executable, str(REPO / "methods/lora/train.py"), *map(str, args)]
    env = script_env({"MLFLOW_TRACKING_URI": f"sqlite:///{cwd}/mlflow.db", **(env or {})})
    with (cwd / f"{out.name}.log").open("w") as log:
        return subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)


def wait_for_file(folder, pattern, jobs, timeout: float = 240) -> None:
    """Wait until a file matching `pattern` is in `folder`, failing with the jobs' logs when one ends or time is up."""
    deadline = time.monotonic() + timeout
    outputs = [job.args[job.args.index("--output-dir") + 1] for job in jobs]
    while not any(folder.glob(pattern)):
        ended = [out for out, job in zip(outputs, jobs, strict=True) if job.poll() is not None]
        assert not ended, f"the training into {ended} ended early: see its .log beside it"
        if time.monotonic() > deadline:
            tails = "\n".join(f"{out}.log:\n" + Path(f"{out}.log").read_text()[-1500:] for out in outputs)
            raise AssertionError(f"no {folder}/{pattern} after {timeout} s; the jobs' logs end:\n{tails}")
        time.sleep(0.1)


@pytest.mark.slow
def test_a_killed_training_is_reaped_a_live_one_is_not_and_the_reaped_one_resumes(
    tmp_path, tiny_qwen2, synthetic_dataset
):
    store = f"sqlite:///{tmp_path}/mlflow.db"
    killed_out, alive_out = tmp_path / "killed", tmp_path / "alive"
    MlflowClient(store).create_experiment("tests")  # the store's tables made once, not by two jobs at once
    killed = start_training(tmp_path, tiny_qwen2, synthetic_dataset, killed_out, 30)
    alive = start_training(tmp_path, tiny_qwen2, synthetic_dataset, alive_out, FOREVER,
                           env={"PEFT_WORKBENCH_HEARTBEAT_SECONDS": "0.5"})  # fmt: skip
    try:
        wait_for_file(killed_out, "checkpoint-*/trainer_state.json", [killed, alive])
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        wait_for_file(alive_out, "mlflow_run.json", [alive])
        client = MlflowClient(store)
        killed_id = json.loads((killed_out / "mlflow_run.json").read_text())["run_id"]
        alive_id = json.loads((alive_out / "mlflow_run.json").read_text())["run_id"]
        assert client.get_run(killed_id).info.status == "RUNNING", "SIGKILL leaves no chance to end the run"
        beat = client.get_run(alive_id).data.tags["heartbeat"]
        try:
            wait_for_tag(client, alive_id, "heartbeat", lambda value: value != beat, timeout=30)
        except AssertionError as err:
            state = "still runs" if alive.poll() is None else f"ended with {alive.returncode}"
            log = (tmp_path / f"{alive_out.name}.log").read_text()[-3000:]
            raise AssertionError(f"{err}; the live job {state}, its log ends:\n{log}") from err

        result = run_script("scripts/runs.py", "reap", "--experiment-name", "tests", "--tracking-uri", store)
        assert result.returncode == 0, result.stderr[-3000:]
        reason = f"process {killed.pid} on host {HOST} no longer runs"
        assert f"reaped {killed_id} " in result.stdout and reason in result.stdout
        assert f"left {alive_id} " in result.stdout
        assert f"process {alive.pid} on host {HOST} still runs" in result.stdout
        assert client.get_run(killed_id).info.status == "FAILED"
        assert client.get_run(killed_id).data.tags["reaped_reason"] == reason
        assert client.get_run(alive_id).info.status == "RUNNING"
    finally:
        alive.kill()
        alive.wait()

    args = training_args(tiny_qwen2, synthetic_dataset, killed_out, 30)
    resumed = run_script("methods/lora/train.py", *args, "--resume", cwd=tmp_path, env={"MLFLOW_TRACKING_URI": store})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming from" in resumed.stderr
    run = client.get_run(killed_id)
    assert run.info.status == "FINISHED", "a reaped run reopens and finishes in the same run"
    assert run.data.tags["pid"] != str(killed.pid), "the tags name the process that trains it now"
    assert client.get_metric_history(killed_id, "eval_loss")[-1].step == 30
