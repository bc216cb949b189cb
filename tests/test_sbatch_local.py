"""The slurm/*.sbatch wrappers run with bash outside Slurm: the single-process ones train as plain local jobs (a
signal still checkpoints and stops the trainer, and nothing tries to requeue); those that need the scheduler say
so. No cluster needed: tests/test_slurm.py covers the wrappers under a real scheduler."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from conftest import FAST, REPO, only_run
from shared.outputs import PREEMPTED_EXIT_CODE


def local_env(cwd: Path) -> dict[str, str]:
    """No Slurm or MLflow variables; this interpreter first on PATH, then a `scontrol` that leaves a trace."""
    fake = cwd / "bin"
    fake.mkdir()
    (fake / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {cwd / "scontrol-called"}\n')
    (fake / "scontrol").chmod(0o755)
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "MLFLOW_"))}
    path = f"{Path(sys.executable).parent}:{fake}:{inherited['PATH']}"
    return {**inherited, "PATH": path, "HF_HUB_OFFLINE": "1"}


def lora_args(cwd: Path, model: Path, dataset: Path, *schedule) -> list[str]:
    """The LoRA trainer's flags, with the store in CWD: the wrapper runs in the repo root, where MLflow's default
    artifact folder would be."""
    tracking_uri = f"sqlite:///{cwd}/mlflow.db"
    MlflowClient(tracking_uri).create_experiment("tests", artifact_location=str(cwd / "mlruns"))
    args = ["--base-model", model, "--dataset", dataset, "--output-dir", cwd / "out", "--tracking-uri", tracking_uri]
    return [*map(str, [*args, "--experiment-name", "tests", *FAST, "--no-system-metrics", *schedule])]


@pytest.mark.slow
def test_lora_sbatch_run_with_bash_trains_as_a_local_job(tmp_path, tiny_qwen2, synthetic_dataset):
    args = lora_args(tmp_path, tiny_qwen2, synthetic_dataset, "--max-steps", 2, "--eval-steps", 2)
    result = subprocess.run(
        ["bash", "slurm/lora.sbatch", *args], cwd=REPO, env=local_env(tmp_path), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "unbound variable" not in result.stderr
    assert "Not under Slurm (no SLURM_JOB_ID): running as a plain local job" in result.stderr
    _, run = only_run(tmp_path)
    assert run.info.status == "FINISHED" and run.data.tags["method"] == "lora"
    assert (tmp_path / "out" / "training_complete.json").is_file()


@pytest.mark.slow
def test_a_signal_outside_slurm_checkpoints_and_says_how_to_resume(tmp_path, tiny_qwen2, synthetic_dataset):
    schedule = ["--gradient-accumulation", 4, "--eval-steps", 5, "--max-steps", 60]
    args = lora_args(tmp_path, tiny_qwen2, synthetic_dataset, *schedule)
    wrapper = subprocess.Popen(
        ["bash", "slurm/lora.sbatch", *args], cwd=REPO, env=local_env(tmp_path),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 180
    while not list((tmp_path / "out").glob("checkpoint-*")) and time.monotonic() < deadline:
        assert wrapper.poll() is None, wrapper.communicate()[1][-3000:]
        time.sleep(0.2)
    wrapper.send_signal(signal.SIGUSR1)  # what Slurm sends the batch shell before the time limit
    _, stderr = wrapper.communicate(timeout=120)
    assert wrapper.returncode == PREEMPTED_EXIT_CODE, stderr[-3000:]
    assert "stopped on SIGUSR1 after a checkpoint; rerun the same command with --resume to go on" in stderr
    assert not (tmp_path / "scontrol-called").exists(), "nothing to requeue outside Slurm"
    _, run = only_run(tmp_path)
    assert run.info.status == "KILLED" and run.data.tags["preempted"] == "true"


@pytest.mark.parametrize(
    ("wrapper", "message"),
    [
        ("fft.sbatch", "fft.sbatch must be submitted with sbatch: it starts torchrun on every node with srun"),
        ("all-methods.sbatch", "all-methods.sbatch must be submitted with sbatch: it is an array job"),
    ],
)
def test_wrappers_that_need_the_scheduler_say_so(tmp_path, wrapper, message):
    result = subprocess.run(
        ["bash", f"slurm/{wrapper}", "--output-dir", tmp_path / "out"],
        cwd=REPO, env=local_env(tmp_path), capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 2 and message in result.stderr
    assert "unbound variable" not in result.stderr and not (tmp_path / "out").exists()
