"""QLoRA: LoRA adapters on a base model whose frozen weights are quantized to 4 (or 8) bits by bitsandbytes.

Pick it when the base model does not fit in memory for LoRA: 4-bit weights take about a quarter of bfloat16's
room, paid for with slower steps (weights are dequantized on the fly). Merge with `merge.py`, which folds the
adapter into full-precision weights, never into quantized ones.
"""

import click

from shared.cli import Command
from shared.options import common_options, lora_options
from shared.train.job import run_training


def quantized_lora(flags: dict):
    """Load the base model quantized, prepare it for k-bit training, and attach LoRA adapters."""
    import torch
    from peft import prepare_model_for_kbit_training
    from transformers import BitsAndBytesConfig

    from shared.model.loading import load_base_model
    from shared.model.lora import add_lora_adapters

    compute_dtype = getattr(torch, flags["compute_dtype"])
    if flags["quant_bits"] == 4:
        quantization = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=flags["quant_type"],
            bnb_4bit_compute_dtype=compute_dtype,
            bnb_4bit_use_double_quant=flags["double_quant"],
        )
    else:
        quantization = BitsAndBytesConfig(load_in_8bit=True)
    device = {"": torch.cuda.current_device()} if torch.cuda.is_available() else "cpu"
    model = load_base_model(flags, quantization_config=quantization, dtype=compute_dtype, device_map=device)
    for module in model.modules():
        # bitsandbytes repacks 4-bit weights for a CPU inference kernel at the first evaluation (the step-0
        # one) and never back, so later training steps would run that kernel, which has no backward pass.
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=flags["gradient_checkpointing"])
    return add_lora_adapters(model, flags)


@click.command(cls=Command)
@common_options
@lora_options
# quantization
@click.option(
    "--quant-bits", type=click.Choice(["4", "8"]), default="4", show_default=True, callback=lambda c, p, v: int(v)
)
@click.option(
    "--quant-type", type=click.Choice(["nf4", "fp4"]), default="nf4", show_default=True, help="4-bit data type."
)
@click.option(
    "--compute-dtype",
    type=click.Choice(["bfloat16", "float16", "float32"]),
    default="bfloat16",
    show_default=True,
    help="dtype the 4-bit weights are dequantized to for each matmul.",
)
@click.option(
    "--double-quant/--no-double-quant",
    default=True,
    show_default=True,
    help="Quantize the quantization constants too (~0.4 bit per weight saved).",
)
def main(**flags) -> None:
    """Fine-tune a quantized --base-model with LoRA on --dataset; the best adapter lands in --output-dir."""
    run_training("qlora", flags, quantized_lora)


if __name__ == "__main__":
    main()
