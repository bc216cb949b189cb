"""Dev-set metrics beside eval_loss: next-token accuracy and perplexity, over the output tokens the loss covers.

The logits are reduced batch by batch to two numbers per position (the predicted token, the log-probability of the
true one), so a whole dev set never holds full-vocabulary logits. Perplexity is exp of the mean over tokens, not
over batches: it does not depend on how the dev set is batched or packed.
"""

import math

import torch

IGNORE_INDEX = -100


def reduce_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per position: [predicted next token, log-probability of the true next token] (shifted as the loss is)."""
    if isinstance(logits, tuple):
        logits = logits[0]
    logits, targets = logits[:, :-1, :], labels[:, 1:]
    predicted = logits.argmax(dim=-1)
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    true_log_prob = log_probs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    reduced = torch.stack([predicted.float(), true_log_prob], dim=-1)
    # The Trainer pads predictions of different lengths with -100; padding a position here the same way keeps the
    # labels and the predictions aligned.
    return torch.nn.functional.pad(reduced, (0, 0, 0, 1), value=IGNORE_INDEX)


def dev_metrics(prediction) -> dict[str, float]:
    """Token accuracy and perplexity from `reduce_logits`' output and the labels (an EvalPrediction)."""
    reduced, labels = torch.as_tensor(prediction.predictions), torch.as_tensor(prediction.label_ids)
    targets = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
    scored = targets != IGNORE_INDEX
    if not scored.any():
        return {}
    predicted, true_log_prob = reduced[..., 0][scored], reduced[..., 1][scored]
    return {
        "token_accuracy": (predicted.long() == targets[scored]).float().mean().item(),
        "perplexity": math.exp(-true_log_prob.double().mean().item()),
    }
