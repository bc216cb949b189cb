"""A non-finite loss stops the job with a message that names the step and the way out; the run ends FAILED."""

import math

import pytest
from transformers import TrainerControl, TrainerState

from conftest import FAST, only_run, run_in_process
from shared.train.stopping import Diverged, DivergenceGuard


@pytest.mark.slow
def test_a_diverging_job_stops_failed_before_checkpointing_the_damage(tmp_path, tiny_qwen2, synthetic_dataset):
    result = run_in_process(
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


def log_steps(guard: DivergenceGuard, state: TrainerState, entries: list[dict]) -> None:
    for step, logs in entries:
        state.global_step = step
        guard.on_log(None, state, TrainerControl(), logs={"learning_rate": 1e-3, **logs})


def test_a_dead_gradient_for_three_logging_steps_stops_the_run():
    state, guard = TrainerState(best_model_checkpoint="out/checkpoint-10"), DivergenceGuard(1e-3, vocab_size=100)
    log_steps(guard, state, [(10, {"loss": 2.0, "grad_norm": 0.0}), (20, {"loss": 2.0, "grad_norm": 0.3})])
    log_steps(guard, state, [(30, {"loss": 2.0, "grad_norm": 0.0}), (40, {"loss": 2.0, "grad_norm": 0.0})])
    with pytest.raises(Diverged, match=r"stopped learning at step 50: the gradient norm was 0 .* from 30 on"):
        log_steps(guard, state, [(50, {"loss": 2.0, "grad_norm": 0.0})])


def test_a_zero_gradient_with_a_zero_learning_rate_is_no_failure():
    state, guard = TrainerState(), DivergenceGuard(1e-3, vocab_size=100)
    for step in (10, 20, 30, 40):
        state.global_step = step
        guard.on_log(None, state, TrainerControl(), logs={"loss": 2.0, "grad_norm": 0.0, "learning_rate": 0.0})


def test_a_loss_stuck_at_the_uniform_prediction_after_learning_stops_the_run():
    uniform = math.log(100)
    state, guard = TrainerState(), DivergenceGuard(1e-3, vocab_size=100)
    # A randomly initialised model starts at the uniform loss: that alone is no failure.
    log_steps(guard, state, [(step, {"loss": uniform, "grad_norm": 1.0}) for step in (10, 20, 30, 40)])
    log_steps(guard, state, [(50, {"loss": 2.5, "grad_norm": 1.0}), (60, {"loss": uniform, "grad_norm": 1.0})])
    log_steps(guard, state, [(70, {"loss": uniform + 1e-3, "grad_norm": 1.0})])
    with pytest.raises(Diverged, match=r"step 80: the training loss has sat at 4.60.*since step 60.*been 2.5000"):
        log_steps(guard, state, [(80, {"loss": uniform, "grad_norm": 1.0})])


def test_a_dev_loss_far_above_the_step_0_one_twice_in_a_row_stops_the_run():
    state, guard = TrainerState(log_history=[{"eval_loss": 3.0, "step": 0}]), DivergenceGuard(1e-3)
    for step, loss in ((10, 2.5), (20, 6.5), (30, 2.9), (40, 6.1)):  # one explosion, a recovery, another
        state.global_step = step
        guard.on_evaluate(None, state, TrainerControl(), metrics={"eval_loss": loss})
    state.global_step = 50
    with pytest.raises(Diverged, match=r"diverged at step 50: the dev loss is 7.0000, more than 2 times .* \(3.0000\)"):
        guard.on_evaluate(None, state, TrainerControl(), metrics={"eval_loss": 7.0})


@pytest.mark.slow
def test_a_training_driven_to_a_constant_output_ends_failed(tmp_path, tiny_qwen2, synthetic_dataset):
    """A learning rate of 1e8 drives the tiny model to a constant output, with a zero gradient from then on: the
    run must end FAILED naming what was seen, not FINISHED with a dead adapter saved as its result."""
    result = run_in_process(
        "methods/lora/train.py", "--base-model", tiny_qwen2, "--dataset", synthetic_dataset,
        "--output-dir", tmp_path / "out", "--experiment-name", "tests", *FAST, "--learning-rate", 1e8,
        "--logging-steps", 2, "--eval-steps", 4, "--max-steps", 40, "--no-system-metrics", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr[-2000:]
    assert "training stopped learning at step" in result.stderr and "Traceback" not in result.stderr
    assert "Try a lower --learning-rate (this run: 1e+08)" in result.stderr
    _, run = only_run(tmp_path)
    assert run.info.status == "FAILED"
    assert not (tmp_path / "out" / "training_complete.json").exists()
