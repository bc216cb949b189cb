"""BitFit end to end: only biases (and pattern-matched parameters) change; bias-free models are refused."""

import pytest
from safetensors.torch import load_file

from conftest import FAST, only_run, run_in_process


def train_bitfit(cwd, base, dataset, *args):
    return run_in_process(
        "methods/bitfit/train.py", "--experiment-name", "tests", *FAST, "--base-model", base,
        "--dataset", dataset, "--output-dir", cwd / "out", "--max-steps", 20, "--eval-steps", 10, *args, cwd=cwd,
    )  # fmt: skip


def changed_tensors(base_dir, out_dir) -> set[str]:
    base, trained = load_file(base_dir / "model.safetensors"), load_file(out_dir / "model.safetensors")
    assert base.keys() == trained.keys()
    return {name for name in base if not base[name].equal(trained[name])}


def test_only_biases_train(tmp_path, tiny_qwen2, synthetic_dataset):
    result = train_bitfit(tmp_path, tiny_qwen2, synthetic_dataset)
    assert result.returncode == 0, result.stderr[-3000:]
    client, run = only_run(tmp_path)
    assert run.info.status == "FINISHED" and run.data.tags["method"] == "bitfit"
    assert 0 < float(run.data.params["trainable_percent"]) < 1
    losses = [m.value for m in client.get_metric_history(run.info.run_id, "eval_loss")]
    assert losses[-1] < losses[0]
    changed = changed_tensors(tiny_qwen2, tmp_path / "out")
    assert changed and all(name.endswith(".bias") for name in changed)
    assert not (tmp_path / "out" / "adapter_config.json").exists(), "a plain model folder, no merge step"
    uploaded = {a.path for a in client.list_artifacts(run.info.run_id, "model")}
    assert "model/config.json" in uploaded and "model/model.safetensors" not in uploaded, "weights stay local"
    assert run.data.tags["model_weights_path"] == str((tmp_path / "out").resolve())


@pytest.mark.slow
def test_a_model_without_biases_is_refused_before_anything_starts(tmp_path, tiny_llama, synthetic_dataset):
    result = train_bitfit(tmp_path, tiny_llama, synthetic_dataset)
    assert result.returncode == 2
    assert "has no bias terms" in result.stderr and "--trainable-pattern" in result.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "mlflow.db").exists()


@pytest.mark.slow
def test_a_pattern_chooses_what_trains_without_biases(tmp_path, tiny_llama, synthetic_dataset):
    result = train_bitfit(tmp_path, tiny_llama, synthetic_dataset, "--trainable-pattern", r"norm\.weight$")
    assert result.returncode == 0, result.stderr[-3000:]
    changed = changed_tensors(tiny_llama, tmp_path / "out")
    assert changed and all(name.endswith("norm.weight") for name in changed)
