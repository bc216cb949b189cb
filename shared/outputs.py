"""A training's output directory: the files that say what it holds, and the checks made on it before training.

Light on purpose (no torch, no MLflow): the study driver reads these names, and a refused --output-dir costs
a second, not the seconds the training stack takes to import.
"""

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import click

log = logging.getLogger(__name__)

RUN_FILE = "mlflow_run.json"  # the MLflow run that trains the folder: --resume and the evaluation find it there
COMPLETION_MARKER = "training_complete.json"  # written when a training ends well
PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: a checkpoint is saved, rerun with --resume
DEFAULT_MIN_FREE_GB = 1.0


def read_run_id(output_dir: Path) -> str:
    """The MLflow run id recorded in a training output directory."""
    path = Path(output_dir) / RUN_FILE
    if not path.is_file():
        raise click.ClickException(f"{output_dir} holds no {RUN_FILE}: it was not written by a training run")
    return json.loads(path.read_text())["run_id"]


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


class Preempted(click.exceptions.Exit):
    """A job stopped on a signal after saving a checkpoint (shared.train.preemption); the folder holds a resumable
    training and click exits with PREEMPTED_EXIT_CODE."""

    def __init__(self, step: int) -> None:
        super().__init__(PREEMPTED_EXIT_CODE)
        self.step = step
