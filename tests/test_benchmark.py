"""The benchmark beside its baseline, and the speed levers it measures: bounded packed rows keep the loss."""

import importlib.util
import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import REPO, run_script, spelled_digits
from shared.data.batching import IGNORE_INDEX, batch_collator, tokenize_records
from shared.train.speed_benchmark import flops_per_token

RECORDS = [
    {"input": "Spell in words, please, a longer question: 7 8 9 0", "output": "seven eight nine zero"},
    {"input": "Spell in words: 1 2", "output": "one two"},
    {"input": "Say: 5", "output": "five"},
    {"input": "Say: 6", "output": "six"},
]


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_bounded_rows_keep_the_padded_loss_and_no_row_outgrows_the_longest_sequence(tiny_qwen2, attention):
    tokenizer = AutoTokenizer.from_pretrained(tiny_qwen2)
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen2, attn_implementation=attention).eval()
    model.config.use_cache = False
    features = list(tokenize_records(RECORDS, tokenizer, 256, "t").dataset)
    lengths = sorted(len(f["input_ids"]) for f in features)
    collator = batch_collator(tokenizer, packing=True, bounded_rows=True)
    batch = collator(features)
    assert "attention_mask" not in batch
    assert 1 < batch["input_ids"].shape[0] < len(features), "short sequences share a row, the longest has its own"
    assert batch["input_ids"].shape[1] == lengths[-1]
    assert (collator.real_tokens, collator.padding_tokens) == (sum(lengths), batch["input_ids"].numel() - sum(lengths))
    with torch.no_grad():
        padded = model(**batch_collator(tokenizer, packing=False)(features)).loss.item()
        assert abs(model(**batch).loss.item() - padded) <= 1e-4
        # The check can fail: positions that do not restart let a row's sequences attend to one another.
        positions = torch.arange(batch["input_ids"].shape[1]).expand_as(batch["input_ids"])
        assert abs(model(**{**batch, "position_ids": positions}).loss.item() - padded) > 1e-2
    assert (batch["labels"][batch["input_ids"] == tokenizer.pad_token_id] == IGNORE_INDEX).all()


def test_flops_per_token_counts_weight_gradients_only_when_every_weight_trains():
    assert flops_per_token(1000, full=True) == 6000
    assert flops_per_token(1000, full=False) == 4000


def test_a_bf16_configurations_loss_is_set_beside_the_same_configuration_in_float32():
    spec = importlib.util.spec_from_file_location("benchmark", REPO / "scripts/benchmark.py")
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    rows = [
        {"name": "lora", "loss_curve": [[5, 2.0], [10, 1.0]]},
        {"name": "lora --bf16", "loss_curve": [[5, 2.02], [10, 1.05]]},
        {"name": "lora --one-row --bf16", "loss_curve": [[5, 1.0]]},  # no float32 twin: nothing to compare
    ]
    assert benchmark.precision_loss_differences(rows) == (
        "- lora --bf16 vs lora, training loss at step 5: 2.0200 vs 2.0000, 10: 1.0500 vs 1.0000; "
        "largest difference 5.00%"
    )


@pytest.mark.slow
def test_benchmark_reports_each_configuration_beside_the_baseline(tiny_qwen2, tmp_path):
    records = [{**r, "output": r["output"] * (1 + i % 4)} for i, r in enumerate(spelled_digits(80))]
    dataset = tmp_path / "varied.json"
    dataset.write_text(json.dumps(records))
    output, gpu = tmp_path / "bench.json", torch.cuda.is_available()
    result = run_script(
        "scripts/benchmark.py", "--methods", "lora", "--base-model", tiny_qwen2, "--dataset", dataset,
        "--steps", 3, "--warmup-steps", 1, "--batch-size", 4, "--output", output, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| baseline |" in result.stdout and "| lora |" in result.stdout
    report = json.loads(output.read_text())
    assert report["settings"]["steps"] == 3 and "6N" in report["flop_formula"]
    rows = {row["name"]: row for row in report["configurations"]}
    trl = importlib.util.find_spec("trl") is not None
    assert list(rows) == ["baseline", "flattening", *(["trl"] if trl else []), "lora"]
    assert report["skipped"] == ({} if trl else {"trl": "the trl package is not installed here"})
    assert ("Not measured: trl" in result.stdout) is not trl
    baseline, flattening, lora = rows["baseline"], rows["flattening"], rows["lora"]
    peak = report["peak_flops"]["float32"]
    assert peak["flops"] > 1e8 and peak["source"] == ("measured float32 matrix product" if not gpu else peak["source"])
    for row in rows.values():
        assert row["steps_measured"] == 3 and row["warmup_steps"] == 1
        assert row["real_tokens_per_second"] > 0 and row["median_step_seconds"] > 0 and row["peak_memory_mb"] > 0
        assert row["real_tokens_per_second_vs_baseline"] == pytest.approx(
            row["real_tokens_per_second"] / baseline["real_tokens_per_second"]
        )
        assert row["peak_memory_vs_baseline"] == pytest.approx(row["peak_memory_mb"] / baseline["peak_memory_mb"])
        assert 0 < row["training_memory_mb"] < row["peak_memory_mb"]
        assert row["compute_dtype"] == "float32"
        assert row["model_flops_per_token"] == flops_per_token(row["total_params"], full=False)
        assert row["model_flops_per_second"] == pytest.approx(row["real_tokens_per_second"] * 4 * row["total_params"])
        assert row["mfu"] == pytest.approx(row["model_flops_per_second"] / peak["flops"]) and 0 < row["mfu"] < 1
    assert baseline["real_tokens_per_second_vs_baseline"] == 1
    # The baseline pads each batch and puts a loss on every real token; LoRA packs and masks the prompt.
    assert baseline["padding_fraction"] > 0 and baseline["eval_pass_seconds"] is None
    assert baseline["trained_tokens_per_second"] == pytest.approx(baseline["real_tokens_per_second"])
    # transformers' flattening collator puts a batch in one row: no padding, the loss on the completion only.
    assert flattening["padding_fraction"] == 0
    assert flattening["trained_tokens_per_second"] < flattening["real_tokens_per_second"]
    # Rows bounded by the longest sequence never hold more padding than a padded batch.
    assert lora["padding_fraction"] <= baseline["padding_fraction"]
    assert lora["trained_tokens_per_second"] < lora["real_tokens_per_second"]
    assert lora["eval_pass_seconds"] > 0 and 0 < lora["eval_share_default_schedule"]
    assert lora["trainable_params"] < lora["total_params"]
    assert {"methods/lora/train.py", "scripts/benchmark.py"} <= set(report["help_seconds"])
    assert "- LoRA real tokens/s vs baseline: " in result.stdout and "- slowest --help: " in result.stdout
