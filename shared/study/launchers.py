"""Where a study's jobs run: here, N at once (each on its own GPU when there are GPUs), or as one SLURM array job
per batch through slurm/study-job.sbatch (preemption and requeue as every other wrapper).

A job is a command line and the environment it adds; the launcher only starts jobs and waits for them. What a job
achieved is read back from MLflow and its folder by the driver, never from the launcher; the driver's answer as a
job ends says whether to go on.
"""

import ctypes
import logging
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import click

from shared.study.spec import REPO

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
POLL_SECONDS = 0.5
SLURM_POLL_SECONDS = 2.0


@dataclass(frozen=True)
class Job:
    name: str
    argv: tuple[str, ...]
    log_file: Path
    env: dict[str, str] = field(default_factory=dict)


OnEnd = Callable[[Job, int], bool]  # called as a job ends, with its exit code; False: start no more jobs


def _die_with_the_driver() -> None:
    # A job outliving a killed driver would train on while a rerun starts it again: SIGTERM makes the trainer
    # checkpoint and stop (exit 75, run KILLED), and the rerun resumes it.
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def visible_gpus() -> list[str]:
    """The GPUs jobs may be spread over: CUDA_VISIBLE_DEVICES when set, else what nvidia-smi lists."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [gpu for gpu in visible.split(",") if gpu.strip() and gpu.strip() != "-1"]
    try:
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [str(i) for i, line in enumerate(listed.splitlines()) if line.startswith("GPU ")]


def run_local(jobs: list[Job], phase: str, on_end: OnEnd, *, parallel: int) -> None:
    """Run the jobs, `parallel` at once; `on_end(job, exit_code)` as each one ends. Once it answers False, no job
    starts and those still running are stopped as a dying driver stops them (SIGTERM), without `on_end`."""
    gpus = visible_gpus()
    free_slots = list(range(parallel))
    running: dict[subprocess.Popen, tuple[Job, int, object]] = {}
    queue = list(jobs)
    while queue or running:
        while queue and free_slots:
            job, slot = queue.pop(0), free_slots.pop(0)
            env = {**os.environ, **job.env}
            if gpus:
                env["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]
            job.log_file.parent.mkdir(parents=True, exist_ok=True)
            output = job.log_file.open("a")
            log.info("Starting %s (log: %s)", job.name, job.log_file)
            process = subprocess.Popen(
                job.argv, env=env, stdout=output, stderr=subprocess.STDOUT, preexec_fn=_die_with_the_driver
            )
            running[process] = (job, slot, output)
        time.sleep(POLL_SECONDS)
        go_on = True
        for process in [p for p in running if p.poll() is not None]:
            job, slot, output = running.pop(process)
            output.close()
            free_slots.append(slot)
            go_on = on_end(job, process.returncode) and go_on
        if not go_on:
            _stop(running)
            return


def _stop(running: dict[subprocess.Popen, tuple[Job, int, object]]) -> None:
    """SIGTERM to every running job (a training checkpoints and ends resumable), then wait for them all."""
    for process in running:
        process.terminate()
    for process, (job, _, output) in running.items():
        process.wait()
        output.close()
        log.info("Stopped %s", job.name)


class SlurmError(click.ClickException):
    """sbatch refused the study's array job, or is not there."""


def run_slurm(jobs: list[Job], phase: str, on_end: OnEnd, *, parallel: int, folder: Path, sbatch_args: list) -> None:
    """Submit the jobs as one array job (at most `parallel` tasks at once) and wait until every task has ended.

    Each line of the batch file is one task's command; slurm/study-job.sbatch runs line SLURM_ARRAY_TASK_ID, from
    the directory the study runs in. An array job of an earlier driver that is still queued or running is waited
    for first, so that a rerun never starts a training twice. Exit codes are not read back (the driver reads each
    job's outcome from MLflow): `on_end` gets -1, for every job, since every task has run by then.
    """
    folder.mkdir(parents=True, exist_ok=True)
    _wait_for_earlier_arrays(folder)
    batch_file = folder / f"{phase}-{time.strftime('%Y%m%d-%H%M%S')}.jobs"
    lines = [shlex.join(["env", *(f"{k}={v}" for k, v in job.env.items()), *job.argv]) for job in jobs]
    batch_file.write_text("\n".join(lines) + "\n")
    command = [
        "sbatch", "--parsable", f"--array=0-{len(jobs) - 1}%{parallel}", f"--job-name=study-{phase}",
        f"--output={folder.resolve()}/%x-%A_%a.out", *sbatch_args, str(REPO / "slurm" / "study-job.sbatch"),
        str(REPO), str(batch_file.resolve()),
    ]  # fmt: skip
    log.info("Submitting %d jobs as one array job: %s", len(jobs), shlex.join(command))
    try:
        result = subprocess.run(command, capture_output=True, text=True)  # submitted from here: paths stay valid
    except FileNotFoundError:
        raise SlurmError("--launcher slurm: sbatch is not installed here") from None
    if result.returncode != 0:
        raise SlurmError(f"sbatch refused the study's array job: {result.stderr.strip()}")
    job_id = result.stdout.strip().split(";")[0]
    with (folder / "array-jobs").open("a") as record:
        record.write(job_id + "\n")
    _wait_until_gone(job_id)
    log.info("Array job %s ended", job_id)
    for job in jobs:
        on_end(job, -1)


def _wait_for_earlier_arrays(folder: Path) -> None:
    record = folder / "array-jobs"
    for job_id in record.read_text().split() if record.is_file() else []:
        _wait_until_gone(job_id)


def _wait_until_gone(job_id: str) -> None:
    """Poll squeue until the job (every task of an array, requeues included) has left the queue."""
    while True:
        listed = subprocess.run(["squeue", "--noheader", "--jobs", job_id, "--format=%i"], capture_output=True)
        if listed.returncode != 0 or not listed.stdout.strip():
            return
        time.sleep(SLURM_POLL_SECONDS)
