"""Merging an adapter into full-precision base weights: LoRA and QLoRA both end here.

The base is always reloaded unquantized: merging into 4-bit weights would round the adapter's update away.
The merged folder's merged_from.json names the adapter and the MLflow run that trained it, so scripts/evaluate.py
logs a merged model's scores into that run.
"""

import json
import logging
import shutil
from pathlib import Path

import click

from shared.cli import Command
from shared.logs import setup_logging
from shared.model.gguf import model_folder
from shared.model_source import check_model_source
from shared.outputs import RUN_FILE

log = logging.getLogger(__name__)

MERGED_FROM_FILE = "merged_from.json"  # not mlflow_run.json: a merged folder is no training output to resume


def provenance(base_model: str, adapter_dir: Path) -> dict[str, str | None]:
    """The base, the adapter folder, and the training run recorded in the adapter folder (None without one)."""
    run_file = adapter_dir / RUN_FILE
    run = json.loads(run_file.read_text()) if run_file.is_file() else {}
    if not run:
        log.warning(
            "%s holds no %s: the merged model's scores will have no training run to go to", adapter_dir, RUN_FILE
        )
    return {
        "base_model": base_model,
        "adapter": str(adapter_dir.resolve()),
        "run_id": run.get("run_id"),
        "experiment_id": run.get("experiment_id"),
    }


def merged_from_run(model_dir: Path) -> str | None:
    """The training run of the adapter a merged folder was made from, when merge.py recorded one."""
    path = model_dir / MERGED_FROM_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise click.ClickException(f"{path}: not valid JSON ({err.msg} at line {err.lineno}): pass --run-id") from None
    run_id = record.get("run_id") if isinstance(record, dict) else None
    if run_id is not None and not isinstance(run_id, str):
        raise click.ClickException(f"{path}: field 'run_id' must be a string, found {type(run_id).__name__}")
    return run_id


def merge_adapter(base_model: str, adapter_dir: Path, output_dir: Path, *, cache_dir: Path | None, dtype: str) -> None:
    """Load the base in `dtype` (never quantized), apply the adapter, merge, and save weights and tokenizer."""
    if not (adapter_dir / "adapter_config.json").is_file():
        raise click.UsageError(f"{adapter_dir} holds no adapter_config.json: is it a training output directory?")
    if output_dir.exists() and any(output_dir.iterdir()):
        raise click.UsageError(f"{output_dir} is not empty: choose another --output-dir")
    check_model_source(base_model)
    merged_from = provenance(base_model, adapter_dir)

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    setup_logging()
    log.info("Loading base model %s in %s", base_model, dtype)
    model = AutoModelForCausalLM.from_pretrained(
        model_folder(base_model, cache_dir), cache_dir=cache_dir, dtype=getattr(torch, dtype), use_safetensors=True
    )
    log.info("Applying the adapter from %s and merging it", adapter_dir)
    merged = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    # Written aside and renamed at the end, so a crash never leaves a half-written model at OUTPUT_DIR.
    partial = output_dir.with_name(output_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    merged.save_pretrained(partial)
    AutoTokenizer.from_pretrained(adapter_dir).save_pretrained(partial)
    (partial / MERGED_FROM_FILE).write_text(json.dumps(merged_from, indent=2) + "\n")
    if output_dir.exists():
        output_dir.rmdir()
    partial.rename(output_dir)
    log.info("Wrote the merged model to %s", output_dir)


@click.command(cls=Command)
@click.option(
    "--base-model", required=True, help="The base model the adapter was trained on (folder, .gguf file or hub id)."
)
@click.option(
    "--lora-ckpt",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Training output folder holding adapter_config.json.",
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
def merge_command(base_model: str, lora_ckpt: Path, output_dir: Path, cache_dir: Path | None, dtype: str) -> None:
    """Merge the adapter in --lora-ckpt into --base-model and write a standalone model to --output-dir."""
    merge_adapter(base_model, lora_ckpt, output_dir, cache_dir=cache_dir, dtype=dtype)
