"""Cost of EnergyMeter's power-sampling thread on a CPU workload that stands in for training steps.

Times N steps of small torch matmuls without the meter, with it at the default interval and at a stress interval,
and the cost of one sampling tick. Uses the real NVML when a GPU is present, otherwise a fake NVML (said so in the
output): the fake answers instantly, so it measures the thread's Python and scheduling cost, not the driver's.
"""

import statistics
import sys
import time
import types

import click

from shared.cli import Command
from shared.track.energy import DEFAULT_INTERVAL, EnergyMeter


def fake_nvml(gpus: int) -> types.ModuleType:
    """A stand-in pynvml with `gpus` power-only GPUs reading a constant 300 W."""
    fake = types.ModuleType("pynvml")
    fake.NVMLError = type("NVMLError", (Exception,), {})
    fake.NVMLError_NotSupported = type("NVMLError_NotSupported", (fake.NVMLError,), {})

    def not_supported(handle):
        raise fake.NVMLError_NotSupported("Not Supported")

    fake.nvmlInit = fake.nvmlShutdown = lambda: None
    fake.nvmlDeviceGetCount = lambda: gpus
    fake.nvmlDeviceGetHandleByIndex = lambda index: index
    fake.nvmlDeviceGetName = lambda handle: f"FAKE GPU {handle}"
    fake.nvmlDeviceGetTotalEnergyConsumption = not_supported
    fake.nvmlDeviceGetPowerUsage = lambda handle: 300_000
    return fake


def real_nvml_works() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
        pynvml.nvmlShutdown()
        return count > 0
    except Exception:
        return False


def run_steps(steps: int, size: int) -> float:
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    begin = time.perf_counter()
    for _ in range(steps):
        a = torch.tanh(a @ b)
    return time.perf_counter() - begin


def timed(steps: int, size: int, interval: float | None) -> tuple[float, int]:
    """Seconds for the workload, and the number of power samples taken (interval None: no meter)."""
    if interval is None:
        return run_steps(steps, size), 0
    meter = EnergyMeter(interval=interval)
    meter.start()
    seconds = run_steps(steps, size)
    return seconds, len(meter.stop().power_samples)


def tick_cost_us(ticks: int) -> float:
    meter = EnergyMeter(interval=3600)  # the thread sleeps; ticks are driven here
    meter.start()
    begin = time.perf_counter()
    for _ in range(ticks):
        meter._tick()
    cost = (time.perf_counter() - begin) / ticks * 1e6
    meter.stop()
    return cost


@click.command(cls=Command)
@click.option("--steps", default=4000, show_default=True, help="Emulated training steps per timing.")
@click.option("--size", default=256, show_default=True, help="Matrix side of each step's matmul.")
@click.option("--repeats", default=3, show_default=True, help="Timings per configuration; the median is kept.")
@click.option("--stress-interval", default=0.01, show_default=True, help="A short sampling interval, in seconds.")
@click.option("--fake-gpus", default=1, show_default=True, help="GPUs the fake NVML pretends to have.")
@click.option("--threads", default=1, show_default=True, help="torch intra-op threads.")
def main(steps: int, size: int, repeats: int, stress_interval: float, fake_gpus: int, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    if real_nvml_works():
        click.echo("NVML: real (GPU present)")
    else:
        sys.modules["pynvml"] = fake_nvml(fake_gpus)
        click.echo(f"NVML: FAKE, {fake_gpus} simulated GPU(s) -- no GPU here; driver call latency not included")
    run_steps(steps // 4, size)  # warm-up
    configs = {"no meter": None, f"meter @ {DEFAULT_INTERVAL} s": DEFAULT_INTERVAL}
    configs[f"meter @ {stress_interval} s"] = stress_interval
    results = {name: [] for name in configs}
    for _ in range(repeats):  # interleaved, so that drift in a shared machine's speed hits every configuration
        for name, interval in configs.items():
            results[name].append(timed(steps, size, interval))
    base = statistics.median(s for s, _ in results["no meter"])
    click.echo(f"workload: {steps} steps of {size}x{size} matmul+tanh, {threads} thread(s), median of {repeats}")
    for name, runs in results.items():
        median = statistics.median(s for s, _ in runs)
        samples = statistics.median(n for _, n in runs)
        click.echo(
            f"  {name:<16} {median * 1e3:8.1f} ms  ({median / steps * 1e3:.3f} ms/step)  "
            f"overhead {100 * (median - base) / base:+6.2f} %  samples/run {samples:.0f}"
        )
    tick = tick_cost_us(2000)
    click.echo(f"per-tick cost: {tick:.1f} us (one power reading per GPU + RAPL poll)")
    for interval in configs.values():
        if interval is not None:  # the measured differences above are mostly timing noise at this size
            click.echo(f"  tick cost / interval @ {interval} s: {100 * tick * 1e-6 / interval:.4f} % of wall time")


if __name__ == "__main__":
    main()
