"""Full fine-tuning end to end: one process, then two CPU processes under torchrun (DeepSpeed ZeRO-3 and plain DDP).

The DeepSpeed runs compile its `deepspeed_shm_comm` op on first use (45-90 s on 2 cores) into TORCH_EXTENSIONS_DIR,
by default ~/.cache/torch_extensions. That folder outlives the test session, so only the first run on a machine pays;
CI keeps it warm by caching that folder (or pointing TORCH_EXTENSIONS_DIR at a cached one).
"""

import json
import re
import subprocess
import sys
from collections import Counter

import click
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from conftest import FAST, REPO, load_command, only_run, run_in_process, script_env

SCRIPT = "methods/fft/train.py"
# Few steps: the 2 cores are shared by both processes. One process with batch 16 sees what two processes with
# batch 8 see together, so all three runs below should train the same model.
SCHEDULE = [*FAST, "--logging-steps", 3, "--max-steps", 6, "--eval-steps", 3]
STEP_METRICS = ("train_loss", "learning_rate", "grad_norm", "tokens_per_second", "peak_memory_mb")


def data_args(cwd, base, dataset) -> list:
    return ["--experiment-name", "tests", "--base-model", base, "--dataset", dataset, "--output-dir", cwd / "out"]


def torchrun(cwd, *args) -> subprocess.CompletedProcess:
    """The script under `torchrun --nproc_per_node 2`, as hermetic as conftest's run_script."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", REPO / SCRIPT]
    return subprocess.run(
        [*map(str, command), *map(str, args)],
        cwd=cwd,
        env=script_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )


def finished(cwd, result) -> dict:
    assert result.returncode == 0, result.stderr[-3000:]
    client, run = only_run(cwd)
    every_run = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(every_run) == 1, "rank 1 must not create a run of its own (nor log into an implicit one)"
    return {"cwd": cwd, "out": cwd / "out", "client": client, "run": run, "result": result}


@pytest.fixture(scope="module")
def single(tmp_path_factory, tiny_qwen2, synthetic_dataset):
    cwd = tmp_path_factory.mktemp("fft-single")
    result = run_in_process(
        SCRIPT, *data_args(cwd, tiny_qwen2, synthetic_dataset), *SCHEDULE, "--batch-size", 16, cwd=cwd
    )
    return finished(cwd, result)


@pytest.fixture(scope="module")
def zero3(tmp_path_factory, tiny_qwen2, synthetic_dataset):
    cwd = tmp_path_factory.mktemp("fft-zero3")
    args = [*data_args(cwd, tiny_qwen2, synthetic_dataset), *SCHEDULE, "--deepspeed", "zero3"]
    return finished(cwd, torchrun(cwd, *args))


@pytest.fixture(scope="module")
def ddp(tmp_path_factory, tiny_qwen2, synthetic_dataset):
    cwd = tmp_path_factory.mktemp("fft-ddp")
    return finished(cwd, torchrun(cwd, *data_args(cwd, tiny_qwen2, synthetic_dataset), *SCHEDULE))


def history(trained, key) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in trained["client"].get_metric_history(trained["run"].info.run_id, key)]


def base_size(base) -> int:
    return sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(base).parameters())


def logits(model_dir) -> torch.Tensor:
    with torch.no_grad():
        return AutoModelForCausalLM.from_pretrained(model_dir).eval()(torch.arange(48).reshape(2, 24)).logits


def test_one_process_trains_every_weight(single, tiny_qwen2):
    run, out = single["run"], single["out"]
    assert run.info.status == "FINISHED" and run.data.tags["method"] == "fft"
    params = run.data.params
    assert float(params["trainable_percent"]) == 100
    assert int(params["trainable_params"]) == int(params["total_params"]) == base_size(tiny_qwen2)
    losses = history(single, "eval_loss")
    assert [step for step, _ in losses] == [0, 3, 6]
    assert losses[-1][1] < 0.8 * losses[0][1]
    assert run.data.metrics["best_eval_loss"] == min(value for step, value in losses if step > 0)
    base, trained = load_file(tiny_qwen2 / "model.safetensors"), load_file(out / "model.safetensors")
    assert base.keys() == trained.keys() and all(not base[k].equal(trained[k]) for k in base), "every tensor trains"
    best = json.loads((out / "trainer_state.json").read_text())["best_model_checkpoint"]
    assert all(trained[k].equal(v) for k, v in load_file(f"{best}/model.safetensors").items()), "the best is kept"
    assert (logits(out) - logits(tiny_qwen2)).abs().max() > 1e-2
    assert run.data.tags["model_weights_path"] == str(out.resolve())


@pytest.mark.slow
def test_zero3_on_two_processes_is_one_run_logged_once(zero3, tiny_qwen2):
    run, out = zero3["run"], zero3["out"]
    assert run.info.status == "FINISHED" and run.data.tags["method"] == "fft"
    assert run.data.params["deepspeed"] == "zero3"
    # ZeRO-3 loads each rank's shard only: the count must still be the whole model's.
    assert int(run.data.params["trainable_params"]) == int(run.data.params["total_params"]) == base_size(tiny_qwen2)
    for key in STEP_METRICS:
        assert [step for step, _ in history(zero3, key)] == [3, 6], key
    losses = history(zero3, "eval_loss")
    assert [step for step, _ in losses] == [0, 3, 6] and losses[-1][1] < 0.8 * losses[0][1]
    assert list((out / "checkpoint-6").glob("global_step6/*optim_states.pt")), "DeepSpeed really sharded the run"
    assert {"config.json", "model.safetensors", "energy.json", "mlflow_run.json"} <= {p.name for p in out.iterdir()}
    energy = json.loads((out / "energy.json").read_text())
    assert energy["joules"] is None and energy["seconds"] > 0
    uploaded = [a.path for a in zero3["client"].list_artifacts(run.info.run_id)]
    assert uploaded.count("energy.json") == 1


@pytest.mark.slow
def test_two_processes_log_each_message_once(zero3):
    """Rank 0 logs at INFO, rank 1 at WARNING and above: one line per message for the job, and no DeepSpeed notice
    about the accelerator it detected."""
    result = zero3["result"]
    messages = re.findall(r"^\S+ \S+ INFO (\S+: .*)$", result.stderr, re.MULTILINE)
    assert "shared.train.checks: Held out 24 of 240 training records as the dev set" in messages
    assert [m for m, count in Counter(messages).items() if count > 1] == []
    assert result.stdout.count("Trainable parameters:") == 1
    assert "accelerator to" not in result.stdout + result.stderr, "DeepSpeed's 'Setting (ds_)accelerator to' line"


@pytest.mark.slow
@pytest.mark.parametrize("launched", ["zero3", "ddp"])
def test_two_processes_train_the_same_model_as_one(launched, single, request, tiny_qwen2):
    """Two processes with batch 8 and one with batch 16 take the same steps: the data-parallel run is one job."""
    distributed = request.getfixturevalue(launched)
    assert (logits(distributed["out"]) - logits(single["out"])).abs().max() < 1e-4
    assert (logits(distributed["out"]) - logits(tiny_qwen2)).abs().max() > 1e-2


@pytest.mark.slow
def test_resume_and_early_stopping_agree_across_ranks(tmp_path, tiny_qwen2, synthetic_dataset):
    # No evaluation improves by 99%, so each one counts towards stopping; the rule travels in the checkpoint.
    stopping = ["--patience", 1, "--min-improvement", 0.99]
    args = [*data_args(tmp_path, tiny_qwen2, synthetic_dataset), *SCHEDULE, *stopping, "--deepspeed", "zero2"]
    first = finished(tmp_path, torchrun(tmp_path, *args, "--max-steps", 3))
    # Both ranks must stop at step 6 of 30, at the first evaluation after resuming; one alone would hang the other.
    resumed = finished(tmp_path, torchrun(tmp_path, *args, "--max-steps", 30, "--resume"))
    assert resumed["run"].info.run_id == first["run"].info.run_id and resumed["run"].info.status == "FINISHED"
    assert [step for step, _ in history(resumed, "eval_loss")] == [0, 3, 6]
    assert json.loads((tmp_path / "out" / "trainer_state.json").read_text())["global_step"] == 6


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--offload-optimizer"], "need --deepspeed"),
        (["--deepspeed", "zero3"], "--deepspeed needs a launcher"),
        (["--deepspeed", "missing.json"], "neither zero2, zero3 nor a DeepSpeed config file"),
    ],
)
def test_bad_flags_are_refused(tmp_path, tiny_qwen2, synthetic_dataset, flags, message):
    result = run_in_process(SCRIPT, *data_args(tmp_path, tiny_qwen2, synthetic_dataset), *flags, cwd=tmp_path)
    assert result.returncode == 2 and message in result.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "mlflow.db").exists()


def test_mixed_precision_keeps_float32_weights_unless_deepspeed_does(tiny_qwen2):
    full_model = load_command(SCRIPT).callback.__globals__["full_model"]
    flags = {"base_model": str(tiny_qwen2), "cache_dir": None, "bf16": True, "fp16": False}
    flags.update(trust_remote_code=False, allow_pickle_weights=False, attention="sdpa")
    plain, zero = full_model({**flags, "deepspeed": None}), full_model({**flags, "deepspeed": "zero2"})
    assert {p.dtype for p in plain.parameters()} == {torch.float32}
    assert {p.dtype for p in zero.parameters()} == {torch.bfloat16}, "DeepSpeed keeps its own float32 copy"
    assert all(p.requires_grad for p in [*plain.parameters(), *zero.parameters()])


def test_offload_flags_apply_on_top_of_the_config(tmp_path):
    zero_config = load_command(SCRIPT).callback.__globals__["zero_config"]

    def config(name, **offload):
        return zero_config({"deepspeed": name, "offload_optimizer": None, "offload_params": None, **offload})

    zero2 = config("zero2")
    assert zero2["zero_optimization"]["stage"] == 2 and "offload" not in str(zero2) and "optimizer" not in zero2
    assert zero2["train_micro_batch_size_per_gpu"] == "auto"
    offloaded = config("zero3", offload_optimizer=True, offload_params=True)["zero_optimization"]
    assert offloaded["offload_optimizer"]["device"] == offloaded["offload_param"]["device"] == "cpu"
    assert config("zero2", offload_optimizer=True)["optimizer"]["type"] == "AdamW", "DeepSpeed's CPU AdamW"
    with pytest.raises(click.UsageError, match="needs ZeRO-3"):
        config("zero2", offload_params=True)
    own = tmp_path / "own.json"
    own.write_text(json.dumps({"zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu"}}}))
    resolved = config(str(own), offload_optimizer=False)
    assert resolved["zero_optimization"]["offload_optimizer"]["device"] == "none" and "optimizer" not in resolved
    assert resolved["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"], "one loadable model at the end"
