"""A non-finite loss stops the job with a message that names the step and the way out; the run ends FAILED."""

import math

import pytest
from transformers import TrainerControl, TrainerState

from conftest import FAST, only_run, run_script
from shared.stopping import Diverged, DivergenceGuard


@pytest.mark.slow
def test_a_diverging_job_stops_failed_before_checkpointing_the_damage(tmp_path, tiny_qwen2, synthetic_dataset):
    result = run_script(
        "methods/lora/train.py", "--base-model", tiny_qwen2, "--dataset", synthetic_dataset,
        "--output-dir", tmp_path / "out", "--experiment-name", "tests", *FAST, "--learning-rate", 1e30,
        "--logging-steps", 2, "--eval-steps", 2, "--max-steps", 10, "--no-system-metrics", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 1
    assert "training diverged: loss is nan in steps up to 2" in result.stderr
    assert "Try a lower --learning-rate (this run: 1e+30)" in result.stderr
    assert "Traceback" not in result.stderr
    _, run = only_run(tmp_path)
    assert run.info.status == "FAILED"
    assert not list((tmp_path / "out").glob("checkpoint-*")), "the step that diverged is not checkpointed"


@pytest.mark.parametrize(("logs", "evaluation"), [({"loss": math.inf}, None), (None, {"eval_loss": math.nan})])
def test_the_guard_names_the_last_good_checkpoint(logs, evaluation):
    state = TrainerState(global_step=12, best_model_checkpoint="out/checkpoint-8")
    guard = DivergenceGuard(learning_rate=3e-4)
    guard.on_log(None, state, TrainerControl(), logs={"loss": 1.2, "grad_norm": 0.5})  # finite: goes on
    with pytest.raises(Diverged, match="step.* 12.*last good checkpoint is out/checkpoint-8.*this run: 0.0003"):
        if logs:
            guard.on_log(None, state, TrainerControl(), logs=logs)
        else:
            guard.on_evaluate(None, state, TrainerControl(), metrics=evaluation)
