"""Preemption: SIGTERM or SIGUSR1 mid-training checkpoints, exits 75, and --resume finishes the same run."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import FAST, REPO, only_run, run_script
from shared.outputs import PREEMPTED_EXIT_CODE

# ~0.1 s a step on 2 cores: the job is still training when its first checkpoint (step 5) appears.
SCHEDULE = [*FAST, "--gradient-accumulation", 4, "--eval-steps", 5, "--max-steps", 60]


def command(model, dataset, out, *extra) -> list[str]:
    args = ["--base-model", model, "--dataset", dataset, "--output-dir", out, "--experiment-name", "tests"]
    return [sys.executable, str(REPO / "methods/lora/train.py"), *map(str, [*args, *SCHEDULE, *extra])]


def start_and_signal(cwd, args: list[str], signum: int) -> subprocess.CompletedProcess:
    """Start training, wait for its first checkpoint, send `signum`, wait for the exit."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{cwd}/mlflow.db", "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while not list((cwd / "out").glob("checkpoint-*")) and time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read()[-3000:]
        time.sleep(0.2)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    return subprocess.CompletedProcess(args, process.returncode, "", stderr)


def stop_with(tmp_path, tiny_qwen2, synthetic_dataset, signum) -> tuple[list[str], int]:
    """Signal a training once it has a checkpoint; check that it checkpointed and exited resumable. Its command and
    the step it stopped at."""
    out = tmp_path / "out"
    args = command(tiny_qwen2, synthetic_dataset, out)
    stopped = start_and_signal(tmp_path, args, signum)
    assert stopped.returncode == PREEMPTED_EXIT_CODE, stopped.stderr[-3000:]
    assert f"Received {signal.Signals(signum).name}" in stopped.stderr
    client, run = only_run(tmp_path)
    assert run.info.status == "KILLED" and run.data.tags["preempted"] == "true"
    preempted_step = int(stopped.stderr.split("Preempted at step ")[1].split(":")[0])
    assert (out / f"checkpoint-{preempted_step}" / "trainer_state.json").is_file(), "checkpointed where it stopped"
    assert not (out / "training_complete.json").exists()
    return args, preempted_step


@pytest.mark.slow
def test_sigterm_checkpoints_and_exits_resumable(tmp_path, tiny_qwen2, synthetic_dataset):
    """SIGTERM (what most schedulers send) takes the same way out as SIGUSR1, whose job is resumed below."""
    _, preempted_step = stop_with(tmp_path, tiny_qwen2, synthetic_dataset, signal.SIGTERM)
    assert preempted_step >= 5, "stopped at or after the first checkpoint the test waited for"


@pytest.mark.slow
def test_a_preempted_job_checkpoints_and_resumes_into_the_same_run(tmp_path, tiny_qwen2, synthetic_dataset):
    out = tmp_path / "out"
    args, preempted_step = stop_with(tmp_path, tiny_qwen2, synthetic_dataset, signal.SIGUSR1)

    resumed = run_script("methods/lora/train.py", *args[2:], "--resume", cwd=tmp_path,
                         env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"})  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Resuming from {out / f'checkpoint-{preempted_step}'}" in resumed.stderr
    client, run = only_run(tmp_path)
    assert run.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "eval_loss")]
    assert steps.count(0) == 1, "no second step-0 evaluation"
    assert steps == sorted(steps) and max(steps) > preempted_step, "steps continue past the preemption"
    marker = json.loads((out / "training_complete.json").read_text())
    assert marker["run_id"] == run.info.run_id

    again = run_script("methods/lora/train.py", *args[2:], "--resume", cwd=tmp_path,
                       env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"})  # fmt: skip
    assert again.returncode == 0 and "holds a finished training" in again.stderr, "a requeued rerun does nothing"
    assert only_run(tmp_path)[1].info.end_time == run.info.end_time
    overwrite = run_script("methods/lora/train.py", *args[2:], cwd=tmp_path)
    assert overwrite.returncode == 2 and "holds a finished training" in overwrite.stderr
