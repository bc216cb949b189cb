"""The loss on the completion tokens only, with the model's output head run only where a token is predicted.

Prompt tokens carry the label -100, so with completion-only loss most positions predict nothing the loss counts
(a quarter of HumanEval's tokens carry a label). The head (hidden size x vocabulary, a fifth of a small model's
FLOPs) and the cross-entropy over the whole vocabulary would still run at every position, and keep
positions x vocabulary logits and their gradient in memory. A forward pre-hook on the head hands it the hidden
states of the labelled positions only; the loss is the model's own (mean over the labelled tokens of the whole
accumulated batch, as the Trainer counts them), computed on those positions.
"""

import torch
from transformers import Trainer

IGNORE_INDEX = -100


def next_token_targets(labels: torch.Tensor) -> torch.Tensor:
    """Per position, the label of the next token (what the logits there are scored against); -100 at row ends."""
    return torch.nn.functional.pad(labels[..., 1:], (0, 1), value=IGNORE_INDEX)


def completion_loss(outputs, labels: torch.Tensor, num_items_in_batch: torch.Tensor | int | None = None):
    """Cross-entropy of the head's output at the labelled positions (see `CompletionLossTrainer`): summed and
    divided by the labelled tokens of the accumulated batch, or their mean where the Trainer counted none."""
    targets = next_token_targets(labels)
    targets = targets[targets != IGNORE_INDEX]
    logits = outputs["logits"].reshape(-1, outputs["logits"].shape[-1])[: len(targets)]
    loss = torch.nn.functional.cross_entropy(logits.float(), targets.to(logits.device), reduction="sum")
    if num_items_in_batch is None:
        return loss / max(len(targets), 1)
    return loss / num_items_in_batch


class CompletionLossTrainer(Trainer):
    """A Trainer whose model runs its output head only at the positions whose next token carries a label.

    The model's logits come out as (1, labelled positions, vocabulary), in row-major order of the batch; the
    evaluation's `preprocess_logits_for_metrics` receives them so (see shared.train.dev_metrics).
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, compute_loss_func=completion_loss, **kwargs)
        self._labelled: torch.Tensor | None = None
        head = self.model.get_output_embeddings()
        if head is None:
            raise TypeError(f"{type(self.model).__name__} has no output embeddings to compute the loss with")
        head.register_forward_pre_hook(self._labelled_positions_only)

    def _labelled_positions_only(self, head: torch.nn.Module, args: tuple) -> tuple | None:
        if self._labelled is None:  # a forward outside compute_loss (generation, a callback) sees every position
            return None
        hidden, *rest = args
        if hidden.shape[:2] != self._labelled.shape:
            raise ValueError(
                f"the head received hidden states of shape {tuple(hidden.shape)} for labels of shape "
                f"{tuple(self._labelled.shape)}: a method that adds positions to the input (prompt tuning) needs "
                "labels that cover them"
            )
        return (hidden[self._labelled].unsqueeze(0), *rest)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self._labelled = next_token_targets(inputs["labels"]) != IGNORE_INDEX
        try:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        finally:
            self._labelled = None
