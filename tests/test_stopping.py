"""The shared early-stopping rule: relative improvement over a reference, with patience."""

import pytest
from transformers import TrainerControl, TrainerState, TrainingArguments

from shared.train.stopping import RelativeEarlyStopping, is_improvement


@pytest.mark.parametrize(
    ("reference", "current", "expected"),
    [
        (None, 5.0, True),  # the first evaluation sets the reference
        (2.0, 1.98, True),  # exactly 1%
        (2.0, 1.981, False),  # just under 1%
        (0.5, 0.49, True),  # the rule is relative: 0.01 absolute is 2% here
        (5.0, 4.99, False),  # ... and 0.2% here
        (2.0, 2.5, False),
    ],
)
def test_is_improvement_is_relative(reference, current, expected):
    assert is_improvement(reference, current, 0.01) is expected


def evaluate(callback: RelativeEarlyStopping, losses: list[float]) -> list[bool]:
    """Feed eval losses to the callback; return after each whether training was told to stop."""
    args, state, stops = TrainingArguments(output_dir="unused", report_to="none"), TrainerState(), []
    for loss in losses:
        control = TrainerControl()
        callback.on_evaluate(args, state, control, metrics={"eval_loss": loss})
        stops.append(control.should_training_stop)
    return stops


def test_stops_after_patience_evaluations_without_improvement():
    stops = evaluate(RelativeEarlyStopping(patience=3, min_improvement=0.01), [4.0, 3.0, 2.999, 3.2, 2.98])
    assert stops == [False, False, False, False, True]


def test_an_improvement_resets_the_count():
    callback = RelativeEarlyStopping(patience=2, min_improvement=0.01)
    assert evaluate(callback, [4.0, 4.0, 3.5, 3.49, 3.6]) == [False, False, False, False, True]
    assert callback.reference == 3.5


def test_small_steps_that_add_up_count_as_an_improvement():
    callback = RelativeEarlyStopping(patience=3, min_improvement=0.01)
    assert evaluate(callback, [1.0, 0.995, 0.989, 0.985]) == [False] * 4
    assert callback.reference == 0.989 and callback.evaluations_without_improvement == 1


def test_state_round_trips_for_resume():
    callback = RelativeEarlyStopping(patience=3, min_improvement=0.05)
    evaluate(callback, [2.0, 1.99, 1.98])
    restored = RelativeEarlyStopping.from_state(callback.state())
    assert (restored.patience, restored.min_improvement) == (3, 0.05)
    assert (restored.reference, restored.evaluations_without_improvement) == (2.0, 2)
    assert evaluate(restored, [1.97]) == [True]


def test_evaluations_without_the_metric_are_ignored():
    callback = RelativeEarlyStopping(patience=1)
    control = TrainerControl()
    callback.on_evaluate(None, None, control, metrics={"eval_accuracy": 0.1})
    assert callback.reference is None and not control.should_training_stop
