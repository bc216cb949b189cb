"""A training in segments: a resume trains no step past where the training ended, and the run's costs cover every
segment (shared.track.costs, shared.train.preemption.EndedTrainingGuard)."""

import json
import logging
import time
from pathlib import Path

import pytest
import transformers
from transformers import TrainerControl, TrainerState, TrainingArguments

from conftest import FAST, only_run, run_in_process
from shared.track.costs import COSTS_FILE, Costs, RunCosts, earlier_costs
from shared.track.energy import EnergyReport
from shared.train.preemption import EndedTrainingGuard, TrainingEnded

SCHEDULE = ["--eval-steps", 5, "--max-steps", 12, "--patience", 1000, "--no-system-metrics"]


def test_costs_add_over_segments_with_the_highest_peak_and_energy_unknown_once_a_segment_lacks_it():
    first = Costs(10.0, 8.0, 500.0, 40.0, 12.0, 900.0, 1)
    second = Costs(5.0, 2.0, 100.0, None, 8.0, 700.0, 1)
    total = first.plus(second)
    assert total == Costs(15.0, 10.0, 600.0, None, 20.0, 900.0, 2)
    assert total.metrics(tokens=3000) == {
        "train_runtime": 15.0,
        "train_tokens_per_second": 300.0,  # every token over the time in training steps
        "energy_joules": 600.0,
        "avg_power_watts": 30.0,  # joules over the meters' seconds
        "joules_per_1k_tokens": 200.0,
    }
    assert "energy_joules" not in first.plus(Costs(energy_joules=None)).metrics(tokens=1)


def test_a_checkpoint_carries_the_costs_so_far_and_a_job_resumed_from_it_starts_there(tmp_path, caplog):
    reading = EnergyReport(True, "nvml_total_energy_counter", 50.0, 5.0, cpu_joules=7.0)
    earlier = Costs(100.0, 60.0, 1000.0, 70.0, 110.0, 2e9, 2)
    costs = RunCosts(lambda: reading, earlier)
    args, state, control = TrainingArguments(output_dir=str(tmp_path), report_to="none"), TrainerState(), None
    costs.on_train_begin(args, state, control)
    time.sleep(0.05)
    costs.on_step_end(args, state, control)
    state.global_step = 3
    (tmp_path / "checkpoint-3").mkdir()
    costs.on_save(args, state, control)

    saved = earlier_costs(str(tmp_path / "checkpoint-3"))
    assert saved.segments == 3 and saved.peak_memory_mb == 2e9
    assert (saved.energy_joules, saved.cpu_energy_joules, saved.energy_seconds) == (1050.0, 77.0, 115.0)
    assert 100.05 <= saved.train_runtime < 105 and costs.step_seconds >= 0.05
    assert saved.step_seconds == pytest.approx(60.0 + costs.step_seconds)

    assert earlier_costs(None) == Costs()
    with caplog.at_level(logging.WARNING):
        unknown = earlier_costs(str(tmp_path))
    assert f"holds no readable {COSTS_FILE}" in caplog.text
    assert unknown.energy_joules is None, "energy spent before is unknown: no total is made up"


def checkpoint_state(folder, step: int, max_steps: int, stopped: bool) -> str:
    folder.mkdir()
    control = TrainerControl(should_training_stop=stopped).state()
    state = {"global_step": step, "max_steps": max_steps, "stateful_callbacks": {"TrainerControl": control}}
    (folder / "trainer_state.json").write_text(json.dumps(state))
    return str(folder)


@pytest.mark.parametrize(
    ("step", "saved_max", "stopped", "max_steps", "ended"),
    [
        (20, 20, True, 20, True),  # saved at the last step
        (15, 40, True, 40, True),  # early stopping ended it
        (20, 20, True, 40, False),  # a longer schedule goes on
        (15, 40, False, 40, False),  # preempted mid-training
    ],
)
def test_a_resume_from_where_the_training_ended_stops_before_its_first_step(
    tmp_path, step, saved_max, stopped, max_steps, ended
):
    guard = EndedTrainingGuard(checkpoint_state(tmp_path / f"checkpoint-{step}", step, saved_max, stopped))
    state = TrainerState(global_step=step, max_steps=max_steps)
    if ended:
        with pytest.raises(TrainingEnded, match=f"ended at step {step}"):
            guard.on_train_begin(None, state, TrainerControl())
    else:
        guard.on_train_begin(None, state, TrainerControl())
    EndedTrainingGuard(None).on_train_begin(None, TrainerState(), TrainerControl())  # a job from step 0


class Killed(Exception):
    """Stands for kill -9: the job ends where it is."""


def test_a_training_killed_twice_ends_as_an_uninterrupted_one_would_and_its_costs_cover_each_segment(
    tmp_path, tiny_qwen2, synthetic_dataset, monkeypatch
):
    out = tmp_path / "out"
    args = ["--base-model", tiny_qwen2, "--dataset", synthetic_dataset, "--output-dir", out]
    args += ["--experiment-name", "tests", *FAST, *SCHEDULE]
    calls, ended_at = [], {}
    train = transformers.Trainer.train

    def timed_train(self, *a, **k):
        started = time.monotonic()
        try:
            return train(self, *a, **k)
        finally:
            calls.append(time.monotonic() - started)

    def killed_mid_step(self, *a, **k):
        if self.state.global_step == 7:  # two steps past checkpoint-5
            raise Killed
        return step(self, *a, **k)

    def killed_after_the_last_checkpoint(self, trial, samples, start_time):
        ended_at["runtime"] = time.time() - start_time  # the Trainer's train_runtime of this segment
        raise Killed

    monkeypatch.setattr(transformers.Trainer, "train", timed_train)
    step = transformers.Trainer.training_step
    with monkeypatch.context() as patch:
        patch.setattr(transformers.Trainer, "training_step", killed_mid_step)
        first = run_in_process("methods/lora/train.py", *args, cwd=tmp_path)
    assert first.returncode == 1 and "Killed" in first.stderr
    with monkeypatch.context() as patch:
        patch.setattr(transformers.Trainer, "_finalize_training", killed_after_the_last_checkpoint)
        second = run_in_process("methods/lora/train.py", *args, "--resume", cwd=tmp_path)
    assert second.returncode == 1 and f"Resuming from {out / 'checkpoint-5'}" in second.stderr
    assert (out / "checkpoint-12" / "trainer_state.json").is_file()

    third = run_in_process("methods/lora/train.py", *args, "--resume", cwd=tmp_path)
    assert third.returncode == 0, third.stderr[-3000:]
    assert "was saved where the training ended (step 12): nothing left to train" in third.stderr
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 12
    kept = [path.name for path in out.glob("checkpoint-*")]
    assert kept == [Path(state["best_model_checkpoint"]).name], "the best alone, as an uninterrupted training keeps"
    client, run = only_run(tmp_path)
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "eval_loss")]
    assert sorted(set(steps)) == [0, 5, 10, 12], "no step past the schedule, no evaluation after it"
    runtime = run.data.metrics["train_runtime"]
    # Segment 1 up to checkpoint-5, then segment 2 up to its last checkpoint; the third trained nothing.
    assert ended_at["runtime"] < runtime <= sum(calls)
    assert run.data.metrics["train_tokens_per_second"] > 0
    assert run.data.metrics["num_input_tokens_seen"] == state["num_input_tokens_seen"]
