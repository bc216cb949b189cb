"""LoRA: train low-rank adapters on a frozen base model.

The default choice: a fraction of a percent of the parameters train, quality close to full fine-tuning,
and the adapter folds back into the base weights with `merge.py` for serving.
"""

import click

from shared.options import common_options


def attach_lora(flags: dict):
    """Load the base model and wrap its linear layers with trainable low-rank adapters."""
    from peft import LoraConfig, get_peft_model

    from shared.modeling import load_base_model

    targets = flags["target_modules"]
    config = LoraConfig(
        r=flags["lora_r"],
        lora_alpha=flags["lora_alpha"],
        lora_dropout=flags["lora_dropout"],
        target_modules=targets if targets == "all-linear" else [t.strip() for t in targets.split(",")],
        task_type="CAUSAL_LM",
    )
    return get_peft_model(load_base_model(flags), config)


@click.command()
@common_options
# LoRA
@click.option("--lora-r", type=click.IntRange(min=1), default=8, show_default=True, help="Rank of the adapters.")
@click.option(
    "--lora-alpha",
    type=click.FloatRange(min=0, min_open=True),
    default=16,
    show_default=True,
    help="Scale: updates are multiplied by alpha/r.",
)
@click.option("--lora-dropout", type=click.FloatRange(0, 1, max_open=True), default=0.05, show_default=True)
@click.option(
    "--target-modules",
    default="all-linear",
    show_default=True,
    help="Comma-separated module names to adapt (e.g. q_proj,v_proj); all-linear = every linear layer but the head.",
)
def main(**flags) -> None:
    """Fine-tune --base-model with LoRA on --dataset; the best adapter lands in --output-dir."""
    from shared.training import run_training  # heavy imports wait until a run starts, so --help is instant

    run_training("lora", flags, attach_lora)


if __name__ == "__main__":
    main()
