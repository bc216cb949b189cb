"""BitFit: train only the bias terms of the base model (plus any parameter a --trainable-pattern names).

The cheapest baseline: a few thousandths of the parameters train, and the result is a plain model folder with
no merge step. Pick it to see how much a method's extra capacity is worth; models without biases (Llama) need
--trainable-pattern to choose what trains instead.
"""

import re

import click

from shared.cli import Command
from shared.options import common_options
from shared.train.job import run_training


def trainable(name: str, patterns: list[re.Pattern]) -> bool:
    return name.endswith(".bias") or any(p.search(name) for p in patterns)


def require_something_trainable(flags: dict) -> None:
    """Refuse, before any run starts, a model with no bias terms when no pattern names what to train."""
    import torch
    from transformers import AutoModelForCausalLM

    from shared.model.loading import load_config

    config = load_config(flags)
    with torch.device("meta"):  # parameter names only: no weights are read or allocated
        names = [name for name, _ in AutoModelForCausalLM.from_config(config).named_parameters()]
    patterns = [re.compile(p) for p in flags["trainable_pattern"]]
    if not any(trainable(name, patterns) for name in names):
        what = "has no bias terms" if not patterns else "has no bias terms and no parameter matches --trainable-pattern"
        raise click.UsageError(
            f"{flags['base_model']} {what}, so BitFit would train nothing; "
            "pass --trainable-pattern REGEX to choose parameters (e.g. --trainable-pattern 'norm')"
        )


def biases_only(flags: dict):
    """Load the base model and freeze everything but its biases and the pattern-matched parameters."""
    from shared.model.loading import load_base_model

    model = load_base_model(flags)
    patterns = [re.compile(p) for p in flags["trainable_pattern"]]
    for name, parameter in model.named_parameters():
        parameter.requires_grad = trainable(name, patterns)
    return model


@click.command(cls=Command)
@common_options
# BitFit
@click.option(
    "--trainable-pattern",
    multiple=True,
    metavar="REGEX",
    help="Also train parameters whose name matches REGEX (repeatable), e.g. 'norm' or 'layers\\.1\\.'.",
)
def main(**flags) -> None:
    """Fine-tune only the biases of --base-model on --dataset; the best model lands in --output-dir."""
    run_training("bitfit", flags, biases_only, check_model=require_something_trainable)


if __name__ == "__main__":
    main()
