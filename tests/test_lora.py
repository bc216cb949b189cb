"""LoRA end to end: the real script trains a tiny model, logs to a real MLflow store, and merges."""

import hashlib
import json
import math
import platform
import shutil
import subprocess

import peft
import pytest
import torch
import transformers
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from conftest import FAST, REPO, only_run, run_in_process
from shared.data.records import file_sha256


def train(cwd, *args, env=None):
    return run_in_process("methods/lora/train.py", "--experiment-name", "tests", *FAST, *args, cwd=cwd, env=env)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_qwen2, synthetic_dataset):
    """One LoRA run on the learnable task, into MLflow's default store (no URI given: ./mlflow.db)."""
    cwd = tmp_path_factory.mktemp("lora")
    out = cwd / "out"
    result = train(
        cwd, "--base-model", tiny_qwen2, "--dataset", synthetic_dataset, "--output-dir", out,
        "--max-steps", 80, "--eval-steps", 20, env={"MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    client, run = only_run(cwd)
    return {"cwd": cwd, "out": out, "stdout": result.stdout, "client": client, "run": run}


def history(trained, key):
    return [(m.step, m.value) for m in trained["client"].get_metric_history(trained["run"].info.run_id, key)]


def test_lora_halves_the_dev_loss(trained):
    losses = history(trained, "eval_loss")
    assert losses[0][0] == 0, "the untouched model is evaluated at step 0"
    assert [step for step, _ in losses] == [0, 20, 40, 60, 80]
    assert min(v for _, v in losses) <= losses[0][1] / 2


def test_run_holds_params_tags_and_data_identity(trained, synthetic_dataset, tiny_qwen2):
    run = trained["run"]
    params = run.data.params
    assert run.info.status == "FINISHED"
    assert run.data.tags["method"] == "lora"
    assert params["learning_rate"] == "0.01" and params["lora_r"] == "8" and params["target_modules"] == "all-linear"
    assert params["base_model"] == str(tiny_qwen2) and params["dataset"] == str(synthetic_dataset)
    assert params["dataset_rows"] == "240" and params["train_rows"] == "216" and params["dev_rows"] == "24"
    assert params["dataset_sha256"] == file_sha256(synthetic_dataset)
    assert (params["train_kept"], params["train_truncated"], params["train_dropped"]) == ("216", "0", "0")
    assert (params["dev_kept"], params["dev_truncated"], params["dev_dropped"]) == ("24", "0", "0")
    trainable, total = int(params["trainable_params"]), int(params["total_params"])
    assert 0 < trainable < total
    assert float(params["trainable_percent"]) == pytest.approx(100 * trainable / total)
    assert f"Trainable parameters: {trainable:,} of {total:,}" in trained["stdout"]


def test_run_holds_what_reproduces_it(trained, synthetic_dataset, tiny_qwen2):
    """Versions, commit and dirty flag, the base model's content hash and the data as MLflow dataset inputs, each
    checked against its own independent reading."""
    params = trained["run"].data.params
    assert params["version.transformers"] == transformers.__version__ and params["version.torch"] == torch.__version__
    assert params["version.python"] == platform.python_version() and params["version.peft"] == peft.__version__
    assert params["git_commit"] == git("rev-parse", "HEAD").strip()
    assert params["git_dirty"] == str(bool(git("status", "--porcelain", "--untracked-files=no"))).lower()
    digest = hashlib.sha256()
    for path in sorted([tiny_qwen2 / "config.json", tiny_qwen2 / "model.safetensors"]):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    assert params["base_model_revision"] == f"sha256:{digest.hexdigest()}"
    inputs = {i.tags[0].value: i.dataset for i in trained["run"].inputs.dataset_inputs}
    assert set(inputs) == {"training", "dev"}
    assert inputs["training"].name == synthetic_dataset.name and str(synthetic_dataset) in inputs["training"].source
    assert json.loads(inputs["training"].profile)["num_rows"] == 216  # what trained: the file less the dev split
    assert json.loads(inputs["dev"].profile)["num_rows"] == 24 and inputs["training"].digest != inputs["dev"].digest


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True).stdout


def test_run_holds_step_metrics_once_each(trained):
    for key in ("train_loss", "learning_rate", "grad_norm", "tokens_per_second", "peak_memory_mb"):
        assert [step for step, _ in history(trained, key)] == [10, 20, 30, 40, 50, 60, 70, 80], key
    assert all(v > 0 for _, v in history(trained, "tokens_per_second"))
    metrics = trained["run"].data.metrics
    assert "loss" not in metrics, "transformers' own MLflow callback must stay off"
    assert metrics["best_eval_loss"] == min(v for _, v in history(trained, "eval_loss"))
    assert metrics["train_runtime"] > 0
    assert "energy_joules" not in metrics
    assert "NVML" in trained["run"].data.tags["energy_unavailable"]
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(metrics)


def test_output_dir_holds_the_best_adapter_and_reports(trained):
    out = trained["out"]
    for name in (
        "adapter_config.json",
        "adapter_model.safetensors",
        "tokenizer.json",
        "trainer_state.json",
        "energy.json",
    ):
        assert (out / name).is_file(), name
    state = json.loads((out / "trainer_state.json").read_text())
    best = load_file(f"{state['best_model_checkpoint']}/adapter_model.safetensors")
    saved = load_file(out / "adapter_model.safetensors")
    assert best.keys() == saved.keys() and all(torch.equal(best[k], saved[k]) for k in best)
    energy = json.loads((out / "energy.json").read_text())
    assert energy["available"] is False and energy["joules"] is None and energy["reason"]
    assert energy["seconds"] > 0


def test_artifacts_are_downloadable(trained, tmp_path):
    client, run_id = trained["client"], trained["run"].info.run_id
    listed = {a.path for a in client.list_artifacts(run_id)} | {a.path for a in client.list_artifacts(run_id, "model")}
    assert {
        "energy.json",
        "trainer_state.json",
        "model/adapter_config.json",
        "model/adapter_model.safetensors",
    } <= listed
    local = client.download_artifacts(run_id, "energy.json", str(tmp_path))
    assert json.loads(open(local).read()) == json.loads((trained["out"] / "energy.json").read_text())


def logits(model, tokens):
    with torch.no_grad():
        return model(tokens).logits


def test_merged_model_matches_the_adapter(trained, tiny_qwen2, tmp_path):
    merged_dir = tmp_path / "merged"
    result = run_in_process(
        "methods/lora/merge.py", "--base-model", tiny_qwen2, "--lora-ckpt", trained["out"], "--output-dir", merged_dir
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (tmp_path / "merged.partial").exists()
    tokens = torch.randint(0, 1000, (2, 24))
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_qwen2), trained["out"]).eval()
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_qwen2).eval()
    assert (logits(merged, tokens) - logits(adapted, tokens)).abs().max() < 1e-4
    assert (logits(merged, tokens) - logits(base, tokens)).abs().max() > 1e-2, "the adapter must change the model"


def test_the_attention_kernel_asked_for_is_the_one_loaded(tiny_qwen2):
    from shared.model.loading import load_base_model

    flags = {"base_model": str(tiny_qwen2), "cache_dir": None, "bf16": False, "fp16": False}
    flags.update(trust_remote_code=False, allow_pickle_weights=False)
    loaded = {kernel: load_base_model({**flags, "attention": kernel}) for kernel in ("sdpa", "eager")}
    assert {kernel: model.config._attn_implementation for kernel, model in loaded.items()} == {
        "sdpa": "sdpa",
        "eager": "eager",
    }


@pytest.mark.slow
def test_llama_architecture_trains_in_bf16_on_cpu(tmp_path, tiny_llama, synthetic_dataset):
    args = ["--base-model", tiny_llama, "--dataset", synthetic_dataset, "--output-dir", tmp_path / "out", "--bf16"]
    args += ["--attention", "eager"]
    result = train(
        tmp_path, *args, "--max-steps", 20, "--eval-steps", 10, "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db",
        "--no-system-metrics", env={"MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    client, run = only_run(tmp_path)
    losses = [m.value for m in client.get_metric_history(run.info.run_id, "eval_loss")]
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert run.data.params["bf16"] == "True" and run.data.params["attention"] == "eager"
    assert not any(key.startswith("system/") for key in run.data.metrics), "--no-system-metrics"


def test_non_empty_output_dir_is_refused(tmp_path, tiny_qwen2, synthetic_dataset):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("a previous result")
    result = train(
        tmp_path, "--base-model", tiny_qwen2, "--dataset", synthetic_dataset, "--output-dir", tmp_path / "out"
    )
    assert result.returncode == 2
    assert "is not empty: pass --resume" in result.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["keep.txt"]
    assert not (tmp_path / "mlflow.db").exists()


def test_bad_data_is_refused_before_anything_starts(tmp_path, tiny_qwen2):
    data = tmp_path / "train.json"
    data.write_text(json.dumps([{"input": "a", "output": "b"}, {"input": "c"}]))
    result = train(tmp_path, "--base-model", tiny_qwen2, "--dataset", data, "--output-dir", tmp_path / "out")
    assert result.returncode == 1
    assert f"{data}: record 1: field 'output' is missing" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--batch-size", 0], "--batch-size"),
        (["--learning-rate", -1], "--learning-rate"),
        (["--bf16", "--fp16"], "--bf16 and --fp16 exclude each other"),
        (["--resume"], "holds no checkpoint"),
        # Without a GPU the first check speaks; on a GPU without flash-attn, the second.
        (["--attention", "flash_attention_2"], "--attention flash_attention_2 needs"),
    ],
)
def test_bad_flags_are_refused(tmp_path, tiny_qwen2, synthetic_dataset, flags, message):
    args = ["--base-model", tiny_qwen2, "--dataset", synthetic_dataset, "--output-dir", tmp_path / "out", *flags]
    result = train(tmp_path, *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.slow
def test_a_run_that_dies_after_starting_is_failed(tmp_path, tiny_qwen2, synthetic_dataset):
    broken = shutil.copytree(tiny_qwen2, tmp_path / "broken")
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    args = ["--base-model", broken, "--dataset", synthetic_dataset, "--output-dir", tmp_path / "out"]
    result = train(tmp_path, *args, "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db")
    assert result.returncode != 0
    _, run = only_run(tmp_path)
    assert run.info.status == "FAILED"


def test_optimizer_schedule_and_dev_metrics_are_the_ones_asked_for(tmp_path, tiny_qwen2, synthetic_dataset):
    """The paraphrase source's settings (AdamW beta2 0.95, eps 1e-6, cosine, warm-up) with bitsandbytes' 8-bit
    AdamW: each reaches the optimizer and the schedule, and the dev set gets token accuracy and perplexity."""
    result = run_in_process(
        "methods/lora/train.py", "--experiment-name", "tests", "--base-model", tiny_qwen2,
        "--dataset", synthetic_dataset, "--output-dir", tmp_path / "out", "--batch-size", 32,
        "--gradient-accumulation", 1, "--learning-rate", 1e-2, "--max-steps", 20, "--eval-steps", 10,
        "--logging-steps", 2, "--optim", "adamw_8bit", "--lr-scheduler", "cosine", "--warmup-ratio", 0.2,
        "--weight-decay", 0.01, "--adam-beta2", 0.95, "--adam-epsilon", 1e-6, "--max-grad-norm", 0.5,
        "--patience", 100, "--no-system-metrics", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    client, run = only_run(tmp_path)
    params = run.data.params
    assert (params["optim"], params["lr_scheduler"], params["warmup_ratio"]) == ("adamw_8bit", "cosine", "0.2")
    assert (params["adam_beta2"], params["adam_epsilon"], params["max_grad_norm"]) == ("0.95", "1e-06", "0.5")
    rates = [m.value for m in client.get_metric_history(run.info.run_id, "learning_rate")]
    peak = rates.index(max(rates))
    assert rates[0] < max(rates) and 0 < peak < len(rates) - 1, f"warm-up, then decay: {rates}"
    assert max(rates) <= 1e-2 and rates[-1] < 0.2 * max(rates), "cosine decays towards 0"
    [checkpoint] = (tmp_path / "out").glob("checkpoint-*")
    state = torch.load(checkpoint / "optimizer.pt", weights_only=False)
    group = state["param_groups"][0]
    assert (group["betas"], group["eps"], group["weight_decay"]) == ((0.9, 0.95), 1e-6, 0.01)
    # bitsandbytes' optimizer (its 8-bit states start at 4096 elements: the tiny adapters keep 32-bit ones)
    assert all("__bnb_optimizer_quant_state__" in s for s in state["state"].values())
    accuracy = [m.value for m in client.get_metric_history(run.info.run_id, "eval_token_accuracy")]
    perplexity = client.get_metric_history(run.info.run_id, "eval_perplexity")
    losses = client.get_metric_history(run.info.run_id, "eval_loss")
    assert len(accuracy) == 3 and all(0 <= a <= 1 for a in accuracy) and accuracy[-1] > accuracy[0]
    # The 24 dev records fit one batch, where the Trainer's loss is the mean over tokens too.
    for p, loss in zip(perplexity, losses, strict=True):
        assert p.value == pytest.approx(math.exp(loss.value), rel=1e-4)


@pytest.mark.slow
def test_dev_records_that_are_training_records_are_flagged(tmp_path, tiny_qwen2):
    training = [{"input": f"Spell in words: {i}", "output": f"number {i}"} for i in range(40)]
    dev = training[:6] + [{"input": "Spell in words: 7", "output": "seven"}]  # 6 copies, and a shared prompt
    dev += [{"input": f"Spell in words: {i}", "output": f"number {i}"} for i in range(100, 103)]
    (tmp_path / "train.json").write_text(json.dumps(training))
    (tmp_path / "dev.json").write_text(json.dumps(dev))
    result = train(
        tmp_path, "--base-model", tiny_qwen2, "--dataset", tmp_path / "train.json", "--dev-dataset",
        tmp_path / "dev.json", "--output-dir", tmp_path / "out", "--max-steps", 2, "--no-system-metrics",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Leakage: 6 of the 10 dev records are training records too (7 share their prompt with one)" in result.stderr
    _, run = only_run(tmp_path)
    assert (run.data.params["dev_overlap_records"], run.data.params["dev_overlap_prompts"]) == ("6", "7")
