"""Dev-set metrics beside eval_loss: next-token accuracy and perplexity, over the output tokens the loss covers.

The head's logits at the labelled positions (see shared.train.completion_loss) are reduced batch by batch to two
numbers per position (the predicted token, the log-probability of the true one), so a whole dev set never holds
full-vocabulary logits. Perplexity is exp of the mean over tokens, not over batches: it does not depend on how the
dev set is batched or packed.
"""

import math

import torch

from shared.train.completion_loss import IGNORE_INDEX, next_token_targets


def reduce_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per position of LABELS: [predicted next token, log-probability of the true next token], -100 where no
    label follows. LOGITS are the head's output at the labelled positions only, in the batch's row-major order."""
    if isinstance(logits, tuple):
        logits = logits[0]
    targets = next_token_targets(labels)
    labelled = targets != IGNORE_INDEX
    # Across processes the Trainer pads the logits with -100 rows at the end: the first ones are this batch's.
    kept = logits.reshape(-1, logits.shape[-1])[: int(labelled.sum())].float()
    true_log_prob = torch.log_softmax(kept, dim=-1).gather(-1, targets[labelled].unsqueeze(-1)).squeeze(-1)
    reduced = torch.full((*labels.shape, 2), float(IGNORE_INDEX), device=kept.device)
    reduced[labelled] = torch.stack([kept.argmax(dim=-1).float(), true_log_prob], dim=-1)
    return reduced


def dev_metrics(prediction) -> dict[str, float]:
    """Token accuracy and perplexity from `reduce_logits`' output and the labels (an EvalPrediction)."""
    reduced, labels = torch.as_tensor(prediction.predictions), torch.as_tensor(prediction.label_ids)
    targets = next_token_targets(labels)
    scored = targets != IGNORE_INDEX
    if not scored.any():
        return {}
    predicted, true_log_prob = reduced[..., 0][scored], reduced[..., 1][scored]
    return {
        "token_accuracy": (predicted.long() == targets[scored]).float().mean().item(),
        "perplexity": math.exp(-true_log_prob.double().mean().item()),
    }
