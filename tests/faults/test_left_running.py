"""A SLURM job whose trainer is killed outright (SIGKILL, as the out-of-memory killer does) ends its run FAILED.

Needs a running cluster, like tests/test_slurm.py: skips without one, fails instead with REQUIRE_SLURM=1.
"""

import json
import os
import signal

from test_slurm import log_of, pytestmark, scheduler, submit, train_args, wait_finished, wait_until  # noqa: F401

from conftest import only_run

# Still training long after its first checkpoint, so the kill lands while it trains.
STEPS = 400


def test_a_job_whose_trainer_is_killed_leaves_its_run_failed_not_running(tmp_path, tiny_qwen2, synthetic_dataset):
    job = submit(tmp_path, "slurm/lora.sbatch", *train_args(tmp_path, tiny_qwen2, synthetic_dataset, STEPS, 10))
    wait_until(lambda: sorted((tmp_path / "out").glob("checkpoint-*")), 240, f"job {job}'s first checkpoint", 0.1)
    run_id = json.loads((tmp_path / "out" / "mlflow_run.json").read_text())["run_id"]
    client, run = only_run(tmp_path)
    assert run.info.status == "RUNNING"
    trainer = int(run.data.tags["pid"])  # the trainer, not the batch shell that waits for it
    os.kill(trainer, signal.SIGKILL)

    [record] = wait_finished(job)
    log = log_of(tmp_path, "lora", job)
    assert (record["JobState"], record["ExitCode"]) == ("FAILED", "137:0"), log[-3000:]
    run = client.get_run(run_id)
    assert run.info.status == "FAILED", log[-3000:]
    assert run.data.tags["reaped_reason"] == f"job {job}: trainer killed by signal 9 (exit status 137)"
    assert f"run {run_id} marked FAILED" in log
