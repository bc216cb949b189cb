"""Every check that a user's input to a training can fail, in about a second and before the MLflow run starts:
flags, the output directory, the base model (folder, GGUF file or hub id), the data (file, record, field), the
tracking server.

Light on purpose: nothing here imports torch, transformers, PEFT or MLflow (a GGUF file's check asks transformers
which architectures it reads: a second more, for a model that takes far longer to load).
"""

import importlib.util
import logging
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import click

from shared.data.records import file_sha256, read_records, split_off_dev
from shared.data.sources import preparation_params
from shared.logs import process_rank
from shared.model_source import check_model_source
from shared.outputs import check_output_dir, schedule
from shared.precision import AUTO, mixed_precision
from shared.track.redaction import redact_uri

log = logging.getLogger(__name__)

SERVER_CHECK_TIMEOUT_S = 5


@dataclass(frozen=True)
class CheckedInputs:
    checkpoint: str | None  # the checkpoint --resume continues from; None: training starts at step 0
    train_records: list[dict]
    dev_records: list[dict]
    data_params: dict  # what identifies the data (a GGUF base model's source, the precision) in MLflow


def check_inputs(flags: dict) -> CheckedInputs:
    """Every check that bad flags, a bad output directory, bad data or an absent tracking server can fail."""
    checkpoint = check_output_dir(flags["output_dir"], flags["resume"], schedule(flags))
    precision = check_precision(flags)
    check_schedule(flags)
    model_params = {**check_model_source(flags["base_model"]), **precision}
    check_weights_format(flags)
    check_attention(flags)
    if process_rank() == 0:  # only rank 0 talks to MLflow
        check_tracking_server(flags["tracking_uri"])
    train_records, dev_records, data_params = load_records(flags)
    return CheckedInputs(checkpoint, train_records, dev_records, {**data_params, **model_params})


def cuda_available() -> bool:
    import torch  # only for the flags that need a GPU

    return torch.cuda.is_available()


def check_schedule(flags: dict) -> None:
    if flags["warmup_steps"] and flags["warmup_ratio"]:
        raise click.UsageError("pass --warmup-steps or --warmup-ratio, not both")


def check_precision(flags: dict) -> dict[str, str]:
    """The run's precision flags checked; returns the precision it trains in, as a param."""
    if flags["bf16"] is True and flags["fp16"]:
        raise click.UsageError("--bf16 and --fp16 exclude each other: pick one")
    if flags["fp16"] and not cuda_available():
        raise click.UsageError("--fp16 needs a CUDA GPU; on CPU use --bf16 or neither")
    precision = mixed_precision(flags)
    if flags["bf16"] == AUTO and not flags["fp16"]:  # with --fp16, auto yields to it
        found = "does" if precision == "bf16" else "does not"
        log.info("--bf16 auto: this machine %s compute in bfloat16: mixed precision %s", found, precision)
    return {"mixed_precision": precision}


def load_records(flags: dict) -> tuple[list, list, dict]:
    """Training and dev records (validated), and the params that identify the data in MLflow."""
    train = read_records(flags["dataset"])
    params = {
        "dataset_rows": len(train),
        "dataset_sha256": file_sha256(flags["dataset"]),
        **preparation_params(flags["dataset"]),
    }
    if flags["dev_dataset"]:
        dev = read_records(flags["dev_dataset"])
        params.update(dev_dataset_rows=len(dev), dev_dataset_sha256=file_sha256(flags["dev_dataset"]))
    else:
        train, dev = split_off_dev(train, flags["dev_fraction"], flags["seed"])
        log.info("Held out %d of %d training records as the dev set", len(dev), len(dev) + len(train))
    params.update(train_rows=len(train), dev_rows=len(dev), **dev_overlap(train, dev))
    return train, dev, params


def dev_overlap(train: list[dict], dev: list[dict]) -> dict[str, int]:
    """How many dev records are training records too (whole, or by their prompt), with a warning when any are:
    a dev loss measured on training data flatters the checkpoints and learning rates it selects."""
    records, prompts = {(r["input"], r["output"]) for r in train}, {r["input"] for r in train}
    overlap = {
        "dev_overlap_records": sum((r["input"], r["output"]) in records for r in dev),
        "dev_overlap_prompts": sum(r["input"] in prompts for r in dev),
    }
    if overlap["dev_overlap_prompts"]:
        log.warning(
            "Leakage: %d of the %d dev records are training records too (%d share their prompt with one): the dev "
            "loss that picks checkpoints and learning rates is measured partly on training data. Use a dev set "
            "disjoint from the training records.",
            overlap["dev_overlap_records"],
            len(dev),
            overlap["dev_overlap_prompts"],
        )
    return overlap


def check_weights_format(flags: dict) -> None:
    """Refuse, before any run starts, a local base model whose weights are pickles unless the user allows them."""
    folder = Path(flags["base_model"])
    if flags["allow_pickle_weights"] or not folder.is_dir() or any(folder.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in [*folder.glob("*.bin"), *folder.glob("*.pt"), *folder.glob("*.pth")])
    if pickles:
        raise click.UsageError(
            f"--base-model {folder} holds pickle weights only ({', '.join(pickles)}), which can run code when "
            "loaded: convert them to safetensors, or pass --allow-pickle-weights if you trust their source"
        )


def check_attention(flags: dict) -> None:
    """Refuse, before any run starts, an attention kernel this machine cannot run."""
    if flags["attention"] != "flash_attention_2":
        return
    if not cuda_available():
        raise click.UsageError("--attention flash_attention_2 needs a CUDA GPU; on a CPU use sdpa or eager")
    if importlib.util.find_spec("flash_attn") is None:
        raise click.UsageError("--attention flash_attention_2 needs the flash-attn package: pip install flash-attn")


def check_tracking_server(tracking_uri: str | None) -> None:
    """Fail in seconds, before any model loads, when the tracking server is not answering."""
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=SERVER_CHECK_TIMEOUT_S):
            return
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
    raise click.ClickException(
        f"the MLflow tracking server at {redact_uri(uri)} does not answer ({reason}): start it, or point "
        "--tracking-uri / MLFLOW_TRACKING_URI at one that runs"
    )
