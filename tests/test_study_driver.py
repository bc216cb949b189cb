"""The study driver's bookkeeping against a real MLflow store, without training: children an earlier driver left
RUNNING are reaped and resume, or waited for while their process lives; a refused child stops the study; a stopped
one holds back its method's choice; the parent run ends as the command does. Trainings are played by FakeTrainer,
which does to MLflow and the output folder what a real child does."""

import logging
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient
from test_study_spec import write_spec

from shared.outputs import COMPLETION_MARKER
from shared.study.children import Child, state
from shared.study.driver import ChildRefused, Study, StudyIncomplete, read_summary, study_link
from shared.study.launchers import Job, OnEnd
from shared.study.spec import load_spec
from shared.track.reaping import boot_id, process_start_ticks

LORA = {"lora": {"learning_rates": [1e-3, 1e-2]}}


class FakeTrainer:
    """A launcher whose jobs end at once as told by child name: "done" (with a best dev loss), "refused" (its
    checks said no: its run never started), "crashed" (died while training, its run left RUNNING) or "preempted"
    (checkpointed and stopped: run KILLED, exit 75). Evaluations always score."""

    def __init__(self, client: MlflowClient, **outcomes: str | float) -> None:
        self.client, self.outcomes, self.started = client, outcomes, []

    def __call__(self, jobs: list[Job], phase: str, on_end: OnEnd) -> None:
        for job in jobs:
            self.started.append(job.name)
            if not on_end(job, self._play(job)):
                return

    def _play(self, job: Job) -> int:
        job.log_file.parent.mkdir(parents=True, exist_ok=True)
        argv = list(job.argv)
        if "--run-id" in argv:  # an evaluation
            self.client.set_tag(argv[argv.index("--run-id") + 1], "eval.humaneval.tasks", "164")
            return 0
        run_id, outcome = job.env["MLFLOW_RUN_ID"], self.outcomes.get(job.name, 1.0)
        if outcome == "refused":
            job.log_file.write_text("Error: record 7: field 'output' is missing\n")
            return 1
        self.client.update_run(run_id, "RUNNING")
        if outcome == "crashed":
            job.log_file.write_text("Traceback (most recent call last):\nRuntimeError: boom\n")
            return 1
        if outcome == "preempted":
            self.client.set_terminated(run_id, "KILLED")
            return 75
        self.client.log_metric(run_id, "best_eval_loss", outcome)
        output = Path(argv[argv.index("--output-dir") + 1])
        output.mkdir(parents=True, exist_ok=True)
        (output / COMPLETION_MARKER).write_text("{}")
        self.client.set_terminated(run_id, "FINISHED")
        return 0


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """One MLflow store for the module (creating one takes seconds); each study has its own folder and parent."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"


def new_study(tmp_path: Path, store: str, **spec_changes) -> Study:
    return Study(load_spec(write_spec(tmp_path, **spec_changes)), tmp_path / "study", store)


def states(study: Study) -> dict[str, str]:
    return {row["child"]: row["state"] for row in read_summary(study.dir, study.tracking_uri)}


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


def test_a_child_whose_process_is_gone_is_reaped_and_resumes(tmp_path, store):
    study = new_study(tmp_path, store)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    child = Child("lora", 1e-3, 1)
    run_id = left_running(study, child, int(dead.stdout))
    study.settle()
    run = MlflowClient(study.tracking_uri).get_run(run_id)
    assert run.info.status == "FAILED" and run.data.tags["reaped"] == "true"
    assert f"process {dead.stdout.strip()}" in run.data.tags["reaped_reason"]
    assert state(child, run, study.dir) == "interrupted", "a reaped child resumes, it is no failed result"


def test_a_child_whose_process_still_runs_is_waited_for(tmp_path, store, monkeypatch):
    study = new_study(tmp_path, store)
    stopping = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3)"])
    run_id = left_running(study, Child("lora", 1e-2, 1), stopping.pid)
    monkeypatch.setattr("shared.study.driver.SETTLE_POLL_SECONDS", 0.2)
    study.settle()  # returns once the process has ended and its run is reaped
    assert stopping.poll() == 0, "settle returned while the child's process still ran"
    assert MlflowClient(study.tracking_uri).get_run(run_id).info.status == "FAILED"


def test_a_refused_child_fails_and_stops_the_study_and_a_rerun_tries_it_again(tmp_path, store, caplog):
    study = new_study(tmp_path, store, methods=LORA)
    refusing = FakeTrainer(study.client, **{"lora-lr0.001-seed1": "refused", "lora-lr0.01-seed1": "refused"})
    with caplog.at_level(logging.INFO), pytest.raises(ChildRefused) as stopped, study.outcome():
        study.run(refusing)
    assert refusing.started == ["lora-lr0.001-seed1"], "the study stops after the first refused child"
    assert "lora-lr0.001-seed1 was refused before it trained: record 7: field 'output' is missing" in str(stopped.value)
    [refused] = [run for child, run in study.child_runs().items() if child.name == "lora-lr0.001-seed1"]
    assert refused.info.status == "FAILED" and "field 'output' is missing" in refused.data.tags["study_error"]
    assert states(study) == {"lora-lr0.001-seed1": "failed", "lora-lr0.01-seed1": "pending"}
    assert study.client.get_run(study.parent_id).info.status == "FAILED", "as the command: it exits 1"
    link = f"http://127.0.0.1:5000/#/experiments/{study.experiment_id}?workflowType=machine_learning"
    assert f"its runs in MLflow: `mlflow ui --backend-store-uri {store}`, then {link}" in caplog.text
    assert study_link(study.dir, study.tracking_uri).endswith(link)

    rerun = new_study(tmp_path, store, methods=LORA)  # the data fixed: every child trains
    trainer = FakeTrainer(rerun.client)
    with rerun.outcome():
        assert rerun.run(trainer) == {"lora": 1e-3}
    assert trainer.started[0] == "lora-lr0.001-seed1", "the refused child is tried again"
    assert set(states(rerun).values()) == {"done"} and len(rerun.child_runs()) == 4, "2 sweep + 2 finals, no copy"
    assert rerun.client.get_run(rerun.parent_id).info.status == "FINISHED"


def test_a_child_that_failed_while_training_ends_failed_and_stays_a_result(tmp_path, store):
    study = new_study(tmp_path, store, methods=LORA)
    with study.outcome():
        assert study.run(FakeTrainer(study.client, **{"lora-lr0.001-seed1": "crashed"})) == {"lora": 1e-2}
    [crashed] = [run for child, run in study.child_runs().items() if child.name == "lora-lr0.001-seed1"]
    assert crashed.info.status == "FAILED" and crashed.data.tags["study_error"] == "RuntimeError: boom"
    assert states(study)["lora-lr0.001-seed1"] == "failed"
    rerun = FakeTrainer(study.client)
    new_study(tmp_path, store, methods=LORA).run(rerun)
    assert rerun.started == [], "a failure is kept as a result, never retrained"


def test_a_stopped_sweep_child_holds_back_its_methods_choice_which_once_logged_stays(tmp_path, store, caplog):
    study = new_study(tmp_path, store, methods=LORA)
    stopping = FakeTrainer(study.client, **{"lora-lr0.001-seed1": 2.0, "lora-lr0.01-seed1": "preempted"})
    with pytest.raises(StudyIncomplete) as incomplete, study.outcome():
        study.run(stopping)
    assert incomplete.value.exit_code == 75 and "lora-lr0.01-seed1" in str(incomplete.value)
    assert stopping.started == ["lora-lr0.001-seed1", "lora-lr0.01-seed1"], "no finals before the choice"
    assert "learning_rate.lora" not in study.client.get_run(study.parent_id).data.params
    assert study.client.get_run(study.parent_id).info.status == "KILLED"

    rerun = new_study(tmp_path, store, methods=LORA)
    resumed = FakeTrainer(rerun.client, **{"lora-lr0.01-seed1": 1.0})
    with rerun.outcome():
        assert rerun.run(resumed) == {"lora": 1e-2}, "the resumed child won"
    assert resumed.started[0] == "lora-lr0.01-seed1"
    assert rerun.client.get_run(rerun.parent_id).data.params["learning_rate.lora"] == "0.01"

    [other] = [run for child, run in rerun.child_runs().items() if child.name == "lora-lr0.001-seed1"]
    rerun.client.log_metric(other.info.run_id, "best_eval_loss", 0.5)  # the sweep would now choose 1e-3
    with caplog.at_level(logging.WARNING):
        assert rerun.select() == {"lora": 1e-2}, "a logged choice is final: its finals are never pooled with others"
    assert "the sweep now favours 0.001, but 0.01 was chosen earlier and stays chosen" in caplog.text
