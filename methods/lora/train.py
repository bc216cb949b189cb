"""LoRA: train low-rank adapters on a frozen base model.

The default choice: a fraction of a percent of the parameters train, quality close to full fine-tuning,
and the adapter folds back into the base weights with `merge.py` for serving.
"""

import click

from shared.cli import Command
from shared.options import common_options, lora_options
from shared.train.job import run_training


def attach_lora(flags: dict):
    """Load the base model and wrap its linear layers with trainable low-rank adapters."""
    from shared.model.loading import load_base_model
    from shared.model.lora import add_lora_adapters

    return add_lora_adapters(load_base_model(flags), flags)


@click.command(cls=Command)
@common_options
@lora_options
def main(**flags) -> None:
    """Fine-tune --base-model with LoRA on --dataset; the best adapter lands in --output-dir."""
    run_training("lora", flags, attach_lora)


if __name__ == "__main__":
    main()
