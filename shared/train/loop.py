"""The training every method runs, once shared.train.checks has checked its inputs: only the model it trains differs."""

import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import torch
from accelerate import PartialState
from transformers import PreTrainedModel, Trainer, TrainingArguments, set_seed

from shared.data.batching import batch_collator, tokenize_records
from shared.model.loading import count_parameters, load_tokenizer
from shared.outputs import COMPLETION_MARKER, schedule
from shared.precision import bf16_enabled
from shared.track.costs import RunCosts, earlier_costs
from shared.track.energy import EnergyMeter, EnergyReport, sum_reports
from shared.track.mlflow_run import (
    MlflowMetricsCallback,
    is_main_process,
    log_params_once,
    log_training_outputs,
    tracked_run,
)
from shared.track.provenance import environment_record, log_datasets, model_revision
from shared.train.checks import CheckedInputs
from shared.train.completion_loss import CompletionLossTrainer
from shared.train.dev_metrics import dev_metrics, reduce_logits
from shared.train.failures import is_out_of_memory, out_of_memory
from shared.train.preemption import EndedTrainingGuard, PreemptionCallback, TrainingEnded
from shared.train.stopping import DivergenceGuard, RelativeEarlyStopping

log = logging.getLogger(__name__)


def train(
    method: str,
    flags: dict,
    build_model: Callable[[dict], PreTrainedModel],
    checked: CheckedInputs,
    *,
    extra_files: dict[str, dict] | None = None,
    **trainer_settings: Any,
) -> None:
    """Track the run, build the model with `build_model(flags)`, train with early stopping, save (see
    shared.train.job.run_training, which checks the inputs first)."""
    output_dir: Path = flags["output_dir"]
    checkpoint = checked.checkpoint
    # Built before the model: under a launcher this joins the process group, and with ZeRO-3 it makes
    # from_pretrained load each rank's shard only. The step-0 evaluation runs inside train() (eval_on_start):
    # a DeepSpeed engine prepared by an evaluate() before train() has no optimizer and cannot train.
    args = training_arguments(flags, eval_on_start=checkpoint is None, **cpu_settings(trainer_settings))
    train_records, dev_records, data_params = checked.train_records, checked.dev_records, dict(checked.data_params)
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
        # RunCosts first: it writes the costs into a checkpoint before preemption stops the job there.
        costs = RunCosts(lambda: gathered(meter.reading() if meter else None), earlier_costs(checkpoint))
        callbacks = [
            costs,
            EndedTrainingGuard(checkpoint),
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
            callbacks.append(MlflowMetricsCallback(outbox, costs, collator))
        trainer = CompletionLossTrainer(
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
            runtime = trainer.train(resume_from_checkpoint=checkpoint).metrics["train_runtime"]
        except TrainingEnded as ended:
            log.info("%s was saved where the training ended (step %d): nothing left to train", checkpoint, ended.step)
            keep_the_best_checkpoint(trainer)
            runtime = 0.0
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
                costs.total(runtime, energy),
                best_eval_loss=trainer.state.best_metric,
                tokens=trainer.state.num_input_tokens_seen,
            )
            marker = {
                "run_id": outbox.run_id,
                "best_eval_loss": trainer.state.best_metric,
                "global_step": trainer.state.global_step,
                "schedule": schedule(flags),
            }
            (output_dir / COMPLETION_MARKER).write_text(json.dumps(marker, indent=2) + "\n")


def keep_the_best_checkpoint(trainer: Trainer) -> None:
    """What Trainer.train() does at its end, for a training resumed where it had ended: load the best checkpoint's
    model and delete the other checkpoints."""
    best = trainer.state.best_model_checkpoint
    if best is None:
        return
    trainer._load_best_model()  # private, but the one loader for adapters, full models, DeepSpeed and FSDP alike
    if trainer.args.should_save:
        for folder in Path(trainer.args.output_dir).glob("checkpoint-*"):
            if not folder.samefile(best):
                shutil.rmtree(folder, ignore_errors=True)


def job_energy(meter: EnergyMeter | None) -> EnergyReport | None:
    """The job's energy: this node's report, or on several nodes every node's report summed (on all ranks)."""
    return gathered(meter.stop() if meter else None)


def gathered(report: EnergyReport | None) -> EnergyReport | None:
    """This node's energy report, or on several nodes every node's summed (a collective: every rank calls it)."""
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
        bf16=bf16_enabled(flags),
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
