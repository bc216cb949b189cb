"""Preemption and resuming: a scheduler's SIGTERM or SIGUSR1 becomes a checkpoint at the next step boundary and a
resumable exit; a job resumed from a checkpoint saved where the training had ended trains no further.

The job then exits with PREEMPTED_EXIT_CODE; rerunning the same command with `--resume` continues from that
checkpoint in the same MLflow run. The SLURM wrappers requeue on it.
"""

import json
import logging
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from transformers import TrainerCallback

from shared.outputs import PREEMPTED_EXIT_CODE, Preempted

log = logging.getLogger(__name__)

PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class PreemptionCallback(TrainerCallback):
    """Asks the Trainer to checkpoint and stop at the end of the step during which a preemption signal came."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self.stopping = False

    @contextmanager
    def catching_signals(self) -> Iterator["PreemptionCallback"]:
        """Within the block, the preemption signals set a flag instead of killing the process."""
        previous = {signum: signal.signal(signum, self._note_signal) for signum in PREEMPTION_SIGNALS}
        try:
            yield self
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _note_signal(self, signum, frame) -> None:
        self.signal_name = signal.Signals(signum).name
        log.warning("Received %s: saving a checkpoint at the end of this step, then stopping", self.signal_name)

    def on_step_end(self, args, state, control, **kwargs):
        self.stopping = _any_rank(self.signal_name is not None, args.device)
        if self.stopping:
            control.should_save = True
        return control

    def on_save(self, args, state, control, **kwargs):
        # Raised, not a should_training_stop: a finishing Trainer deletes the last checkpoint and loads the best.
        if self.stopping:
            log.warning(
                "Preempted at step %d: checkpoint saved; rerun the same command with --resume to continue "
                "(exit status %d)",
                state.global_step,
                PREEMPTED_EXIT_CODE,
            )
            raise Preempted(state.global_step)


class TrainingEnded(Exception):
    """A resumed job's checkpoint was saved where its training ended: there is nothing left to train."""

    def __init__(self, step: int) -> None:
        super().__init__(f"the training ended at step {step}")
        self.step = step


class EndedTrainingGuard(TrainerCallback):
    """Stops a resumed training before its first step when the checkpoint it resumes was saved where the training
    ended: at the last step of the schedule, or where early stopping ended it (the Trainer keeps that decision in the
    checkpoint). A longer schedule than the checkpoint's goes on.

    The Trainer checks the step count only after a step, so such a resume would otherwise train one step more (and,
    after early stopping, up to the next evaluation), evaluate again, and end on another model than the training
    it continues.
    """

    def __init__(self, checkpoint: str | None) -> None:
        self.saved = json.loads((Path(checkpoint) / "trainer_state.json").read_text()) if checkpoint else None

    def on_train_begin(self, args, state, control, **kwargs):
        if self.saved is None:
            return
        stopped = self.saved["stateful_callbacks"].get("TrainerControl", {}).get("args", {}).get("should_training_stop")
        if state.global_step >= state.max_steps or (stopped and state.max_steps <= self.saved["max_steps"]):
            raise TrainingEnded(state.global_step)


def _any_rank(flag: bool, device) -> bool:
    """True on every rank when it is true on one: a signal may reach only some processes of a job."""
    import torch

    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return flag
    value = torch.tensor([int(flag)], device=device)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return bool(value.item())
