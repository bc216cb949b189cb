"""Preemption: a scheduler's SIGTERM or SIGUSR1 becomes a checkpoint at the next step boundary and a resumable exit.

The job then exits with PREEMPTED_EXIT_CODE; rerunning the same command with `--resume` continues from that
checkpoint in the same MLflow run. The SLURM wrappers requeue on it.
"""

import logging
import signal
from collections.abc import Iterator
from contextlib import contextmanager

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


def _any_rank(flag: bool, device) -> bool:
    """True on every rank when it is true on one: a signal may reach only some processes of a job."""
    import torch

    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return flag
    value = torch.tensor([int(flag)], device=device)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return bool(value.item())
