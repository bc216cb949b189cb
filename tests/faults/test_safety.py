"""Safe defaults and output safety: no code or pickles from a model unless asked; bad output locations refused."""

import json
import shutil

import pytest
from safetensors.torch import load_file

from conftest import FAST, run_script


def train(cwd, model, dataset, out, *flags, env=None):
    return run_script(
        "methods/lora/train.py", "--base-model", model, "--dataset", dataset, "--output-dir", out,
        "--experiment-name", "tests", *FAST, "--max-steps", 2, "--no-system-metrics", *flags, cwd=cwd, env=env,
    )  # fmt: skip


@pytest.mark.slow
def test_pickle_weights_are_refused_unless_allowed(tmp_path, tiny_qwen2, synthetic_dataset):
    import torch

    pickled = shutil.copytree(tiny_qwen2, tmp_path / "pickled")
    torch.save(load_file(pickled / "model.safetensors"), pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    refused = train(tmp_path, pickled, synthetic_dataset, tmp_path / "out")
    assert refused.returncode == 2
    assert (
        "holds pickle weights only (pytorch_model.bin)" in refused.stderr and "--allow-pickle-weights" in refused.stderr
    )
    assert not (tmp_path / "out").exists() and not (tmp_path / "mlflow.db").exists()
    allowed = train(tmp_path, pickled, synthetic_dataset, tmp_path / "out", "--allow-pickle-weights")
    assert allowed.returncode == 0, allowed.stderr[-3000:]


@pytest.mark.slow
def test_code_shipped_with_a_model_never_runs_by_default(tmp_path, tiny_qwen2, synthetic_dataset):
    custom = shutil.copytree(tiny_qwen2, tmp_path / "custom")
    marker = tmp_path / "code-ran"
    (custom / "modeling_custom.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    config = json.loads((custom / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_custom.CustomForCausalLM"}
    (custom / "config.json").write_text(json.dumps(config))
    train(tmp_path, custom, synthetic_dataset, tmp_path / "out")
    assert not marker.exists(), "the known architecture is used; the shipped file is never imported"
    train(tmp_path, custom, synthetic_dataset, tmp_path / "out2", "--trust-remote-code")
    assert marker.exists(), "asked for, the model's own code runs"


@pytest.mark.parametrize(
    ("output_dir", "env", "message"),
    [
        ("/proc/peft-workbench-out", {}, "cannot write in /proc"),
        ("{tmp}/out", {"PEFT_WORKBENCH_MIN_FREE_GB": "1e9"}, "GiB needed for checkpoints"),
        ("{tmp}/a-file/out", {}, "is a file, not a folder"),
    ],
)
def test_an_unusable_output_location_is_refused_up_front(
    tmp_path, tiny_qwen2, synthetic_dataset, output_dir, env, message
):
    (tmp_path / "a-file").write_text("not a folder")
    result = train(tmp_path, tiny_qwen2, synthetic_dataset, output_dir.format(tmp=tmp_path), env=env)
    assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "out").exists()
