"""The study driver: sweep, select, final, evaluate; every step read back from MLflow and the output folders.

The driver keeps no state a crash could lose. Rerunning the same command finds the study's parent run (by its
output directory), the children it already has (nested runs tagged with method, learning rate and seed), skips
what is done, resumes what stopped short (`--resume`, into the same run) and starts what is missing. The parent run
ends as the command does: FINISHED, KILLED (children stopped short: a rerun resumes them) or FAILED.
"""

import hashlib
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import click
from mlflow import MlflowClient
from mlflow.entities import RunTag
from tqdm import tqdm

from shared.outputs import PREEMPTED_EXIT_CODE, RUN_FILE
from shared.study.children import (
    ENDED,
    ERROR_TAG,
    EVAL_OUTCOME_TAG,
    OUTCOME_TAG,
    REFUSED_TAG,
    Child,
    best_dev_loss,
    refused,
    state,
)
from shared.study.launchers import Job, OnEnd
from shared.study.spec import REPO, StudySpec
from shared.track.reaping import DEFAULT_STALE_AFTER_SECONDS, reap_runs
from shared.track.ui_link import where_to_look

log = logging.getLogger(__name__)

STUDY_TAG, DIR_TAG, ROLE_TAG = "study", "study_output_dir", "study_role"
SETTLE_TIMEOUT_SECONDS, SETTLE_POLL_SECONDS = 300, 2.0
Launch = Callable[[list[Job], str, OnEnd], None]  # jobs, phase, called as each job ends


class StudyError(click.ClickException):
    """A study that cannot go on as asked."""


class ChildRefused(StudyError):
    """A child ended before it trained: its inputs, which every child shares, were refused."""


class StudyIncomplete(StudyError):
    """Children stopped before they ended (preempted): rerunning the same command resumes them."""

    exit_code = PREEMPTED_EXIT_CODE  # as a preempted training's: resumable


class Study:
    def __init__(self, spec: StudySpec, output_dir: Path, tracking_uri: str | None) -> None:
        self.spec, self.dir, self.tracking_uri = spec, output_dir.resolve(), tracking_uri
        self.client = MlflowClient(tracking_uri)
        experiment = self.client.get_experiment_by_name(spec.experiment_name)
        self.experiment_id = (
            experiment.experiment_id if experiment else self.client.create_experiment(spec.experiment_name)
        )
        self.parent_id = self._parent_run()
        self.jobs_run = 0

    # the plan
    def sweep(self) -> list[Child]:
        return [
            Child(plan.name, rate, seed)
            for plan in self.spec.methods.values()
            for rate in plan.learning_rates
            for seed in self.spec.sweep_seeds
        ]

    def finals(self, chosen: dict[str, float]) -> list[Child]:
        return [Child(method, rate, seed) for method, rate in chosen.items() for seed in self.spec.seeds]

    # the phases
    def run(self, launch: Launch) -> dict[str, float]:
        """Every phase in order; returns the chosen learning rate of each method that has one. Run it inside
        `outcome()`; a child stopped short (preempted) raises StudyIncomplete once the rest is done."""
        self.settle()
        self.train(self.sweep(), "sweep", launch)
        chosen = self.select()
        self.train(self.finals(chosen), "final", launch)
        self.evaluate(self.finals(chosen), launch)
        runs = self.child_runs()
        unended = [c.name for c in self.sweep() + self.finals(chosen) if state(c, runs.get(c), self.dir) not in ENDED]
        if unended:
            raise StudyIncomplete(
                f"{len(unended)} children stopped before they ended ({', '.join(unended)}): rerun the same command "
                "to resume them; methods whose sweep is among them get their learning rate then"
            )
        return chosen

    @contextmanager
    def outcome(self) -> Iterator[None]:
        """The parent run ends as the block does (FINISHED; KILLED for StudyIncomplete; FAILED for any other
        error), and the closing line says where to see the runs."""
        status = "FAILED"
        try:
            yield
            status = "FINISHED"
        except StudyIncomplete:
            status = "KILLED"
            raise
        finally:
            self.client.set_terminated(self.parent_id, status)
            link = where_to_look(self.client.tracking_uri, self.experiment_id)
            log.info("Study %s: parent run %s %s; its runs in MLflow: %s", self.spec.name, self.parent_id, status, link)

    def settle(self) -> None:
        """Before anything is decided: children an earlier driver left RUNNING with their process gone are marked
        FAILED (reaped; they resume), and those whose process still runs (stopping after their driver died) are
        waited for, so that no training is ever started twice."""
        deadline = time.monotonic() + SETTLE_TIMEOUT_SECONDS
        while True:
            verdicts = reap_runs(self.client, self.child_runs().values(), DEFAULT_STALE_AFTER_SECONDS)
            for verdict in verdicts:
                if verdict.reap:
                    log.warning("%s was left RUNNING (%s): it resumes", verdict.run_name, verdict.reason)
            alive = [verdict for verdict in verdicts if not verdict.reap]
            if not alive:
                return
            if time.monotonic() > deadline:
                names = "; ".join(f"{v.run_name}: {v.reason}" for v in alive)
                raise StudyError(f"children of an earlier driver still run ({names}): stop them, or wait and rerun")
            log.info("Waiting for %d children of an earlier driver to stop", len(alive))
            time.sleep(SETTLE_POLL_SECONDS)

    def train(self, children: list[Child], phase: str, launch: Launch) -> None:
        runs = self.child_runs()
        if phase == "final":
            for child in children:
                if child in runs:  # a sweep child at the chosen rate is also a final child: reused, not retrained
                    self.client.set_tag(runs[child].info.run_id, "final", "true")
        todo = [
            child
            for child in children
            if state(child, runs.get(child), self.dir) not in ENDED or refused(runs.get(child))
        ]
        done = len(children) - len(todo)
        log.info("%s: %d children, %d already ended, %d to train", phase, len(children), done, len(todo))
        jobs = [self._training_job(child, runs.get(child), phase) for child in todo]
        self._launch(jobs, phase, launch, lambda job, code: self._record_training(job, code))

    def select(self) -> dict[str, float]:
        """Per method, the learning rate with the lowest mean best dev loss over the sweep seeds (failed: worst),
        chosen once every sweep child of the method has ended (done or failed) and final once logged."""
        runs = self.child_runs()
        logged = self.client.get_run(self.parent_id).data.params
        chosen = {}
        for plan in self.spec.methods.values():
            sweep = [Child(plan.name, rate, seed) for rate in plan.learning_rates for seed in self.spec.sweep_seeds]
            unended = [child.name for child in sweep if state(child, runs.get(child), self.dir) not in ENDED]
            if unended:  # a stopped child is no failure: it resumes, and may yet win
                log.warning("%s: no learning rate chosen while %s has not ended", plan.name, ", ".join(unended))
                continue
            means = {
                rate: sum(best_dev_loss(runs.get(Child(plan.name, rate, seed))) for seed in self.spec.sweep_seeds)
                / len(self.spec.sweep_seeds)
                for rate in plan.learning_rates
            }
            rate = min(plan.learning_rates, key=lambda r: means[r])  # ties: the first in the grid
            key = f"learning_rate.{plan.name}"
            if key in logged:  # its finals may have trained: a new choice would pool two rates as one method
                chosen[plan.name] = float(logged[key])
                if chosen[plan.name] != rate:
                    log.warning(
                        "%s: the sweep now favours %g, but %s was chosen earlier and stays chosen; to choose again, "
                        "run the study into a new --output-dir",
                        plan.name, rate, logged[key],
                    )  # fmt: skip
                continue
            if math.isinf(means[rate]):
                log.warning("%s: every sweep child failed, so it has no learning rate and no final runs", plan.name)
                self.client.set_tag(self.parent_id, f"no_usable_rate.{plan.name}", "every sweep child failed")
                continue
            self.client.log_param(self.parent_id, key, f"{rate:g}")
            chosen[plan.name] = rate
            log.info("%s: learning rate %g chosen (mean best dev loss %.4f)", plan.name, rate, means[rate])
        return chosen

    def evaluate(self, finals: list[Child], launch: Launch) -> None:
        runs = self.child_runs()
        todo = [
            child
            for child in finals
            if state(child, runs.get(child), self.dir) == "done"
            and f"eval.{self.spec.benchmark}.tasks" not in runs[child].data.tags
            and runs[child].data.tags.get(EVAL_OUTCOME_TAG) != "failed"
        ]
        log.info("evaluation: %d final models to score on %s", len(todo), self.spec.benchmark)
        jobs = [self._evaluation_job(child, runs[child]) for child in todo]
        self._launch(jobs, "evaluation", launch, self._record_evaluation)

    # MLflow
    def child_runs(self) -> dict[Child, object]:
        return child_runs(self.client, self.experiment_id, self.parent_id)

    def _parent_run(self) -> str:
        spec_sha = hashlib.sha256(self.spec.path.read_bytes()).hexdigest()
        found = self.client.search_runs([self.experiment_id], f"tags.{DIR_TAG} = '{self.dir}'", max_results=1)
        if found:
            parent = found[0]
            if parent.data.params.get("spec_sha256") != spec_sha:
                raise StudyError(
                    f"{self.dir} holds study run {parent.info.run_id} made from another spec: rerun it with the spec "
                    "it started with, or pass a new --output-dir"
                )
            self.client.update_run(parent.info.run_id, "RUNNING")
            log.info("Continuing study %s (MLflow run %s)", self.spec.name, parent.info.run_id)
            return parent.info.run_id
        tags = {STUDY_TAG: self.spec.name, DIR_TAG: str(self.dir), ROLE_TAG: "parent"}
        attached = os.environ.get("MLFLOW_RUN_ID")  # `mlflow run -e study` created the parent
        if attached:
            run_id = attached
            self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        else:
            name = f"study-{self.spec.name}"
            run_id = self.client.create_run(self.experiment_id, run_name=name, tags=tags).info.run_id
        self.client.log_param(run_id, "spec_sha256", spec_sha)
        self.client.log_artifact(run_id, str(self.spec.path), artifact_path="spec")
        log.info("Study %s: MLflow run %s", self.spec.name, run_id)
        return run_id

    def _child_run(self, child: Child, phase: str) -> str:
        tags = {
            "mlflow.parentRunId": self.parent_id,
            STUDY_TAG: self.spec.name,
            ROLE_TAG: "child",
            "phase": phase,
            "final": str(phase == "final").lower(),
            **child.tags(),
        }
        run_id = self.client.create_run(self.experiment_id, run_name=child.name, tags=tags).info.run_id
        self.client.update_run(run_id, "SCHEDULED")  # RUNNING once its training attaches to it
        return run_id

    # jobs
    def _training_job(self, child: Child, run, phase: str) -> Job:
        output = child.output_dir(self.dir)
        plan = self.spec.methods[child.method]
        arguments = [
            *plan.launcher, str(plan.script), "--base-model", self.spec.base_model, "--dataset", str(self.spec.dataset),
            "--output-dir", str(output), "--learning-rate", str(child.learning_rate), "--seed", str(child.seed),
            "--experiment-name", self.spec.experiment_name, *plan.arguments,
        ]  # fmt: skip
        if self.spec.dev_dataset:
            arguments += ["--dev-dataset", str(self.spec.dev_dataset)]
        if refused(run):  # refused last time: tried again from the start, its failure forgotten
            for tag in (OUTCOME_TAG, REFUSED_TAG, ERROR_TAG):
                self.client.delete_tag(run.info.run_id, tag)
            self.client.update_run(run.info.run_id, "SCHEDULED")
        if run is not None and _has_checkpoint(output):
            arguments.append("--resume")
        elif output.exists():  # stopped before its first checkpoint: nothing to keep, it starts over in its run
            shutil.rmtree(output)
        run_id = run.info.run_id if run is not None else self._child_run(child, phase)
        return Job(child.name, tuple(arguments), child.log_file(self.dir), self._environment(run_id))

    def _evaluation_job(self, child: Child, run) -> Job:
        arguments = [
            sys.executable, str(REPO / "scripts" / "evaluate.py"), "--model", str(child.output_dir(self.dir)),
            "--run-id", run.info.run_id, "--output-dir", str(child.evaluation_dir(self.dir)),
            "--training-data", str(self.spec.dataset), *self.spec.evaluation,
        ]  # fmt: skip
        # No MLFLOW_RUN_ID: the scores go to the training run named by --run-id, and nowhere else.
        return Job(child.name, tuple(arguments), child.log_file(self.dir, "evaluate"), self._environment(None))

    def _environment(self, run_id: str | None) -> dict[str, str]:
        environment = {"MLFLOW_RUN_ID": run_id or ""}
        if self.tracking_uri:
            environment["MLFLOW_TRACKING_URI"] = self.tracking_uri
        return environment

    def _launch(self, jobs: list[Job], phase: str, launch: Launch, record: Callable[[Job, int], bool]) -> None:
        """Launch the jobs, recording each as it ends; the first child refused stops the launch and the study."""
        if not jobs:
            return
        self.jobs_run += len(jobs)
        failed, refusal = 0, None
        with tqdm(total=len(jobs), desc=phase, unit="run") as bar:

            def ended(job: Job, code: int) -> bool:
                nonlocal failed, refusal
                try:
                    failed += not record(job, code)
                except ChildRefused as err:
                    failed, refusal = failed + 1, refusal or err
                bar.update(1)
                bar.set_postfix(failed=failed)
                return refusal is None

            launch(jobs, phase, ended)
        if refusal:
            raise refusal

    def _child_of(self, job: Job):
        return next((child, run) for child, run in self.child_runs().items() if child.name == job.name)

    def _record_training(self, job: Job, code: int) -> bool:
        """What a training job achieved, from its run and folder. A failure ends its run FAILED, tagged with the
        reason so that no rerun retries it; a child that never started its run (its checks refused the inputs)
        raises ChildRefused."""
        child, run = self._child_of(job)
        if state(child, run, self.dir) == "done":
            return True
        if run.info.status == "KILLED" or code == PREEMPTED_EXIT_CODE:
            log.warning("%s was stopped (preempted); a rerun resumes it", job.name)
            return False
        reason = _last_error(job.log_file)
        never_started = run.info.status == "SCHEDULED"
        tags = {OUTCOME_TAG: "failed", ERROR_TAG: reason[:4000], **({REFUSED_TAG: "true"} if never_started else {})}
        self.client.log_batch(run.info.run_id, tags=[RunTag(key, value) for key, value in tags.items()])
        if run.info.status in ("SCHEDULED", "RUNNING"):  # refused before it started, or died without ending its run
            self.client.set_terminated(run.info.run_id, "FAILED")
        if never_started:
            raise ChildRefused(
                f"{job.name} was refused before it trained: {reason.removeprefix('Error: ')} (log: {job.log_file}). "
                "Every child shares the spec's base model, data and flags, so the study stops here: fix them and "
                "rerun the same command"
            )
        log.warning("%s failed (exit %s): %s; see %s", job.name, code, reason, job.log_file)
        return False

    def _record_evaluation(self, job: Job, code: int) -> bool:
        _, run = self._child_of(job)
        if f"eval.{self.spec.benchmark}.tasks" in run.data.tags:
            return True
        reason = _last_error(job.log_file)
        self.client.set_tag(run.info.run_id, EVAL_OUTCOME_TAG, "failed")
        self.client.set_tag(run.info.run_id, "study_eval_error", reason[:4000])
        log.warning("Evaluating %s failed (exit %s): %s; see %s", job.name, code, reason, job.log_file)
        return False


def _has_checkpoint(output: Path) -> bool:
    return (output / RUN_FILE).is_file() and any(output.glob("checkpoint-*"))


def _last_error(log_file: Path) -> str:
    """What a failed job said last: its "Error: ..." line (a refused input), else its last line (a traceback's)."""
    if not log_file.is_file():
        return f"it wrote no log at {log_file}"
    lines = [line.strip() for line in log_file.read_text(errors="replace").splitlines() if line.strip()]
    return next((line for line in reversed(lines) if line.startswith("Error:")), lines[-1] if lines else "no output")


def child_runs(client: MlflowClient, experiment_id: str, parent_id: str) -> dict[Child, object]:
    """A study's children by identity, read from MLflow."""
    found = client.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'", max_results=50_000)
    return {Child.from_tags(run.data.tags): run for run in found if run.data.tags.get(ROLE_TAG) == "child"}


def find_parent(client: MlflowClient, study_dir: Path):
    """The parent run of the study that ran in `study_dir`, in whichever experiment it is."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    parents = client.search_runs(experiments, f"tags.{DIR_TAG} = '{study_dir}'", max_results=1) if experiments else []
    if not parents:
        raise StudyError(f"no study ran in {study_dir} (at this tracking URI)")
    return parents[0]


def study_link(output_dir: Path, tracking_uri: str | None) -> str:
    """Where to see the runs of the study run in `output_dir` (shared.track.ui_link)."""
    client = MlflowClient(tracking_uri)
    return where_to_look(client.tracking_uri, find_parent(client, output_dir.resolve()).info.experiment_id)


def read_summary(output_dir: Path, tracking_uri: str | None) -> list[dict]:
    """One row per child of the study run in `output_dir`: phase, identity, state, best dev loss, score."""
    client, study_dir = MlflowClient(tracking_uri), output_dir.resolve()
    parent = find_parent(client, study_dir)
    rows = []
    for child, run in sorted(child_runs(client, parent.info.experiment_id, parent.info.run_id).items(), key=str):
        metrics = run.data.metrics
        rows.append(
            {
                "child": child.name,
                "phase": run.data.tags.get("phase", ""),
                "final": run.data.tags.get("final", "false"),
                "state": state(child, run, study_dir),
                "best_eval_loss": metrics.get("best_eval_loss"),
                "score": {k: v for k, v in metrics.items() if k.startswith(("pass_at_", "exact_match"))},
            }
        )
    return rows
