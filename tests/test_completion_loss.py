"""The head run at the labelled positions only: the same loss, gradients and dev metrics as the model's own loss over
every position, for padded, one-row and bounded-row batches."""

import math

import pytest
import torch
from peft import get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainingArguments

from shared.data.batching import batch_collator, tokenize_records
from shared.model.lora import lora_config
from shared.train.completion_loss import CompletionLossTrainer
from shared.train.dev_metrics import dev_metrics, reduce_logits

RECORDS = [
    {"input": "Spell in words: 1 2", "output": "one two"},
    {"input": "Spell in words, please, a longer question: 7 8 9 0", "output": "seven eight nine zero"},
    {"input": "Say: 5", "output": "five"},
]
LORA = {"lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": "all-linear"}
BATCHES = {"padded": (False, False), "one row": (True, False), "bounded rows": (True, True)}


def trainer_for(model, tmp_path) -> CompletionLossTrainer:
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    return CompletionLossTrainer(model=model, args=args)


def lora_model(path: str):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(path)
    model.config.use_cache = False
    return get_peft_model(model, lora_config(LORA))


def trained_gradients(model) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("batching", BATCHES)
@pytest.mark.parametrize("arch", ["tiny_qwen2", "tiny_llama"])
def test_the_labelled_positions_give_the_models_own_loss_and_gradients(request, tmp_path, arch, batching):
    path = request.getfixturevalue(arch)
    tokenizer = AutoTokenizer.from_pretrained(path)
    batch = batch_collator(tokenizer, *BATCHES[batching])(list(tokenize_records(RECORDS, tokenizer, 256, "t").dataset))
    labelled = int((batch["labels"][:, 1:] != -100).sum())
    model = lora_model(path)
    reference = model(**batch).loss  # the model's own loss: the head and the cross-entropy at every position
    reference.backward()
    expected = trained_gradients(model)
    model.zero_grad()

    trainer = trainer_for(model, tmp_path)
    loss, outputs = trainer.compute_loss(model, dict(batch), return_outputs=True, num_items_in_batch=labelled)
    assert outputs["logits"].shape == (1, labelled, model.config.vocab_size)  # the head ran where labels are only
    assert loss.item() == pytest.approx(reference.item(), rel=1e-5)
    loss.backward()
    for name, gradient in trained_gradients(model).items():
        torch.testing.assert_close(gradient, expected[name], rtol=1e-4, atol=1e-6, msg=name)
    # Without a count of the accumulated batch's labels the loss is this batch's mean: the same here.
    assert trainer.compute_loss(model, dict(batch)).item() == pytest.approx(reference.item(), rel=1e-5)
    # Outside compute_loss the head sees every position again.
    assert model(**{k: v for k, v in batch.items() if k != "labels"}).logits.shape[:2] == batch["input_ids"].shape


def test_dev_metrics_from_the_labelled_positions_equal_those_from_every_position(tmp_path, tiny_qwen2):
    tokenizer = AutoTokenizer.from_pretrained(tiny_qwen2)
    batch = batch_collator(tokenizer, True, True)(list(tokenize_records(RECORDS, tokenizer, 256, "t").dataset))
    model = lora_model(tiny_qwen2).eval()
    with torch.no_grad():
        full = model(**batch).logits
        loss, outputs = trainer_for(model, tmp_path).compute_loss(model, dict(batch), return_outputs=True)
    # Independently: every position's logits, scored against the next token where it carries a label.
    targets = batch["labels"][:, 1:]
    scored = targets != -100
    log_probs = torch.log_softmax(full[:, :-1], dim=-1)
    true_log_prob = log_probs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)[scored]
    accuracy = (full[:, :-1].argmax(-1)[scored] == targets[scored]).float().mean().item()

    # The Trainer pads logits gathered across processes with -100 rows at their end: they must not count.
    padded = torch.nn.functional.pad(outputs["logits"], (0, 0, 0, 3), value=-100)
    reduced = reduce_logits(padded, batch["labels"])
    metrics = dev_metrics(type("Prediction", (), {"predictions": reduced, "label_ids": batch["labels"]}))
    assert metrics["token_accuracy"] == pytest.approx(accuracy)
    assert metrics["perplexity"] == pytest.approx(math.exp(-true_log_prob.mean().item()), rel=1e-5)
    assert metrics["perplexity"] == pytest.approx(math.exp(loss.item()), rel=1e-5)
