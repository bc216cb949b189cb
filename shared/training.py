"""The training job every method runs: only the model it trains differs.

Order matters: every check that can fail on bad input (flags, output directory, data) runs before the MLflow
run starts and before the model loads, so a mistake costs seconds and leaves nothing behind.
"""

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import torch
from accelerate import PartialState
from transformers import PreTrainedModel, Trainer, TrainingArguments, set_seed

from shared.data import batch_collator, file_sha256, read_records, split_off_dev, tokenize_records
from shared.dev_metrics import dev_metrics, reduce_logits
from shared.energy import EnergyMeter, EnergyReport, sum_reports
from shared.failures import is_out_of_memory, out_of_memory
from shared.logs import setup_logging
from shared.modeling import check_attention, check_weights_format, count_parameters, load_tokenizer
from shared.preemption import PreemptionCallback
from shared.provenance import environment_record, log_datasets, model_revision
from shared.sources import preparation_params
from shared.stopping import DivergenceGuard, RelativeEarlyStopping
from shared.tracking import (
    RUN_FILE,
    MlflowMetricsCallback,
    check_tracking_server,
    is_main_process,
    log_params_once,
    log_training_outputs,
    tracked_run,
)

log = logging.getLogger(__name__)

COMPLETION_MARKER = "training_complete.json"
DEFAULT_MIN_FREE_GB = 1.0


def run_training(
    method: str,
    flags: dict,
    build_model: Callable[[dict], PreTrainedModel],
    *,
    extra_files: dict[str, dict] | None = None,
    **trainer_settings: Any,
) -> None:
    """Check inputs, track the run, build the model with `build_model(flags)`, train with early stopping, save.

    `extra_files` are JSON files the method writes beside its saved model (name -> content).
    `trainer_settings` go to TrainingArguments on top of the shared ones (e.g. a DeepSpeed config).
    """
    setup_logging()
    output_dir: Path = flags["output_dir"]
    checkpoint = check_output_dir(output_dir, flags["resume"], schedule(flags))
    check_precision(flags)
    check_schedule(flags)
    check_weights_format(flags)
    check_attention(flags)
    if is_main_process():
        check_tracking_server(flags["tracking_uri"])
    # Built before the model: under a launcher this joins the process group, and with ZeRO-3 it makes
    # from_pretrained load each rank's shard only. The step-0 evaluation runs inside train() (eval_on_start):
    # a DeepSpeed engine prepared by an evaluate() before train() has no optimizer and cannot train.
    args = training_arguments(flags, eval_on_start=checkpoint is None, **cpu_settings(trainer_settings))
    train_records, dev_records, data_params = load_records(flags)
    tokenizer = load_tokenizer(flags)
    train_data = tokenize_records(train_records, tokenizer, flags["max_length"], "training data")
    dev_data = tokenize_records(dev_records, tokenizer, flags["max_length"], "dev data")
    for name, data in (("train", train_data), ("dev", dev_data)):
        data_params.update(
            {f"{name}_kept": len(data.dataset), f"{name}_truncated": data.truncated, f"{name}_dropped": data.dropped}
        )

    tracking = {
        k: flags[k] for k in ("base_model", "system_metrics", "tracking_uri", "experiment_name", "run_name", "resume")
    }
    PartialState().wait_for_everyone()  # every rank has checked the output directory before rank 0 writes to it
    preemption = PreemptionCallback()
    with preemption.catching_signals(), tracked_run(method, {**flags, **data_params}, output_dir, **tracking) as outbox:
        meter = EnergyMeter() if int(os.environ.get("LOCAL_RANK", "0")) == 0 else None  # one meter per node
        if meter:
            meter.start()
        set_seed(flags["seed"])
        model = build_model(flags)
        counts = count_parameters(model)
        if is_main_process():  # every rank counts the same model
            click.echo(
                f"Trainable parameters: {counts['trainable_params']:,} of {counts['total_params']:,} "
                f"({counts['trainable_percent']:.4f}%)"
            )
        callbacks = [
            RelativeEarlyStopping(flags["patience"], flags["min_improvement"]),
            DivergenceGuard(flags["learning_rate"], model.config.vocab_size),
            preemption,
        ]
        collator = batch_collator(tokenizer, flags["packing"], flags["bounded_rows"])
        if is_main_process():
            revision = model_revision(flags["base_model"], model.config)
            log_params_once({**counts, **environment_record(), "base_model_revision": revision})
            if checkpoint is None:  # a resumed run has its inputs already
                inputs = {"training": (flags["dataset"], train_records), "dev": (flags["dev_dataset"], dev_records)}
                log_datasets(inputs)
            callbacks.append(MlflowMetricsCallback(outbox, collator))
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=train_data.dataset,
            eval_dataset=dev_data.dataset,
            data_collator=collator,
            processing_class=tokenizer,
            callbacks=callbacks,
            compute_metrics=dev_metrics,
            preprocess_logits_for_metrics=reduce_logits,
        )
        if checkpoint is not None:
            log.info("Resuming from %s", checkpoint)
        try:
            result = trainer.train(resume_from_checkpoint=checkpoint)
        except (torch.OutOfMemoryError, MemoryError, RuntimeError) as err:
            if not is_out_of_memory(err):
                raise
            device = "GPU" if isinstance(err, torch.OutOfMemoryError) else "CPU"
            raise out_of_memory(method, flags, trainer.state.global_step, collator.last_shape, device) from None
        log.info("Saving the best model to %s", output_dir)
        trainer.save_model(str(output_dir))
        trainer.save_state()
        energy = job_energy(meter)
        if is_main_process():
            for name, content in (extra_files or {}).items():
                (output_dir / name).write_text(json.dumps(content, indent=2) + "\n")
            for path in filter(None, (output_dir / "energy.json", flags["energy_log"])):
                energy.write(path)
            # The loss of the checkpoint kept (log_history also holds the step-0 evaluation, which is no checkpoint)
            log_training_outputs(
                outbox,
                output_dir,
                energy,
                best_eval_loss=trainer.state.best_metric,
                runtime=result.metrics["train_runtime"],
                tokens=trainer.state.num_input_tokens_seen,
            )
            marker = {
                "run_id": outbox.run_id,
                "best_eval_loss": trainer.state.best_metric,
                "global_step": trainer.state.global_step,
                "schedule": schedule(flags),
            }
            (output_dir / COMPLETION_MARKER).write_text(json.dumps(marker, indent=2) + "\n")


def job_energy(meter: EnergyMeter | None) -> EnergyReport | None:
    """The job's energy: this node's report, or on several nodes every node's report summed (on all ranks)."""
    report = meter.stop() if meter else None
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return report
    reports = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(reports, report)
    return sum_reports([r for r in reports if r is not None])


def cpu_settings(trainer_settings: dict) -> dict:
    """On a host without CUDA, what the Trainer needs to train on the CPU, alone or as one job over gloo."""
    if torch.cuda.is_available():
        return trainer_settings
    if not trainer_settings.get("deepspeed"):
        # Without use_cpu, --bf16 is refused and processes started by a launcher each train alone.
        return {"use_cpu": True, **trainer_settings}
    # use_cpu=True breaks DeepSpeed's batch-size check: start the gloo group here and have the Trainer use it.
    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    PartialState(backend="gloo")
    return {"accelerator_config": {"use_configured_state": True}, **trainer_settings}


def schedule(flags: dict) -> dict:
    """How long a training was asked to run: a finished one resumed with a longer schedule goes on."""
    return {"epochs": flags["epochs"], "max_steps": flags["max_steps"]}


def check_output_dir(output_dir: Path, resume: bool, requested: dict) -> str | None:
    """Refuse to overwrite a result; with --resume, return the checkpoint to continue from (None: from step 0).

    A finished output resumed with the schedule it finished (a requeued job) has nothing to do; resumed with
    another one (more steps or epochs), its training continues from the last checkpoint.
    """
    check_writable(output_dir)
    marker = output_dir / COMPLETION_MARKER
    if marker.is_file():
        if not resume:
            raise click.UsageError(
                f"{output_dir} holds a finished training ({COMPLETION_MARKER}): choose another --output-dir"
            )
        finished = json.loads(marker.read_text()).get("schedule")
        if finished == requested:
            raise AlreadyComplete(output_dir)
        log.info("%s finished under %s: continuing it under %s", output_dir, finished, requested)
    if resume:
        checkpoint = last_complete_checkpoint(output_dir) if output_dir.is_dir() else None
        if checkpoint is None and not (output_dir / RUN_FILE).is_file():
            raise click.UsageError(f"--resume: {output_dir} holds no checkpoint-* folder to continue from")
        if checkpoint is None:
            log.info("%s holds no checkpoint yet: training again from step 0 in the same MLflow run", output_dir)
        return checkpoint
    if output_dir.exists() and any(output_dir.iterdir()):
        raise click.UsageError(
            f"{output_dir} is not empty: pass --resume to continue its training, or choose another --output-dir"
        )
    return None


def check_writable(output_dir: Path) -> None:
    """Refuse an output location that cannot be written or has too little free space, before any work."""
    existing = next(p for p in (output_dir, *output_dir.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise click.UsageError(f"--output-dir {output_dir}: {existing} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        raise click.UsageError(f"--output-dir {output_dir}: cannot write in {existing} ({err.strerror})") from None
    free_gb = shutil.disk_usage(existing).free / 2**30
    needed_gb = float(os.environ.get("PEFT_WORKBENCH_MIN_FREE_GB", DEFAULT_MIN_FREE_GB))
    if free_gb < needed_gb:
        raise click.UsageError(
            f"--output-dir {output_dir}: only {free_gb:.1f} GiB free in {existing}, {needed_gb:g} GiB needed for "
            "checkpoints (set PEFT_WORKBENCH_MIN_FREE_GB to change the floor)"
        )


def last_complete_checkpoint(output_dir: Path) -> str | None:
    """The newest checkpoint the Trainer finished writing; one cut short by a kill is set aside, never resumed."""
    for checkpoint in sorted(output_dir.glob("checkpoint-*"), key=_step, reverse=True):
        if _step(checkpoint) < 0:
            continue
        try:
            json.loads((checkpoint / "trainer_state.json").read_text())  # written last, after weights and optimizer
            return str(checkpoint)
        except (OSError, ValueError):
            aside = checkpoint.with_name(f"incomplete-{checkpoint.name}")
            log.warning("%s was cut short while saving: moved to %s, resuming from an earlier one", checkpoint, aside)
            shutil.rmtree(aside, ignore_errors=True)
            checkpoint.rename(aside)
    return None


def _step(checkpoint: Path) -> int:
    suffix = checkpoint.name.removeprefix("checkpoint-")
    return int(suffix) if suffix.isdigit() else -1


class AlreadyComplete(click.exceptions.Exit):
    """A finished output directory: a rerun (a requeued job, say) has nothing to do and exits successfully."""

    def __init__(self, output_dir: Path) -> None:
        click.echo(f"{output_dir} holds a finished training ({COMPLETION_MARKER}): nothing to do", err=True)
        super().__init__(0)


def check_schedule(flags: dict) -> None:
    if flags["warmup_steps"] and flags["warmup_ratio"]:
        raise click.UsageError("pass --warmup-steps or --warmup-ratio, not both")


def check_precision(flags: dict) -> None:
    if flags["bf16"] and flags["fp16"]:
        raise click.UsageError("--bf16 and --fp16 exclude each other: pick one")
    if flags["fp16"] and not torch.cuda.is_available():
        raise click.UsageError("--fp16 needs a CUDA GPU; on CPU use --bf16 or neither")


def load_records(flags: dict) -> tuple[list, list, dict]:
    """Training and dev records (validated), and the params that identify the data in MLflow."""
    train = read_records(flags["dataset"])
    params = {
        "dataset_rows": len(train),
        "dataset_sha256": file_sha256(flags["dataset"]),
        **preparation_params(flags["dataset"]),
    }
    if flags["dev_dataset"]:
        dev = read_records(flags["dev_dataset"])
        params.update(dev_dataset_rows=len(dev), dev_dataset_sha256=file_sha256(flags["dev_dataset"]))
    else:
        train, dev = split_off_dev(train, flags["dev_fraction"], flags["seed"])
        log.info("Held out %d of %d training records as the dev set", len(dev), len(dev) + len(train))
    params.update(train_rows=len(train), dev_rows=len(dev), **dev_overlap(train, dev))
    return train, dev, params


def dev_overlap(train: list[dict], dev: list[dict]) -> dict[str, int]:
    """How many dev records are training records too (whole, or by their prompt), with a warning when any are:
    a dev loss measured on training data flatters the checkpoints and learning rates it selects."""
    records, prompts = {(r["input"], r["output"]) for r in train}, {r["input"] for r in train}
    overlap = {
        "dev_overlap_records": sum((r["input"], r["output"]) in records for r in dev),
        "dev_overlap_prompts": sum(r["input"] in prompts for r in dev),
    }
    if overlap["dev_overlap_prompts"]:
        log.warning(
            "Leakage: %d of the %d dev records are training records too (%d share their prompt with one): the dev "
            "loss that picks checkpoints and learning rates is measured partly on training data. Use a dev set "
            "disjoint from the training records.",
            overlap["dev_overlap_records"],
            len(dev),
            overlap["dev_overlap_prompts"],
        )
    return overlap


def training_arguments(flags: dict, **overrides: Any) -> TrainingArguments:
    """The Trainer settings every method shares: same schedule, same evaluation, same stopping rule."""
    schedule = {"eval_strategy": "epoch", "save_strategy": "epoch"}
    if flags["eval_steps"]:
        schedule = {
            "eval_strategy": "steps",
            "save_strategy": "steps",
            "eval_steps": flags["eval_steps"],
            "save_steps": flags["eval_steps"],
        }
    return TrainingArguments(
        output_dir=str(flags["output_dir"]),
        num_train_epochs=flags["epochs"],
        max_steps=flags["max_steps"],
        learning_rate=flags["learning_rate"],
        optim=flags["optim"],
        lr_scheduler_type=flags["lr_scheduler"],
        warmup_steps=flags["warmup_steps"] or flags["warmup_ratio"],  # a float in [0, 1) is a ratio of the steps
        weight_decay=flags["weight_decay"],
        adam_beta1=flags["adam_beta1"],
        adam_beta2=flags["adam_beta2"],
        adam_epsilon=flags["adam_epsilon"],
        max_grad_norm=flags["max_grad_norm"],
        per_device_train_batch_size=flags["batch_size"],
        per_device_eval_batch_size=flags["batch_size"],
        gradient_accumulation_steps=flags["gradient_accumulation"],
        train_sampling_strategy="group_by_length" if flags["group_by_length"] else "random",
        torch_compile=flags["torch_compile"],
        activation_checkpointing=flags["gradient_checkpointing"],
        activation_checkpointing_kwargs={"use_reentrant": False},
        dataloader_pin_memory=torch.cuda.is_available(),
        bf16=flags["bf16"],
        fp16=flags["fp16"],
        seed=flags["seed"],
        logging_steps=flags["logging_steps"],
        **schedule,
        save_total_limit=1,  # with load_best_model_at_end the best checkpoint is kept too
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        restore_callback_states_from_checkpoint=True,
        include_num_input_tokens_seen="non_padding",
        logging_nan_inf_filter=False,  # a NaN loss must show, so that DivergenceGuard stops the run
        report_to="none",  # MlflowMetricsCallback logs; transformers' own MLflow callback would log twice
        **overrides,
    )
