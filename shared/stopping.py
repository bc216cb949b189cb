"""Early stopping on a relative improvement of the dev loss, the rule the compared methods all share.

transformers' EarlyStoppingCallback takes an absolute threshold; a relative one means the same thing for a
model whose loss starts at 0.5 and one whose loss starts at 5.
"""

import logging

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
