"""A GGUF file as a base model: checked before any run, converted once into a model folder that computes what the
file holds, trained, merged and scored like any other base."""

import hashlib
import time
from pathlib import Path

import gguf
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import FAST, only_run, run_in_process
from gguf_files import dequantized_reference, write_gguf
from shared.model.gguf import model_folder
from shared.model_source import SOURCE_FILE, ModelSourceError, check_model_source


@pytest.fixture(scope="module")
def tiny_gguf(tiny_llama, tmp_path_factory):
    return write_gguf(tiny_llama, tmp_path_factory.mktemp("gguf") / "tiny-llama.Q8_0.gguf")


@pytest.fixture(scope="module")
def converted(tiny_gguf, tmp_path_factory):
    return model_folder(str(tiny_gguf), tmp_path_factory.mktemp("cache"))


def test_the_source_is_recorded_with_the_files_digest(tiny_gguf):
    params = check_model_source(str(tiny_gguf))
    assert params == {
        "base_model_format": "gguf",
        "gguf_file": "tiny-llama.Q8_0.gguf",
        "gguf_architecture": "llama",
        "gguf_quant_type": "MOSTLY_Q8_0",
        "gguf_tensor_types": "F32,Q8_0",
        "gguf_sha256": hashlib.sha256(tiny_gguf.read_bytes()).hexdigest(),
    }


def test_the_converted_model_computes_what_the_file_holds(converted, tiny_llama):
    """Logits equal the original model's with each weight replaced by the gguf package's own unpacking of its Q8_0
    blocks; and they differ from the unquantized original (the comparison could fail)."""
    ids = torch.tensor([[5, 17, 300, 42, 7, 99, 250, 3]])
    with torch.no_grad():
        loaded = AutoModelForCausalLM.from_pretrained(converted, dtype=torch.float32)(ids).logits
        expected = dequantized_reference(tiny_llama)(ids).logits
        original = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)(ids).logits
    assert torch.allclose(loaded, expected, atol=1e-5), (loaded - expected).abs().max()
    assert (loaded - original).abs().max() > 1e-4


def test_the_converted_folder_keeps_the_tokenizer_and_its_source(converted, tiny_llama, tiny_gguf):
    text = "def add(a, b):\n    return a + b"
    ours, theirs = AutoTokenizer.from_pretrained(converted), AutoTokenizer.from_pretrained(tiny_llama)
    assert ours(text, add_special_tokens=False).input_ids == theirs(text, add_special_tokens=False).input_ids
    assert ours.chat_template == theirs.chat_template
    assert (Path(converted) / SOURCE_FILE).is_file()
    assert check_model_source(converted)["gguf_sha256"] == hashlib.sha256(tiny_gguf.read_bytes()).hexdigest()


def test_a_second_use_reuses_the_conversion(tiny_gguf, converted):
    started = time.perf_counter()
    again = model_folder(str(tiny_gguf), Path(converted).parent.parent)
    assert again == converted
    assert time.perf_counter() - started < 5


def test_an_architecture_transformers_cannot_read_is_refused_naming_it(tiny_llama, tmp_path):
    path = write_gguf(tiny_llama, tmp_path / "odd.gguf", architecture="oddformer")
    with pytest.raises(ModelSourceError) as refused:
        check_model_source(str(path))
    message = refused.value.format_message()
    assert "architecture oddformer" in message and "quantization MOSTLY_Q8_0" in message


def test_a_quant_type_with_no_dequantization_is_refused_naming_it(tiny_llama, tmp_path):
    path = write_gguf(tiny_llama, tmp_path / "ints.gguf", raw_type=gguf.GGMLQuantizationType.I8)
    with pytest.raises(ModelSourceError) as refused:
        check_model_source(str(path), "base_model")
    message = refused.value.format_message()
    assert message.startswith(f"base_model {path}: transformers cannot read this GGUF file")
    assert "no dequantization for I8" in message and "architecture llama" in message


def test_lora_trains_merges_and_scores_on_a_gguf_file(tiny_gguf, tmp_path, synthetic_dataset):
    """The method script, merge.py and evaluate.py take the .gguf path itself; the run's params name the file's
    format, quantization and digest; the merged model computes what the adapter on the converted base does."""
    from peft import PeftModel

    common = ["--base-model", tiny_gguf, "--cache-dir", tmp_path / "cache"]
    result = run_in_process(
        "methods/lora/train.py", "--experiment-name", "tests", *FAST, *common, "--dataset", synthetic_dataset,
        "--output-dir", tmp_path / "out", "--max-steps", 10, "--eval-steps", 10, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    _, run = only_run(tmp_path)
    assert run.data.params["gguf_sha256"] == hashlib.sha256(tiny_gguf.read_bytes()).hexdigest()
    assert run.data.params["gguf_quant_type"] == "MOSTLY_Q8_0"
    assert run.data.params["base_model_format"] == "gguf" and run.data.params["base_model"] == str(tiny_gguf)

    merged = run_in_process(
        "methods/lora/merge.py", *common, "--lora-ckpt", tmp_path / "out", "--output-dir", tmp_path / "merged"
    )
    assert merged.returncode == 0, merged.stderr[-3000:]
    base = model_folder(str(tiny_gguf), tmp_path / "cache")
    ids = torch.tensor([[5, 17, 300, 42, 7, 99]])
    with torch.no_grad():
        adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), tmp_path / "out")(ids).logits
        folded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")(ids).logits
    assert (folded - adapted).abs().max() < 1e-4

    scored = run_in_process(
        "scripts/evaluate.py", "--model", tiny_gguf, "--benchmark", "exact-match", "--data", synthetic_dataset,
        "--limit", 4, "--max-new-tokens", 4, "--output-dir", tmp_path / "base-eval", "--experiment-name", "tests",
        cwd=tmp_path,
    )  # fmt: skip
    assert scored.returncode == 0, scored.stderr[-3000:]
    assert (tmp_path / "base-eval" / "results.json").is_file()
