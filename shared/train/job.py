"""A training job as a method's command starts it: first every check that a user's input can fail
(shared.train.checks), then the training itself (shared.train.loop).

Only a job that passed its checks imports the training stack (torch, transformers, PEFT, MLflow), which takes
seconds; this module and what it imports stay light.
"""

from collections.abc import Callable
from typing import Any

from shared.logs import setup_logging
from shared.train.checks import check_inputs


def run_training(
    method: str,
    flags: dict,
    build_model: Callable[[dict], Any],
    *,
    check_model: Callable[[dict], None] | None = None,
    extra_files: dict[str, dict] | None = None,
    **trainer_settings: Any,
) -> None:
    """Check the inputs, then train the model `build_model(flags)` builds (shared.train.loop.train).

    `check_model(flags)` is a method's own check on the base model (its config, say): it runs after the cheap
    checks and before the MLflow run starts.
    `extra_files` are JSON files the method writes beside its saved model (name -> content).
    `trainer_settings` go to TrainingArguments on top of the shared ones (e.g. a DeepSpeed config).
    """
    setup_logging()
    checked = check_inputs(flags)
    if check_model:
        check_model(flags)
    from shared.train.loop import train

    train(method, flags, build_model, checked, extra_files=extra_files, **trainer_settings)
