"""Padding-free batches: the same loss as padded batches, no attention across sequences, the waste logged."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import FAST, only_run, run_in_process, spelled_digits
from shared.data.batching import batch_collator, tokenize_records

RECORDS = [
    {"input": "Spell in words: 1 2", "output": "one two"},
    {"input": "Spell in words, please, a longer question: 7 8 9 0", "output": "seven eight nine zero"},
    {"input": "Say: 5", "output": "five"},
]


def batch_loss(model, batch: dict) -> float:
    with torch.no_grad():
        return model(**batch).loss.item()


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("arch", ["tiny_qwen2", "tiny_llama"])
def test_packed_loss_equals_padded_loss(request, arch, attention):
    path = request.getfixturevalue(arch)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation=attention).eval()
    model.config.use_cache = False
    features = list(tokenize_records(RECORDS, tokenizer, 256, "t").dataset)
    padded = batch_loss(model, batch_collator(tokenizer, packing=False)(features))
    packed_batch = batch_collator(tokenizer, packing=True)(features)
    assert abs(batch_loss(model, packed_batch) - padded) <= 1e-4
    # The check can fail: positions that do not restart let each sequence attend to the ones before it.
    leaking = {**packed_batch, "position_ids": torch.arange(packed_batch["input_ids"].shape[1])[None]}
    assert abs(batch_loss(model, leaking) - padded) > 1e-2


def train(cwd, model, dataset, *flags):
    return run_in_process(
        "methods/lora/train.py", "--experiment-name", "tests", *FAST, "--base-model", model, "--dataset", dataset,
        "--output-dir", cwd / "out", "--max-steps", 10, "--eval-steps", 10, "--logging-steps", 5,
        "--no-system-metrics", *flags, cwd=cwd,
    )  # fmt: skip


@pytest.mark.slow
def test_packing_keeps_the_dev_loss_and_removes_the_padding(tmp_path_factory, tiny_qwen2, tmp_path):
    # Lengths that vary 1 to 16-fold, so padded batches really pad and short sequences fit beside long ones.
    records = [{**r, "output": r["output"] * (1 + i % 4) ** 2} for i, r in enumerate(spelled_digits(160))]
    dataset = tmp_path / "varied.json"
    dataset.write_text(json.dumps(records))
    runs = {}
    for name, flags in (("one row", ["--one-row"]), ("bounded", []), ("padded", ["--no-packing"])):
        cwd = tmp_path_factory.mktemp(name.replace(" ", "_"))
        result = train(cwd, tiny_qwen2, dataset, *flags)
        assert result.returncode == 0, result.stderr[-3000:]
        runs[name] = only_run(cwd)
    one_row, bounded, padded = (run for _, run in runs.values())
    assert one_row.data.params["packing"] == "True" and padded.data.params["packing"] == "False"
    assert bounded.data.params["bounded_rows"] == "True" and one_row.data.params["bounded_rows"] == "False"
    step0 = [c.get_metric_history(r.info.run_id, "eval_loss")[0] for c, r in runs.values()]
    assert {m.step for m in step0} == {0}
    assert max(m.value for m in step0) - min(m.value for m in step0) <= 1e-4, "the untouched model scores alike"
    assert one_row.data.metrics["padding_fraction"] == 0 and one_row.data.metrics["padding_tokens_per_step"] == 0
    assert 0 < bounded.data.metrics["padding_fraction"] < padded.data.metrics["padding_fraction"]
    assert padded.data.metrics["padding_fraction"] > 0.05
    real = [c.get_metric_history(r.info.run_id, "real_tokens_per_step") for c, r in runs.values()]
    assert [m.step for m in real[0]] == [5, 10]
    assert [m.value for m in real[0]] == [m.value for m in real[1]] == [m.value for m in real[2]], "same batches"
