"""The SLURM wrappers on a real scheduler: a job's MLflow run, preemption (requeue, resume, one run), the array job.

They need a running cluster (`.ci/slurm-up` brings up one node). Without one they skip, unless REQUIRE_SLURM=1
(set by .ci/run), which makes them fail: CI must never count a skip as a pass.
"""

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from conftest import FAST, REPO, only_run, script_env

# The wrappers' #SBATCH defaults are sized for a GPU node; the CI node has 2 CPUs and a few GB.
SMALL = ["--cpus-per-task=2", "--mem=4G", "--time=15"]
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}


def scheduler_problem() -> str | None:
    """Why no job can be submitted here, or None."""
    if shutil.which("sbatch") is None:
        return "no SLURM client (sbatch) on PATH"
    ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True)
    if ping.returncode != 0 or "is UP" not in ping.stdout:
        return f"no slurmctld answers `scontrol ping`: {(ping.stdout + ping.stderr).strip()}"
    return None


PROBLEM = scheduler_problem()
REQUIRED = os.environ.get("REQUIRE_SLURM") == "1"
# A mark, not a skip inside a fixture, so that a machine without SLURM does not build the tiny model first.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(bool(PROBLEM) and not REQUIRED, reason=f"{PROBLEM}; .ci/slurm-up starts a one-node cluster"),
]


@pytest.fixture(scope="module", autouse=True)
def scheduler():
    if PROBLEM:  # only reached with REQUIRE_SLURM=1
        pytest.fail(f"REQUIRE_SLURM=1 but {PROBLEM}")


def submit(cwd: Path, wrapper: str, *args, options=(), env=None, experiment=True) -> str:
    """sbatch WRAPPER ARGS from the repo root, as a user would, with an MLflow store in CWD; the job id."""
    tracking_uri = f"sqlite:///{cwd}/mlflow.db"
    if experiment:
        # The job runs in the repo root, where MLflow would put the experiment's artifacts (./mlruns): keep them here.
        MlflowClient(tracking_uri).create_experiment("tests", artifact_location=str(cwd / "mlruns"))
    job_env = script_env(
        {
            "MLFLOW_TRACKING_URI": tracking_uri,
            # The job runs `python` from the submitting shell's PATH: this interpreter, as an activated env gives.
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            **(env or {}),
        }
    )
    command = ["sbatch", "--parsable", f"--output={cwd}/%x-%j.out", *SMALL, *options, wrapper, *map(str, args)]
    result = subprocess.run(command, cwd=REPO, env=job_env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().split(";")[0]


def job_records(job: str) -> list[dict[str, str]]:
    """`scontrol show job` as dicts, one per job (an array job has one per task). Accounting is off here."""
    result = subprocess.run(["scontrol", "show", "job", "--oneliner", job], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return [dict(re.findall(r"(\w+)=(\S*)", line)) for line in result.stdout.splitlines() if line.strip()]


def wait_until(condition, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def wait_finished(job: str, timeout: float = 300) -> list[dict[str, str]]:
    def finished():
        records = job_records(job)
        return records if all(r["JobState"] in FINAL_STATES for r in records) else None

    return wait_until(finished, timeout, f"job {job} to finish")


def log_of(cwd: Path, name: str, job: str) -> str:
    return (cwd / f"{name}-{job}.out").read_text()


def train_args(cwd: Path, base, dataset, steps: int, eval_steps: int) -> list:
    return [
        *("--base-model", base, "--dataset", dataset, "--output-dir", cwd / "out", "--experiment-name", "tests"),
        *FAST,
        *("--max-steps", steps, "--eval-steps", eval_steps, "--logging-steps", eval_steps // 2),
        *("--patience", 100),  # the step count decides when training ends, not early stopping
    ]


def preempt_and_resume(cwd: Path, name: str, job: str) -> tuple[int, str]:
    """Signal the running job once it has a checkpoint, start its requeued copy at once, wait for the end.

    Returns the step of the checkpoint seen before the signal and the job's log.
    """

    def first_checkpoint():
        if job_records(job)[0]["JobState"] in FINAL_STATES:
            raise AssertionError(f"job {job} ended before its first checkpoint:\n{log_of(cwd, name, job)[-3000:]}")
        return sorted((cwd / "out").glob("checkpoint-*"))

    checkpoint = wait_until(first_checkpoint, 240, f"job {job}'s first checkpoint", interval=0.1)[0]
    # --batch: the signal goes to the batch shell only, as `#SBATCH --signal=B:USR1@...` sends it.
    subprocess.run(["scancel", "--batch", "--signal=USR1", job], check=True)

    def requeued():
        record = job_records(job)[0]
        assert record["JobState"] not in FINAL_STATES, log_of(cwd, name, job)[-3000:]
        return record["Restarts"] == "1" and record["JobState"] == "PENDING"

    wait_until(requeued, 120, f"job {job} to be requeued")
    # A requeued job is held back ~2 minutes (BeginTime); start it now, but not within the second in which its
    # first run's credential was revoked: slurmd refuses that launch ("Job credential revoked") and the job FAILS.
    time.sleep(2)
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True)
    [record] = wait_finished(job)
    log = log_of(cwd, name, job)
    assert (record["JobState"], record["ExitCode"], record["Restarts"]) == ("COMPLETED", "0:0", "1"), log[-3000:]
    return int(checkpoint.name.split("-")[1]), log


# The tiny model trains ~70 steps/s: a run this long is still training seconds after its first checkpoint (step
# 10) appears, so the signal cannot arrive after the end. With 40 steps it sometimes did, and the job completed.
PREEMPTED_RUN_STEPS = 400


def steps(client, run, key: str) -> list[int]:
    return [m.step for m in client.get_metric_history(run.info.run_id, key)]


def test_preempted_lora_job_requeues_resumes_into_its_run_and_an_evaluate_job_scores_it(
    tmp_path, tiny_qwen2, synthetic_dataset
):
    """One LoRA job: tagged with its job id, preempted, requeued and resumed into the same run; then evaluate.sbatch
    scores its adapter into that run."""
    args = train_args(tmp_path, tiny_qwen2, synthetic_dataset, PREEMPTED_RUN_STEPS, 10)
    job = submit(tmp_path, "slurm/lora.sbatch", *args)
    checkpoint_step, log = preempt_and_resume(tmp_path, "lora", job)

    assert "preempted on SIGUSR1 (trainer exit status 75); requeueing" in log
    assert f"restart 1 of job {job}: resuming from" in log
    resumed = re.findall(r"Resuming from \S*checkpoint-(\d+)", log)
    assert len(resumed) == 1 and int(resumed[0]) >= checkpoint_step > 0, log[-3000:]

    client, run = only_run(tmp_path)
    assert run.info.status == "FINISHED"
    assert run.data.tags["slurm_job_id"] == job
    # Continued, not restarted: every step logged once, the base model evaluated once, training to the end.
    train_steps, eval_steps = steps(client, run, "train_loss"), steps(client, run, "eval_loss")
    assert train_steps == sorted(set(train_steps)) and train_steps[-1] == PREEMPTED_RUN_STEPS
    assert eval_steps == sorted(set(eval_steps)) and eval_steps[0] == 0 and eval_steps[-1] == PREEMPTED_RUN_STEPS
    assert run.data.tags["method"] == "lora" and {"train_loss", "eval_loss", "best_eval_loss"} <= set(run.data.metrics)
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()

    evaluation = ["--model", tmp_path / "out", "--benchmark", "exact-match", "--data", synthetic_dataset]
    evaluation += ["--limit", 4, "--max-new-tokens", 8, "--output-dir", tmp_path / "eval"]
    job = submit(tmp_path, "slurm/evaluate.sbatch", *evaluation, experiment=False)
    [record] = wait_finished(job)
    assert (record["JobState"], record["ExitCode"]) == ("COMPLETED", "0:0"), log_of(tmp_path, "evaluate", job)[-3000:]
    assert "exact_match" in client.get_run(run.info.run_id).data.metrics  # logged beside the training run


def test_fft_job_under_srun_and_torchrun_resumes_after_preemption(tmp_path, tiny_qwen2, synthetic_dataset):
    """One node here: the same srun + torchrun rendezvous as several nodes, and the signal through both."""
    args = train_args(tmp_path, tiny_qwen2, synthetic_dataset, PREEMPTED_RUN_STEPS, 10)
    job = submit(tmp_path, "slurm/fft.sbatch", *args, options=["--nodes=1", "--gres=gpu:1"])
    checkpoint_step, log = preempt_and_resume(tmp_path, "fft", job)

    assert "preempted on SIGUSR1" in log
    resumed = re.findall(r"Resuming from \S*checkpoint-(\d+)", log)
    assert len(resumed) == 1 and int(resumed[0]) >= checkpoint_step > 0, log[-3000:]
    client, run = only_run(tmp_path)
    assert run.info.status == "FINISHED"
    assert (run.data.tags["slurm_job_id"], run.data.tags["method"]) == (job, "fft")
    train_steps = steps(client, run, "train_loss")
    assert train_steps == sorted(set(train_steps)) and train_steps[-1] == PREEMPTED_RUN_STEPS
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_array_job_trains_each_method_into_one_experiment(tmp_path, tiny_qwen2, synthetic_dataset):
    methods = ["lora", "bitfit"]  # two cheap methods of the five, to keep CI short
    job = submit(
        tmp_path,
        "slurm/all-methods.sbatch",
        *train_args(tmp_path, tiny_qwen2, synthetic_dataset, 4, 4),
        options=[f"--array=0-{len(methods) - 1}", "--cpus-per-task=1", f"--output={tmp_path}/%x-%A_%a.out"],
        env={"METHODS": " ".join(methods)},
    )
    records = wait_finished(job)
    assert [(r["JobState"], r["ExitCode"]) for r in records] == [("COMPLETED", "0:0")] * len(methods)

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    by_method = {r.data.tags["method"]: r for r in runs}
    assert sorted(by_method) == sorted(methods) and len(runs) == len(methods)
    for task, method in enumerate(methods):
        run = by_method[method]
        assert run.info.status == "FINISHED"
        assert run.data.tags["slurm_array_job_id"] == job
        assert run.data.tags["slurm_array_task_id"] == str(task)
        assert (tmp_path / "out" / method / "mlflow_run.json").is_file()


def test_a_study_runs_each_phase_as_an_array_job(tmp_path, tiny_qwen2, synthetic_dataset):
    """scripts/study.py --launcher slurm: the sweep and the evaluation each one array job, the driver waiting."""
    from test_study import study_runs, write_study

    methods = {"lora": {"learning_rates": [1e-3, 1e-2]}}
    # The final at seed 1 is the sweep's run itself: no final phase to train, two array jobs in all.
    spec = write_study(tmp_path, tiny_qwen2, synthetic_dataset, methods, [1], reuse_sweep_seeds=True)
    store = f"sqlite:///{tmp_path}/mlflow.db"
    result = subprocess.run(
        [
            sys.executable, str(REPO / "scripts/study.py"), "run", str(spec), "--output-dir", "study",
            "--launcher", "slurm", "--parallel", "2", "--sbatch-args", " ".join(SMALL), "--tracking-uri", store,
        ],
        cwd=tmp_path, env=script_env(), capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    _, parent, children = study_runs(store)
    assert parent.info.status == "FINISHED"
    assert sorted(r.data.tags["learning_rate"] for r in children) == ["0.001", "0.01"]
    array_jobs = (tmp_path / "study" / "slurm" / "array-jobs").read_text().split()
    assert len(array_jobs) == 2, "one array job for the sweep, one for the evaluation"
    for run in children:
        assert run.info.status == "FINISHED" and run.data.tags["slurm_array_job_id"] == array_jobs[0]
    [final] = [r for r in children if r.data.tags["final"] == "true"]
    assert "exact_match" in final.data.metrics
