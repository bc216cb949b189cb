"""Prefix tuning end to end: trains, writes its metadata, and generates from the trained prefix."""

import json

import pytest
import torch
from peft import AutoPeftModelForCausalLM
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import FAST, only_run, run_in_process, spelled_digits


def train_prefix(cwd, base, dataset, *args):
    return run_in_process(
        "methods/prefix/train.py", "--experiment-name", "tests", *FAST, "--base-model", base,
        "--dataset", dataset, "--output-dir", cwd / "out", *args, cwd=cwd,
    )  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_qwen2, synthetic_dataset):
    cwd = tmp_path_factory.mktemp("prefix")
    result = train_prefix(
        cwd, tiny_qwen2, synthetic_dataset, "--max-steps", 40, "--eval-steps", 20, "--num-virtual-tokens", 8
    )
    assert result.returncode == 0, result.stderr[-3000:]
    client, run = only_run(cwd)
    return {"out": cwd / "out", "client": client, "run": run}


def test_prefix_trains_and_records_its_metadata(trained, tiny_qwen2):
    run = trained["run"]
    assert run.info.status == "FINISHED" and run.data.tags["method"] == "prefix"
    assert run.data.params["packing"] == "False", "the prefix cache would mix packed sequences"
    assert run.data.metrics["padding_tokens_per_step"] > 0
    losses = [m.value for m in trained["client"].get_metric_history(run.info.run_id, "eval_loss")]
    assert losses[-1] < 0.95 * losses[0]
    metadata = json.loads((trained["out"] / "prefix_metadata.json").read_text())
    assert metadata["base_model"] == str(tiny_qwen2)
    assert (metadata["num_virtual_tokens"], metadata["prefix_projection"]) == (8, False)
    artifacts = {a.path for a in trained["client"].list_artifacts(run.info.run_id, "model")}
    assert {"model/prefix_metadata.json", "model/adapter_config.json"} <= artifacts


def test_generation_from_the_trained_prefix(trained, tiny_qwen2):
    tokenizer = AutoTokenizer.from_pretrained(trained["out"])
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Spell in words: 4 0 7"}], add_generation_prompt=True, tokenize=False
    )
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    model = AutoPeftModelForCausalLM.from_pretrained(trained["out"]).eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_qwen2).eval()
    with torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=6, do_sample=False)
        prefix_logits = model(**inputs).logits[0, -1]
        base_logits = base(**inputs).logits[0, -1]
    prompt_length = inputs["input_ids"].shape[1]
    assert generated.shape[1] > prompt_length
    assert torch.equal(generated[0, :prompt_length], inputs["input_ids"][0])
    assert (prefix_logits - base_logits).abs().max() > 1e-3, "the prefix must change the prediction"


def test_gradient_checkpointing_is_refused_clearly(tmp_path, tiny_qwen2, synthetic_dataset):
    result = train_prefix(tmp_path, tiny_qwen2, synthetic_dataset, "--gradient-checkpointing")
    assert result.returncode == 2
    assert "prefix tuning cannot use --gradient-checkpointing" in result.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "mlflow.db").exists()


@pytest.mark.slow
def test_evaluation_generates_from_the_trained_prefix_in_batches_and_one_by_one(trained, tiny_qwen2, tmp_path):
    """From the user's side: scripts/evaluate.py on a trained prefix must not answer what the base model answers,
    and the batch size must not change a greedy answer."""
    dev = tmp_path / "dev.json"
    dev.write_text(json.dumps(spelled_digits(8, seed=3)))
    completions = {}
    runs = (("base", tiny_qwen2, 8), ("prefix", trained["out"], 1), ("batched", trained["out"], 8))
    for name, model, batch_size in runs:
        result = run_in_process(
            "scripts/evaluate.py", "--model", model, "--benchmark", "exact-match", "--data", dev,
            "--max-new-tokens", 8, "--batch-size", batch_size, "--new-run", "--experiment-name", "evals",
            "--output-dir", tmp_path / name, cwd=trained["out"].parent,  # the training run's store
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        samples = (tmp_path / name / "samples.jsonl").read_text().splitlines()
        completions[name] = [json.loads(line)["completion"] for line in samples]
    assert completions["batched"] == completions["prefix"]
    same_as_base = sum(a == b for a, b in zip(completions["prefix"], completions["base"], strict=True))
    assert same_as_base == 0, (completions["prefix"], completions["base"])
