"""Prefix tuning: learn virtual key/value vectors prepended at every layer of a frozen base model.

The smallest adapters of all, with no change to the base weights; it conditions the model rather than
rewriting it, which suits formatting and style more than new skills. There is no merge: evaluators rebuild
the model from the base plus the adapter, guided by `prefix_metadata.json` (vLLM cannot serve prefixes).
"""

from importlib.metadata import version

import click

from shared.cli import Command
from shared.options import common_options
from shared.train.job import run_training

METADATA_FILE = "prefix_metadata.json"


def attach_prefix(flags: dict):
    """Load the base model and add trainable prefixes of --num-virtual-tokens to every attention layer."""
    from peft import PrefixTuningConfig, get_peft_model

    from shared.model.loading import load_base_model

    config = PrefixTuningConfig(
        task_type="CAUSAL_LM",
        num_virtual_tokens=flags["num_virtual_tokens"],
        prefix_projection=flags["prefix_projection"],
        encoder_hidden_size=flags["prefix_hidden_size"],
    )
    return get_peft_model(load_base_model(flags), config)


def prefix_metadata(flags: dict) -> dict:
    """What an evaluator needs to rebuild and prompt the trained model."""
    return {
        "method": "prefix",
        "base_model": flags["base_model"],
        "num_virtual_tokens": flags["num_virtual_tokens"],
        "prefix_projection": flags["prefix_projection"],
        "prefix_hidden_size": flags["prefix_hidden_size"],
        "max_length": flags["max_length"],
        "peft_version": version("peft"),
        "loader": "peft.AutoPeftModelForCausalLM.from_pretrained(OUTPUT_DIR), generation with the HF backend",
    }


@click.command(cls=Command)
@common_options
# prefix tuning
@click.option(
    "--num-virtual-tokens", type=click.IntRange(min=1), default=20, show_default=True, help="Prefix length per layer."
)
@click.option(
    "--prefix-projection/--no-prefix-projection",
    default=False,
    show_default=True,
    help="Reparameterize the prefix through a two-layer MLP: steadier training, more parameters while training.",
)
@click.option(
    "--prefix-hidden-size", type=click.IntRange(min=1), default=512, show_default=True, help="Hidden size of that MLP."
)
def main(**flags) -> None:
    """Prefix-tune --base-model on --dataset; the best prefix adapter lands in --output-dir."""
    if flags["gradient_checkpointing"]:
        raise click.UsageError(
            "prefix tuning cannot use --gradient-checkpointing: the recomputed layers lose the prefix keys and "
            "values; lower --batch-size and raise --gradient-accumulation to save memory instead"
        )
    if flags["packing"]:
        click.echo("Prefix tuning pads its batches: with the prefix held as a KV cache, packed sequences would mix.")
        flags["packing"] = False
    run_training("prefix", flags, attach_prefix, extra_files={METADATA_FILE: prefix_metadata(flags)})


if __name__ == "__main__":
    main()
