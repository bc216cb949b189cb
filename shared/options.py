"""The command-line flags every method accepts, defined once so that all methods take exactly the same ones."""

import os
from collections.abc import Callable
from pathlib import Path

import click

from shared.precision import SwitchOrAuto

DEFAULT_EXPERIMENT = "peft-comparison"
EXISTING_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)
# Names as transformers' TrainingArguments takes them (listed here so that --help imports nothing heavy).
OPTIMIZERS = (
    "adamw_torch_fused", "adamw_torch", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit", "adafactor", "sgd",
)  # fmt: skip
SCHEDULERS = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
)

_COMMON_OPTIONS = [
    # I/O
    click.option("--base-model", required=True, help="Local model folder, a .gguf file, or a Hugging Face model id."),
    click.option(
        "--dataset",
        required=True,
        multiple=True,
        type=EXISTING_FILE,
        callback=lambda ctx, param, files: files[0] if len(files) == 1 else files,  # one file: a plain Path
        help="Training records: JSON list or JSONL of {input, output}. Several files: repeat the flag, or join "
        f"them with '{os.pathsep}' (a.json{os.pathsep}b.json); their records are read in that order.",
    ),
    click.option(
        "--dev-dataset",
        type=EXISTING_FILE,
        help="Dev records for evaluation and early stopping (default: hold out --dev-fraction of --dataset).",
    ),
    click.option(
        "--dev-fraction",
        type=click.FloatRange(0, 1, min_open=True, max_open=True),
        default=0.1,
        show_default=True,
        help="Share of the training records held out (seeded) when no --dev-dataset is given.",
    ),
    click.option(
        "--output-dir",
        required=True,
        type=click.Path(file_okay=False, path_type=Path),
        help="Where the result goes; must be empty unless --resume.",
    ),
    click.option(
        "--cache-dir",
        type=click.Path(file_okay=False, path_type=Path),
        help="Hugging Face cache folder for the base model (and a .gguf base model's converted folder).",
    ),
    click.option(
        "--energy-log",
        type=click.Path(dir_okay=False, path_type=Path),
        help="Extra copy of the energy report (always in OUTPUT_DIR/energy.json).",
    ),
    click.option(
        "--trust-remote-code",
        is_flag=True,
        help="Run Python code that ships with --base-model (off: only architectures transformers itself knows).",
    ),
    click.option(
        "--allow-pickle-weights",
        is_flag=True,
        help="Accept pickle (.bin/.pt) weights, which can run code when loaded (off: safetensors only).",
    ),
    # schedule
    click.option(
        "--epochs",
        type=click.FloatRange(min=0, min_open=True),
        default=3.0,
        show_default=True,
        help="Training epochs (early stopping may end sooner).",
    ),
    click.option(
        "--max-steps",
        type=int,
        default=-1,
        show_default=True,
        help="Optimizer steps; overrides --epochs when positive.",
    ),
    click.option("--learning-rate", type=click.FloatRange(min=0, min_open=True), default=2e-4, show_default=True),
    # optimizer
    click.option(
        "--optim",
        type=click.Choice(OPTIMIZERS),
        default="adamw_torch_fused",
        show_default=True,
        help="Optimizer. The 8-bit and paged ones are bitsandbytes' (paging only matters on a CUDA GPU).",
    ),
    click.option(
        "--lr-scheduler",
        type=click.Choice(SCHEDULERS),
        default="linear",
        show_default=True,
        help="How the learning rate changes over the steps after warm-up.",
    ),
    click.option(
        "--warmup-ratio",
        type=click.FloatRange(0, 1, max_open=True),
        default=0.0,
        show_default=True,
        help="Share of the steps that warm the learning rate up from 0 (or use --warmup-steps).",
    ),
    click.option(
        "--warmup-steps", type=click.IntRange(min=0), default=0, show_default=True, help="Warm-up steps, exactly."
    ),
    click.option(
        "--weight-decay",
        type=click.FloatRange(min=0),
        default=0.0,
        show_default=True,
        help="Decoupled weight decay (biases and norms excluded).",
    ),
    click.option("--adam-beta1", type=click.FloatRange(0, 1, max_open=True), default=0.9, show_default=True),
    click.option("--adam-beta2", type=click.FloatRange(0, 1, max_open=True), default=0.999, show_default=True),
    click.option("--adam-epsilon", type=click.FloatRange(min=0, min_open=True), default=1e-8, show_default=True),
    click.option(
        "--max-grad-norm",
        type=click.FloatRange(min=0),
        default=1.0,
        show_default=True,
        help="Clip the gradient norm to this; 0 turns clipping off.",
    ),
    click.option(
        "--batch-size",
        type=click.IntRange(min=1),
        default=2,
        show_default=True,
        help="Sequences per device per micro-batch.",
    ),
    click.option(
        "--gradient-accumulation",
        type=click.IntRange(min=1),
        default=8,
        show_default=True,
        help="Micro-batches per optimizer step.",
    ),
    click.option(
        "--max-length",
        type=click.IntRange(min=8),
        default=2048,
        show_default=True,
        help="Tokens per record; longer ones are truncated (or dropped when the prompt alone fills it).",
    ),
    click.option(
        "--attention",
        type=click.Choice(["sdpa", "eager", "flash_attention_2"]),
        default="sdpa",
        show_default=True,
        help="Attention kernel. flash_attention_2 needs a CUDA GPU and the flash-attn package; with it, packed "
        "sequences run as variable-length attention and --one-row pays.",
    ),
    click.option(
        "--packing/--no-packing",
        default=True,
        show_default=True,
        help="Padding-free batches: a batch's sequences share rows, attention kept within each sequence.",
    ),
    click.option(
        "--bounded-rows/--one-row",
        default=True,
        show_default=True,
        help="With --packing: rows no longer than the batch's longest sequence, or the whole batch in one row. "
        "Dense attention (SDPA, eager) costs a row's length squared, so one long row costs more than the padding "
        "it saves; one row pays only with varlen FlashAttention.",
    ),
    click.option(
        "--group-by-length",
        is_flag=True,
        help="Batch sequences of similar length together (shuffled in groups): less padding with --no-packing.",
    ),
    click.option(
        "--torch-compile",
        is_flag=True,
        help="Compile the model with torch.compile (compiling costs the first steps; shapes that vary recompile).",
    ),
    click.option(
        "--gradient-checkpointing",
        is_flag=True,
        help="Recompute activations in the backward pass: less memory, ~30% slower.",
    ),
    click.option(
        "--seed",
        type=int,
        default=42,
        show_default=True,
        help="Seeds the dev split, the data order and the adapter initialisation.",
    ),
    click.option(
        "--bf16",
        type=SwitchOrAuto(),
        is_flag=False,
        flag_value=True,
        default=False,
        show_default=True,
        help="Train in bfloat16 mixed precision (base weights loaded in bfloat16). auto: where the hardware computes "
        "in bfloat16 (a CUDA GPU that supports it; a CPU with AVX512-BF16 or AMX), float32 elsewhere; the run's "
        "mixed_precision param says which.",
    ),
    click.option("--fp16", is_flag=True, help="Train in float16 mixed precision (CUDA only)."),
    # evaluation and early stopping
    click.option(
        "--eval-steps",
        type=click.IntRange(min=1),
        help="Evaluate (and checkpoint) every N optimizer steps. Default: once per epoch.",
    ),
    click.option(
        "--logging-steps",
        type=click.IntRange(min=1),
        default=10,
        show_default=True,
        help="Log training metrics every N optimizer steps.",
    ),
    click.option(
        "--patience",
        type=click.IntRange(min=1),
        default=3,
        show_default=True,
        help="Evaluations without enough improvement before training stops.",
    ),
    click.option(
        "--min-improvement",
        type=click.FloatRange(0, 1, max_open=True),
        default=0.01,
        show_default=True,
        help="Relative drop in dev loss that counts as an improvement (0.01 = 1%).",
    ),
    # tracking
    click.option(
        "--experiment-name",
        envvar="MLFLOW_EXPERIMENT_NAME",
        help=f"MLflow experiment. Default: {DEFAULT_EXPERIMENT}; under `mlflow run`, the one it put the run in.",
    ),
    click.option("--run-name", help="MLflow run name. Default: METHOD-<timestamp>."),
    click.option(
        "--tracking-uri", help="MLflow tracking URI. Default: $MLFLOW_TRACKING_URI, else MLflow's local store."
    ),
    click.option(
        "--system-metrics/--no-system-metrics",
        default=True,
        show_default=True,
        help="Log MLflow's system metrics (CPU, memory, GPU) beside the training metrics.",
    ),
    click.option(
        "--resume",
        is_flag=True,
        help="Continue from the last checkpoint in OUTPUT_DIR, logging into the same MLflow run.",
    ),
]


def _apply(options: list, command: Callable) -> Callable:
    for option in reversed(options):
        command = option(command)
    return command


def common_options(command: Callable) -> Callable:
    """Decorate a click command with the flags every method shares."""
    return _apply(_COMMON_OPTIONS, command)


_LORA_OPTIONS = [
    click.option("--lora-r", type=click.IntRange(min=1), default=8, show_default=True, help="Rank of the adapters."),
    click.option(
        "--lora-alpha",
        type=click.FloatRange(min=0, min_open=True),
        default=16,
        show_default=True,
        help="Scale: updates are multiplied by alpha/r.",
    ),
    click.option("--lora-dropout", type=click.FloatRange(0, 1, max_open=True), default=0.05, show_default=True),
    click.option(
        "--target-modules",
        default="all-linear",
        show_default=True,
        help="Comma-separated module names to adapt (q_proj,v_proj); all-linear: every linear layer but the head.",
    ),
]


def lora_options(command: Callable) -> Callable:
    """Decorate a click command with the LoRA flags (LoRA and QLoRA share them)."""
    return _apply(_LORA_OPTIONS, command)
