"""QLoRA end to end with real bitsandbytes quantization on CPU (NF4 4-bit and 8-bit), and its merge."""

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from conftest import FAST, load_command, only_run, run_in_process


def train_qlora(cwd, *args):
    return run_in_process("methods/qlora/train.py", "--experiment-name", "tests", *FAST, *args, cwd=cwd)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_qwen2, synthetic_dataset):
    cwd = tmp_path_factory.mktemp("qlora")
    args = ["--base-model", tiny_qwen2, "--dataset", synthetic_dataset, "--output-dir", cwd / "out"]
    result = train_qlora(cwd, *args, "--max-steps", 60, "--eval-steps", 20, "--compute-dtype", "float32")
    assert result.returncode == 0, result.stderr[-3000:]
    client, run = only_run(cwd)
    return {"cwd": cwd, "out": cwd / "out", "client": client, "run": run, "base": tiny_qwen2}


def test_qlora_learns_on_4bit_weights(trained):
    run = trained["run"]
    assert run.info.status == "FINISHED" and run.data.tags["method"] == "qlora"
    assert run.data.params["quant_bits"] == "4" and run.data.params["quant_type"] == "nf4"
    losses = [m.value for m in trained["client"].get_metric_history(run.info.run_id, "eval_loss")]
    assert len(losses) == 4 and losses[-1] <= 0.6 * losses[0]
    assert int(run.data.params["total_params"]) == sum(
        p.numel() for p in AutoModelForCausalLM.from_pretrained(trained["base"]).parameters()
    ) + int(run.data.params["trainable_params"]), "4-bit weights are counted unpacked, like the base model's"


def test_the_base_really_is_4bit(tiny_qwen2):
    from bitsandbytes.nn import Linear4bit

    flags = {
        "base_model": str(tiny_qwen2), "cache_dir": None, "bf16": False, "fp16": False, "gradient_checkpointing": False,
        "trust_remote_code": False, "allow_pickle_weights": False, "attention": "sdpa",
        "quant_bits": 4, "quant_type": "nf4", "compute_dtype": "float32", "double_quant": True,
        "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": "all-linear",
    }  # fmt: skip
    model = load_command("methods/qlora/train.py").callback.__globals__["quantized_lora"](flags)
    projections = [m for name, m in model.named_modules() if name.endswith("q_proj.base_layer")]
    assert projections and all(isinstance(m, Linear4bit) for m in projections)
    assert projections[0].weight.dtype == torch.uint8
    assert not isinstance(model.get_output_embeddings(), Linear4bit)
    assert all("lora_" in name for name, p in model.named_parameters() if p.requires_grad)


@pytest.mark.slow
def test_merge_equals_the_adapter_on_the_unquantized_base(trained, tiny_qwen2, tmp_path):
    result = run_in_process(
        "methods/qlora/merge.py",
        "--base-model",
        tiny_qwen2,
        "--lora-ckpt",
        trained["out"],
        "--output-dir",
        tmp_path / "m",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    tokens = torch.randint(0, 1000, (2, 24))
    with torch.no_grad():
        merged = AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()(tokens).logits
        base = AutoModelForCausalLM.from_pretrained(tiny_qwen2)
        adapted = PeftModel.from_pretrained(base, trained["out"]).eval()(tokens).logits
    assert merged.dtype == torch.float32
    assert (merged - adapted).abs().max() < 1e-4


@pytest.mark.slow
def test_8bit_base_trains(tmp_path, tiny_llama, synthetic_dataset):
    args = ["--base-model", tiny_llama, "--dataset", synthetic_dataset, "--output-dir", tmp_path / "out"]
    result = train_qlora(tmp_path, *args, "--quant-bits", 8, "--max-steps", 20, "--eval-steps", 10)
    assert result.returncode == 0, result.stderr[-3000:]
    client, run = only_run(tmp_path)
    losses = [m.value for m in client.get_metric_history(run.info.run_id, "eval_loss")]
    assert run.data.params["quant_bits"] == "8" and losses[-1] < losses[0]
