"""Fold a trained LoRA adapter into its base model and save a standalone model folder.

The result loads with `AutoModelForCausalLM.from_pretrained(OUTPUT_DIR)` and serves without PEFT.
"""

from pathlib import Path

import click


@click.command()
@click.option("--base-model", required=True, help="The base model the adapter was trained on (hub id or folder).")
@click.option(
    "--lora-ckpt",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Folder holding adapter_config.json.",
)
@click.option("--output-dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--dtype",
    type=click.Choice(["float32", "bfloat16", "float16"]),
    default="float32",
    show_default=True,
    help="dtype of the merged weights.",
)
def main(base_model: str, lora_ckpt: Path, output_dir: Path, cache_dir: Path | None, dtype: str) -> None:
    """Merge the LoRA adapter in --lora-ckpt into --base-model and write the result to --output-dir."""
    from shared.merging import merge_adapter

    merge_adapter(base_model, lora_ckpt, output_dir, cache_dir=cache_dir, dtype=dtype)


if __name__ == "__main__":
    main()
