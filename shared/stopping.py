"""Early stopping on a relative improvement of the dev loss, the rule the compared methods all share.

transformers' EarlyStoppingCallback takes an absolute threshold; a relative one means the same thing for a
model whose loss starts at 0.5 and one whose loss starts at 5.
"""

import logging
import math

import click
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

log = logging.getLogger(__name__)


def is_improvement(reference: float | None, current: float, min_improvement: float) -> bool:
    """True when `current` is lower than `reference` by at least `min_improvement` of it (0.01 = 1%)."""
    return reference is None or reference - current >= min_improvement * abs(reference)


class RelativeEarlyStopping(TrainerCallback, ExportableState):
    """Stop when `patience` evaluations in a row fail to beat the reference loss by `min_improvement`.

    The reference moves only on a real improvement, so slow drifts that add up to one count.
    Its state travels in checkpoints, so a resumed run keeps counting where it stopped.
    """

    def __init__(self, patience: int = 3, min_improvement: float = 0.01, metric: str = "eval_loss"):
        self.patience = patience
        self.min_improvement = min_improvement
        self.metric = metric
        self.reference: float | None = None
        self.evaluations_without_improvement = 0

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        value = (metrics or {}).get(self.metric)
        if value is None:
            return
        if is_improvement(self.reference, value, self.min_improvement):
            self.reference = value
            self.evaluations_without_improvement = 0
            return
        self.evaluations_without_improvement += 1
        if self.evaluations_without_improvement >= self.patience:
            log.info(
                "Stopping early: %s has not improved by %.1f%% on %.4f for %d evaluations",
                self.metric,
                100 * self.min_improvement,
                self.reference,
                self.patience,
            )
            control.should_training_stop = True

    def state(self) -> dict:
        return {
            "args": {"patience": self.patience, "min_improvement": self.min_improvement, "metric": self.metric},
            "attributes": {
                "reference": self.reference,
                "evaluations_without_improvement": self.evaluations_without_improvement,
            },
        }


class Diverged(click.ClickException):
    """Training produced a non-finite loss; the run fails and the last good checkpoint stays."""


class DivergenceGuard(TrainerCallback):
    """Stop at the first non-finite training loss, gradient norm or dev loss, before it is checkpointed.

    The Trainer hides non-finite losses by default (`logging_nan_inf_filter`); training runs with that off, so a
    NaN in any step of a logging interval shows in the logged mean.
    """

    def __init__(self, learning_rate: float) -> None:
        self.learning_rate = learning_rate

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key in ("loss", "grad_norm"):
            self._check(key, (logs or {}).get(key), state, f"steps up to {state.global_step}")

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self._check("eval_loss", (metrics or {}).get("eval_loss"), state, f"the evaluation at step {state.global_step}")

    def _check(self, name: str, value: float | None, state, where: str) -> None:
        if value is None or math.isfinite(value):
            return
        kept = state.best_model_checkpoint or "none yet"
        raise Diverged(
            f"training diverged: {name} is {value} in {where}; the last good checkpoint is {kept}. "
            f"Try a lower --learning-rate (this run: {self.learning_rate:g})"
        )
