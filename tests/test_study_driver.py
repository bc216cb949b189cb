"""The study driver's bookkeeping against a real MLflow store, without training: children an earlier driver left
RUNNING are reaped and resume, or waited for while their process lives."""

import socket
import subprocess
import sys

from mlflow import MlflowClient
from test_study_spec import write_spec

from shared.study.children import Child, state
from shared.study.driver import Study
from shared.study.spec import load_spec
from shared.track.reaping import boot_id, process_start_ticks


def left_running(study: Study, child: Child, pid: int) -> str:
    """A child run as a driver killed with its trainer leaves it: RUNNING, naming a process on this machine."""
    run_id = study._child_run(child, "sweep")
    client = study.client
    client.update_run(run_id, "RUNNING")
    start = process_start_ticks(pid) or "1"  # a process that has ended has no start time left to read
    tags = {"host": socket.gethostname(), "pid": str(pid), "boot_id": boot_id(), "pid_start_ticks": start}
    for key, value in tags.items():
        client.set_tag(run_id, key, value)
    return run_id


def test_a_child_whose_process_is_gone_is_reaped_and_resumes(tmp_path):
    study = Study(load_spec(write_spec(tmp_path)), tmp_path / "study", f"sqlite:///{tmp_path}/mlflow.db")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    child = Child("lora", 1e-3, 1)
    run_id = left_running(study, child, int(dead.stdout))
    study.settle()
    run = MlflowClient(study.tracking_uri).get_run(run_id)
    assert run.info.status == "FAILED" and run.data.tags["reaped"] == "true"
    assert f"process {dead.stdout.strip()}" in run.data.tags["reaped_reason"]
    assert state(child, run, study.dir) == "interrupted", "a reaped child resumes, it is no failed result"


def test_a_child_whose_process_still_runs_is_waited_for(tmp_path, monkeypatch):
    study = Study(load_spec(write_spec(tmp_path)), tmp_path / "study", f"sqlite:///{tmp_path}/mlflow.db")
    stopping = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3)"])
    run_id = left_running(study, Child("lora", 1e-2, 1), stopping.pid)
    monkeypatch.setattr("shared.study.driver.SETTLE_POLL_SECONDS", 0.2)
    study.settle()  # returns once the process has ended and its run is reaped
    assert stopping.poll() == 0, "settle returned while the child's process still ran"
    assert MlflowClient(study.tracking_uri).get_run(run_id).info.status == "FAILED"
