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
    """Training went wrong (a non-finite number, nothing learning, an exploding loss); the run fails and the last
    good checkpoint stays."""


# How many logging steps in a row of a dead gradient, or of a loss stuck at the uniform prediction, end a run: a
# healthy run never logs an exact 0 gradient norm, and never sits exactly at ln(vocabulary size) once it was below.
STALLED_LOGS = 3
UNIFORM_TOLERANCE = 1e-3  # relative to ln(vocabulary size)
# A dev loss this many times the step-0 one, for this many evaluations in a row, is an explosion.
EXPLODED_FACTOR = 2.0
EXPLODED_EVALUATIONS = 2


class DivergenceGuard(TrainerCallback):
    """Stop a training that has gone wrong, before the step that shows it is checkpointed:

    - a non-finite training loss, gradient norm or dev loss;
    - a gradient norm of exactly 0 for STALLED_LOGS logging steps in a row while the learning rate is above 0:
      nothing learns any more (a model driven to a constant output has no gradient);
    - a training loss stuck at ln(vocabulary size), the loss of a uniform prediction, for STALLED_LOGS logging
      steps, once the model had been below it (a randomly initialised model starts there legitimately);
    - a dev loss above EXPLODED_FACTOR times the step-0 dev loss for EXPLODED_EVALUATIONS evaluations in a row.

    The Trainer hides non-finite losses by default (`logging_nan_inf_filter`); training runs with that off, so a
    NaN in any step of a logging interval shows in the logged mean.
    """

    def __init__(self, learning_rate: float, vocab_size: int | None = None) -> None:
        self.learning_rate = learning_rate
        self.uniform_loss = math.log(vocab_size) if vocab_size else None
        self.dead_gradients: list[int] = []  # steps of the latest logs in a row with a zero gradient norm
        self.uniform_losses: list[int] = []
        self.lowest_loss = math.inf
        self.exploded_evaluations = 0

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        for key in ("loss", "grad_norm"):
            self._check(key, logs.get(key), state, f"steps up to {state.global_step}")
        dead = logs.get("grad_norm") == 0 and logs.get("learning_rate", self.learning_rate) > 0
        if "grad_norm" in logs and _stalled(self.dead_gradients, dead, state.global_step):
            self._fail(
                state,
                f"training stopped learning at step {state.global_step}: the gradient norm was 0 at every logged "
                f"step from {self.dead_gradients[0]} on while the learning rate was above 0 (the model gives a "
                "constant output)",
            )
        self._check_uniform(logs.get("loss"), state)

    def _check_uniform(self, loss: float | None, state) -> None:
        if loss is None or self.uniform_loss is None:
            return
        at_uniform = abs(loss - self.uniform_loss) <= UNIFORM_TOLERANCE * self.uniform_loss
        was_below = self.lowest_loss < (1 - 10 * UNIFORM_TOLERANCE) * self.uniform_loss
        if _stalled(self.uniform_losses, at_uniform and was_below, state.global_step):
            self._fail(
                state,
                f"training stopped learning at step {state.global_step}: the training loss has sat at {loss:.4f}, "
                f"the loss of a uniform prediction (ln of the vocabulary size, {self.uniform_loss:.4f}), since step "
                f"{self.uniform_losses[0]}, after having been {self.lowest_loss:.4f}",
            )
        self.lowest_loss = min(self.lowest_loss, loss)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        loss = (metrics or {}).get("eval_loss")
        self._check("eval_loss", loss, state, f"the evaluation at step {state.global_step}")
        first = next((entry["eval_loss"] for entry in state.log_history if "eval_loss" in entry), None)
        if loss is None or first is None or state.global_step == 0:
            return
        self.exploded_evaluations = self.exploded_evaluations + 1 if loss > EXPLODED_FACTOR * first else 0
        if self.exploded_evaluations >= EXPLODED_EVALUATIONS:
            self._fail(
                state,
                f"training diverged at step {state.global_step}: the dev loss is {loss:.4f}, more than "
                f"{EXPLODED_FACTOR:g} times the step-0 dev loss ({first:.4f}), for {self.exploded_evaluations} "
                "evaluations in a row",
            )

    def _check(self, name: str, value: float | None, state, where: str) -> None:
        if value is None or math.isfinite(value):
            return
        self._fail(state, f"training diverged: {name} is {value} in {where}")

    def _fail(self, state, what: str) -> None:
        kept = state.best_model_checkpoint or "none yet"
        raise Diverged(
            f"{what}; the last good checkpoint is {kept}. Try a lower --learning-rate (this run: "
            f"{self.learning_rate:g})"
        )


def _stalled(streak: list[int], seen: bool, step: int) -> bool:
    """Extend the streak of logging steps that showed it (or reset it); True once it is STALLED_LOGS long."""
    if not seen:
        streak.clear()
        return False
    streak.append(step)
    return len(streak) >= STALLED_LOGS
