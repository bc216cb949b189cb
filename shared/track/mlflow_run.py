"""One MLflow run per training job: params, tags, per-step metrics, artifacts; FAILED when the job dies, KILLED
(and resumable) when it was preempted.

Only the main process (rank 0) talks to MLflow. The run id is written into the output directory, so
`--resume` and the evaluation scripts find the run that trained a folder.
"""

import json
import logging
import os
import re
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import click
import mlflow
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from transformers import TrainerCallback

from shared.data.batching import data_order_sha256
from shared.logs import process_rank
from shared.options import DEFAULT_EXPERIMENT
from shared.outputs import RUN_FILE, Preempted, read_run_id
from shared.track.costs import Costs, RunCosts
from shared.track.energy import EnergyReport
from shared.track.outbox import OUTBOX_FILE, MlflowOutbox
from shared.track.reaping import heartbeat, process_tags
from shared.track.redaction import redact_uri, scrub
from shared.track.ui_link import where_to_look

log = logging.getLogger(__name__)

ROOT_ARTIFACTS = ("energy.json", "trainer_state.json")


def is_main_process() -> bool:
    return process_rank() == 0


def run_tags(method: str, base_model: str) -> dict[str, str]:
    """What identifies where and on what a run trained: method, model, code version, host and process, GPUs, job,
    container."""
    import torch

    tags = {"method": method, "base_model": base_model, "host": socket.gethostname(), **process_tags()}
    if torch.cuda.is_available():
        tags["gpus"] = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    optional = {
        # MLflow reads the commit from a git checkout itself; an image built without .git passes it in.
        "mlflow.source.git.commit": "GIT_COMMIT",
        "slurm_job_id": "SLURM_JOB_ID",
        "slurm_array_job_id": "SLURM_ARRAY_JOB_ID",
        "slurm_array_task_id": "SLURM_ARRAY_TASK_ID",
        "container_image": "CONTAINER_IMAGE",
    }
    tags.update({tag: os.environ[var] for tag, var in optional.items() if os.environ.get(var)})
    return {key: scrub(value) for key, value in tags.items()}


@contextmanager
def tracked_run(
    method: str,
    params: dict,
    output_dir: Path,
    *,
    base_model: str,
    system_metrics: bool,
    tracking_uri: str | None,
    experiment_name: str | None,
    run_name: str | None,
    resume: bool,
) -> Iterator[MlflowOutbox | None]:
    """Start (or with `resume` reopen) the job's run and yield its outbox (None off rank 0); end the run FINISHED,
    KILLED if preempted, or FAILED."""
    if not is_main_process():
        yield None
        return
    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    # A server lost mid-run must cost seconds, not minutes of retries on every call: the outbox keeps the rest.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    resumed_id = read_run_id(output_dir) if resume else None
    launched_id = os.environ.get("MLFLOW_RUN_ID")  # a run `mlflow run` or the study driver created for this job
    name = scrub(run_name or f"{method}-{datetime.now():%Y%m%d-%H%M%S}")
    if resumed_id:
        name = None  # it keeps its name
        if launched_id and launched_id != resumed_id:
            MlflowClient().set_tag(launched_id, "resumed_run_id", resumed_id)
            log.info("Resuming: this job logs into run %s, which trained %s", resumed_id, output_dir)
    elif launched_id:
        launched = MlflowClient().get_run(launched_id)
        check_experiment(launched, experiment_name)
        if not run_name and not is_generated_name(launched.info.run_name):
            name = None  # named by `mlflow run --run-name` or by the study
    else:
        mlflow.set_experiment(experiment_name or DEFAULT_EXPERIMENT)
    run = mlflow.start_run(run_id=resumed_id, run_name=name, log_system_metrics=system_metrics)
    tracking = mlflow.get_tracking_uri()
    log.info("MLflow run %s in %s", run.info.run_id, redact_uri(tracking))
    outbox = MlflowOutbox(run.info.run_id, output_dir)
    try:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        record = {"run_id": run.info.run_id, "experiment_id": run.info.experiment_id}
        (Path(output_dir) / RUN_FILE).write_text(json.dumps(record, indent=2) + "\n")
        mlflow.set_tags(run_tags(method, base_model))
        experiment = MlflowClient().get_experiment(run.info.experiment_id).name
        log_params_once({**params, "experiment_name": experiment})
        with heartbeat(run.info.run_id):
            yield outbox
    except Preempted:
        outbox.set_tag("preempted", "true")
        _end_run(outbox, "KILLED")  # resumable: --resume reopens it
        raise
    except BaseException:
        _end_run(outbox, "FAILED")
        raise
    _end_run(outbox, "FINISHED")
    log.info("Run %s finished; see it with %s", run.info.run_id, where_to_look(tracking, run.info.experiment_id))


def check_experiment(launched: Run, experiment_name: str | None) -> None:
    """Refuse an --experiment-name other than the experiment of the run this job was launched into."""
    actual = MlflowClient().get_experiment(launched.info.experiment_id).name
    if experiment_name and experiment_name != actual:
        raise click.UsageError(
            f"--experiment-name {experiment_name!r}, but the run this job was launched into (MLFLOW_RUN_ID "
            f"{launched.info.run_id}) is in experiment {actual!r}: under `mlflow run`, choose the experiment with "
            "`mlflow run --experiment-name`, not -P experiment_name"
        )


def is_generated_name(name: str) -> bool:
    """Whether `name` is one MLflow made up for a run created without one ('bold-cat-123')."""
    from mlflow.utils.name_utils import _GENERATOR_NOUNS, _GENERATOR_PREDICATES

    words = re.fullmatch(r"([a-z]+)-([a-z]+)-\d+", name or "")
    return bool(words) and words[1] in _GENERATOR_PREDICATES and words[2] in _GENERATOR_NOUNS


def _end_run(outbox: MlflowOutbox, status: str) -> None:
    outbox.set_status(status)
    if not outbox.offline:
        mlflow.end_run(status)  # also stops the system-metrics thread; it would wait on a dead server


def log_params_once(params: dict) -> None:
    """Log params the run does not hold yet; a resumed or `mlflow run`-created run keeps its first values."""
    run = mlflow.active_run()
    existing = MlflowClient().get_run(run.info.run_id).data.params
    fresh = {}
    for key, value in params.items():
        value = scrub(param_text(value))
        if key not in existing:
            fresh[key] = value
        elif not same_value(existing[key], value):
            log.warning("Param %s stays %r in the run (this job passed %r)", key, existing[key], value)
    mlflow.log_params(fresh)


def param_text(value) -> str:
    """A flag's value as a param: several paths joined with os.pathsep, as `--dataset a.json:b.json` takes them."""
    if isinstance(value, list | tuple):
        return os.pathsep.join(map(str, value))
    return str(value)


def same_value(logged: str, value: str) -> bool:
    """Equal, or the same switch value spelled two ways (`mlflow run -P bf16=true` logs 'true', the script True)."""
    switch = {"true": True, "false": False}
    return logged == value or switch.get(logged.lower(), logged) == switch.get(value.lower(), value)


class MlflowMetricsCallback(TrainerCallback):
    """Logs the Trainer's numbers under stable names, plus real tokens per second, padding and peak memory.

    Throughput counts non-padding tokens over the time `costs` clocked in training steps: evaluation and checkpoint
    saving between steps are left out. Peak memory is the run's so far, earlier segments of a resumed run included.
    Real and padding tokens per step come from the collator's counts, evaluation batches left out.
    """

    def __init__(self, outbox: MlflowOutbox, costs: RunCosts, collator=None) -> None:
        self.outbox = outbox
        self.costs = costs
        self.collator = collator
        self.tokens_at_last_log = 0
        self.seconds_at_last_log = 0.0
        self.counted = [0, 0]  # real, padding tokens of training batches since the last log
        self.collator_mark = (0, 0)
        self.steps_at_last_log = 0

    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        if train_dataloader is not None:
            order = data_order_sha256(train_dataloader)
            if order is not None:
                log_params_once({"data_order_sha256": order})
        self.tokens_at_last_log = state.num_input_tokens_seen
        self.seconds_at_last_log = 0.0
        self.steps_at_last_log = state.global_step
        self._skip_collated()

    def on_step_end(self, args, state, control, **kwargs):
        if self.collator is not None:  # a step's batches are all collated before its end
            real, padding = self.collator.real_tokens, self.collator.padding_tokens
            self.counted[0] += real - self.collator_mark[0]
            self.counted[1] += padding - self.collator_mark[1]
            self.collator_mark = (real, padding)

    def on_evaluate(self, args, state, control, **kwargs):
        self._skip_collated()

    def _skip_collated(self) -> None:
        """Leave out of the counts what was collated since the last step: evaluation batches."""
        if self.collator is not None:
            self.collator_mark = (self.collator.real_tokens, self.collator.padding_tokens)

    def on_log(self, args, state, control, logs=None, **kwargs):
        numbers = {k: v for k, v in (logs or {}).items() if isinstance(v, (int, float))}
        if "loss" in numbers:
            # The Trainer's own train_* speed figures are wall-clock since start, evaluation included: replaced.
            numbers = {k: v for k, v in numbers.items() if not k.startswith("train_")}
            numbers["train_loss"] = numbers.pop("loss")
            seconds = self.costs.step_seconds - self.seconds_at_last_log
            if seconds > 0:
                numbers["tokens_per_second"] = (state.num_input_tokens_seen - self.tokens_at_last_log) / seconds
            self.tokens_at_last_log = state.num_input_tokens_seen
            self.seconds_at_last_log = self.costs.step_seconds
            numbers["peak_memory_mb"] = self.costs.peak_memory_mb()
            numbers.update(self._padding_metrics(state.global_step - self.steps_at_last_log))
            self.steps_at_last_log = state.global_step
        elif "train_loss" in numbers:  # the end-of-training summary: its train_loss is the mean over this job's steps
            # Its runtime and speeds cover this job alone; the loop logs the run's, over every segment.
            mean = numbers.pop("train_loss")
            numbers = {k: v for k, v in numbers.items() if not k.startswith("train_")}
            numbers["train_loss_mean"] = mean
        self.outbox.log_metrics(numbers, step=state.global_step)

    def _padding_metrics(self, steps: int) -> dict[str, float]:
        real, padding = self.counted
        self.counted = [0, 0]
        if steps <= 0 or real == 0:
            return {}
        return {
            "real_tokens_per_step": real / steps,
            "padding_tokens_per_step": padding / steps,
            "padding_fraction": padding / (real + padding),
        }


def log_training_outputs(
    outbox: MlflowOutbox,
    output_dir: Path,
    energy: EnergyReport,
    costs: Costs,
    *,
    best_eval_loss: float,
    tokens: int,
) -> None:
    """End-of-run metrics, and the saved model, energy report and trainer state as artifacts.

    The cost metrics are the run's, over every segment of a resumed training (shared.track.costs.Costs.metrics);
    energy.json and the gpu_power_watts series are this job's meter alone.
    Adapters are uploaded whole. A full model's weights (gigabytes for a real model) stay in the output
    directory, whose path the run records; its config and tokenizer are uploaded.
    """
    outbox.log_metrics({"best_eval_loss": best_eval_loss, **costs.metrics(tokens)}, step=0)
    if costs.energy_joules is None:
        outbox.set_tag("energy_unavailable", energy.reason or "an earlier segment of the run could not measure it")
    if energy.available:
        log_power_series(outbox, energy.power_samples, energy.seconds)
    is_adapter = (Path(output_dir) / "adapter_config.json").is_file()
    if not is_adapter:
        outbox.set_tag("model_weights_path", str(Path(output_dir).resolve()))
    for path in sorted(Path(output_dir).iterdir()):
        if path.name in ROOT_ARTIFACTS:
            outbox.upload(path)
        elif path.is_file() and path.name not in (RUN_FILE, OUTBOX_FILE, "training_args.bin"):
            if is_adapter or not _is_full_weights(path):
                outbox.upload(path, artifact_path="model")


def log_power_series(outbox: MlflowOutbox, samples: list[list[float]], duration: float) -> None:
    """Total GPU power over the job as the metric gpu_power_watts, its step the second since the start."""
    started_ms = (time.time() - duration) * 1000
    outbox.log_points([("gpu_power_watts", watts, int(started_ms + 1000 * t), int(t)) for t, watts in samples])


def _is_full_weights(path: Path) -> bool:
    """model.safetensors, its shards (model-00001-of-00004.safetensors) and their index."""
    return path.name.startswith("model") and (path.suffix == ".safetensors" or path.name.endswith(".index.json"))
