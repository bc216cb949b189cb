"""Out of memory: which step and batch ran out, and what lowers memory for the method that did.

CUDA raises torch.OutOfMemoryError; on CPU the allocator raises a RuntimeError ("DefaultCPUAllocator: can't
allocate memory") or Python a MemoryError. Either way the run ends FAILED with this message instead of a traceback.
"""

import click

CPU_ALLOCATION_FAILURES = ("DefaultCPUAllocator: can't allocate memory", "DefaultCPUAllocator: not enough memory")


class OutOfMemory(click.ClickException):
    """The training ran out of memory; the message says where and what to change."""


def is_out_of_memory(err: BaseException) -> bool:
    import torch

    if isinstance(err, torch.OutOfMemoryError | MemoryError):
        return True
    return isinstance(err, RuntimeError) and any(text in str(err) for text in CPU_ALLOCATION_FAILURES)


def out_of_memory(method: str, flags: dict, step: int, batch_shape: tuple[int, ...] | None, device: str) -> OutOfMemory:
    """The error to raise: where it ran out, and the flags that lower memory for `method`."""
    shape = "x".join(map(str, batch_shape)) if batch_shape else "unknown"
    return OutOfMemory(
        f"out of {device} memory at step {step + 1} (a batch of token ids shaped {shape}). To use less memory:\n"
        + "\n".join(f"  - {advice}" for advice in memory_advice(method, flags))
    )


def memory_advice(method: str, flags: dict) -> list[str]:
    """What lowers memory for this method, with the values to pass."""
    advice = []
    if method != "prefix" and not flags["gradient_checkpointing"]:
        advice.append("--gradient-checkpointing (recomputes activations: ~30% slower)")
    batch, accumulation = flags["batch_size"], flags["gradient_accumulation"]
    if batch > 1:
        smaller = max(1, batch // 2)
        advice.append(
            f"--batch-size {smaller} --gradient-accumulation {accumulation * batch // smaller} (the same "
            f"{batch * accumulation} sequences per optimizer step)"
        )
    advice.append(f"a shorter --max-length than {flags['max_length']} (longer records are truncated)")
    if method == "lora":
        advice.append("QLoRA (methods/qlora/train.py): the same adapters on a 4-bit base model")
    if method == "fft":
        advice.append("--deepspeed zero3 --offload-optimizer --offload-params (ZeRO-3 with CPU offload)")
    return advice
