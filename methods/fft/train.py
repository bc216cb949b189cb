"""Full fine-tuning: every weight of the base model trains; the result is a plain model folder, no merge step.

Pick it when adapters fall short (a new language or domain, a small model) and memory allows: weights, gradients
and AdamW state take ~16 bytes per parameter, which `--deepspeed` (ZeRO) shards across GPUs and can offload to CPU.
"""

import json
import os
from pathlib import Path

import click

from shared.cli import Command
from shared.options import common_options
from shared.train.job import run_training

ZERO_CONFIGS = {name: Path(__file__).resolve().parent / f"{name}.json" for name in ("zero2", "zero3")}


def full_model(flags: dict):
    """The base model with every parameter trainable."""
    import torch

    from shared.model.loading import load_base_model

    # An optimizer step on 16-bit weights loses the updates smaller than their precision (most of them at fine-tuning
    # learning rates), so without DeepSpeed, which keeps float32 master weights itself, --bf16/--fp16 mean autocast
    # over float32 weights.
    dtype = {} if flags["deepspeed"] else {"dtype": torch.float32}
    return load_base_model(flags, **dtype).requires_grad_(True)


def check_deepspeed(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """--deepspeed names a bundled config or an existing file."""
    if value is not None and value not in ZERO_CONFIGS and not Path(value).is_file():
        raise click.BadParameter(f"{value!r} is neither zero2, zero3 nor a DeepSpeed config file")
    return value


def zero_config(flags: dict) -> dict:
    """The DeepSpeed config that --deepspeed names, with the --offload-* flags applied on top."""
    config = json.loads(Path(ZERO_CONFIGS.get(flags["deepspeed"], flags["deepspeed"])).read_text())
    zero = config.setdefault("zero_optimization", {})
    for flag, key in (("offload_optimizer", "offload_optimizer"), ("offload_params", "offload_param")):
        if flags[flag] is not None:
            zero[key] = {"device": "cpu" if flags[flag] else "none", "pin_memory": True}
    if zero.get("offload_param", {}).get("device", "none") != "none" and zero.get("stage") != 3:
        raise click.UsageError("--offload-params needs ZeRO-3 (--deepspeed zero3)")
    if zero.get("offload_optimizer", {}).get("device", "none") != "none":
        # DeepSpeed refuses the Trainer's torch AdamW on offloaded states (slow); its CPU AdamW is the same update.
        auto = dict.fromkeys(("lr", "betas", "eps", "weight_decay"), "auto")
        config.setdefault("optimizer", {"type": "AdamW", "params": auto})
    if zero.get("stage") == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True  # the output must be one loadable model
    return config


@click.command(cls=Command)
@common_options
# distributed training
@click.option(
    "--deepspeed",
    metavar="zero2|zero3|PATH.json",
    callback=check_deepspeed,
    help="Train under DeepSpeed ZeRO: stage 2 shards optimizer state and gradients, stage 3 the weights too. "
    "Default: plain DDP under a launcher, else one process.",
)
@click.option(
    "--offload-optimizer/--no-offload-optimizer",
    default=None,
    help="ZeRO: keep optimizer state in CPU memory and step it there. Default: as the config says.",
)
@click.option(
    "--offload-params/--no-offload-params",
    default=None,
    help="ZeRO-3: keep the weights in CPU memory between uses. Default: as the config says.",
)
def main(**flags) -> None:
    """Fine-tune every weight of --base-model on --dataset; the best model lands in --output-dir."""
    settings = {}
    if flags["deepspeed"]:
        if "LOCAL_RANK" not in os.environ:  # DeepSpeed cannot set up its process group from a bare python process
            raise click.UsageError(
                "--deepspeed needs a launcher: torchrun --nproc_per_node N (N=1 for one GPU), deepspeed, "
                "or accelerate launch"
            )
        settings["deepspeed"] = zero_config(flags)
    elif flags["offload_optimizer"] is not None or flags["offload_params"] is not None:
        raise click.UsageError("--offload-optimizer and --offload-params need --deepspeed")
    run_training("fft", flags, full_model, **settings)


if __name__ == "__main__":
    main()
