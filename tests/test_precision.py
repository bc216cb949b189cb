"""--bf16 auto: bfloat16 mixed precision where the hardware computes in it, float32 elsewhere; the run says which."""

import re
from pathlib import Path

import pytest
import torch

from conftest import FAST, only_run, run_in_process
from shared.precision import bf16_enabled, cpu_computes_bf16, mixed_precision


def this_cpu_has_bf16_instructions() -> bool:
    """Independently of shared.precision: a flags line of /proc/cpuinfo naming AVX512-BF16 or AMX-BF16."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return re.search(r"^flags\s*:.*\b(avx512_bf16|amx_bf16)\b", text, re.MULTILINE) is not None


def test_the_cpus_bf16_instructions_are_read_from_its_flags(tmp_path):
    cpus = {
        "avx512": "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw\n",
        "avx512_bf16": "processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16 avx512_vnni\n",
        "amx": "processor\t: 0\nflags\t\t: fpu avx512f amx_bf16 amx_tile amx_int8\n",
    }
    for name, text in cpus.items():
        (tmp_path / name).write_text(text)
    assert not cpu_computes_bf16(tmp_path / "avx512"), "AVX512 alone emulates bfloat16: no faster than float32"
    assert cpu_computes_bf16(tmp_path / "avx512_bf16") and cpu_computes_bf16(tmp_path / "amx")
    assert not cpu_computes_bf16(tmp_path / "absent")


@pytest.mark.skipif(torch.cuda.is_available(), reason="auto asks the GPU on a CUDA host; this checks a CPU host")
def test_auto_follows_this_cpu_and_an_explicit_switch_wins():
    expected = this_cpu_has_bf16_instructions()
    assert bf16_enabled({"bf16": "auto", "fp16": False}) is expected
    assert mixed_precision({"bf16": "auto", "fp16": False}) == ("bf16" if expected else "no")
    assert mixed_precision({"bf16": "auto", "fp16": True}) == "fp16", "an explicit --fp16 wins over auto"
    assert mixed_precision({"bf16": True, "fp16": False}) == "bf16"
    assert mixed_precision({"bf16": False, "fp16": False}) == "no"


@pytest.mark.skipif(torch.cuda.is_available(), reason="auto asks the GPU on a CUDA host; this checks a CPU host")
def test_a_training_with_bf16_auto_records_what_it_trained_in(tmp_path, tiny_qwen2, synthetic_dataset):
    result = run_in_process(
        "methods/lora/train.py", "--experiment-name", "tests", *FAST, "--base-model", tiny_qwen2,
        "--dataset", synthetic_dataset, "--output-dir", tmp_path / "out", "--max-steps", 2, "--bf16", "auto",
        "--no-system-metrics", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    expected = "bf16" if this_cpu_has_bf16_instructions() else "no"
    _, run = only_run(tmp_path)
    assert (run.data.params["bf16"], run.data.params["mixed_precision"]) == ("auto", expected)
    assert f"mixed precision {expected}" in result.stderr
