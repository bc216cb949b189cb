"""Which precision a training computes in: `--bf16` on or off, or `--bf16 auto` (bfloat16 mixed precision where the
hardware computes in it natively: a CUDA GPU that supports it, a CPU with AVX512-BF16 or AMX; float32 elsewhere).

Light: torch is imported only to ask a CUDA GPU, and only for `auto`.
"""

import functools
from pathlib import Path
from typing import Any

import click

AUTO = "auto"
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo's names of the instructions that compute in bfloat16


class SwitchOrAuto(click.ParamType):
    """A switch's value (true/false, as click reads a boolean) or `auto`."""

    name = "boolean|auto"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> bool | str:
        if isinstance(value, bool):
            return value
        if str(value).strip().lower() == AUTO:
            return AUTO
        try:
            return click.BOOL.convert(value, param, ctx)
        except click.BadParameter:
            self.fail(f"{value!r} is not a valid boolean or '{AUTO}'", param, ctx)


@functools.cache
def cpu_computes_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU has bfloat16 matrix instructions (False where /proc/cpuinfo cannot be read)."""
    try:
        words = set(cpuinfo.read_text().split())
    except OSError:
        return False
    return any(flag in words for flag in CPU_BF16_FLAGS)


def bf16_enabled(flags: dict) -> bool:
    """Whether the run trains in bfloat16 mixed precision: --bf16 as given, `auto` resolved on this machine."""
    if flags["bf16"] != AUTO:
        return bool(flags["bf16"])
    if flags["fp16"]:
        return False  # an explicit --fp16 wins over auto
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return cpu_computes_bf16()


def mixed_precision(flags: dict) -> str:
    """What the run computes in, as its `mixed_precision` param records it: bf16, fp16 or no (float32)."""
    return "bf16" if bf16_enabled(flags) else "fp16" if flags["fp16"] else "no"
