"""Real-token throughput, padding waste, peak memory and energy of every method beside the seed-style baseline.

Each configuration trains in its own process (`python -m shared.train.speed_benchmark`), the first steps excluded
as warm-up, so that one configuration neither warms nor pollutes another. The baseline (plain Trainer, LoRA,
per-batch padding, loss on every token) runs in the same session on the same model, data and sequences per step;
every configuration is reported as a ratio to it.
"""

import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click

from shared.cli import Command

REPO = Path(__file__).resolve().parent.parent
METHODS = "lora,qlora,bitfit,prefix,fft"
LIBRARIES = {  # what shared.train.speed_benchmark's run_library trains, and the module each needs
    "flattening": "transformers",
    "trl": "trl",
}
FLOP_FORMULA = "MFU = real tokens/s x model FLOPs per token / the device's peak in the configuration's compute dtype (a listed GPU's data-sheet dense bf16 peak; elsewhere a matrix product measured at the start); model FLOPs per token ~6N full fine-tuning, ~4N with a frozen base (N = total parameters, the head counted at every position), attention ignored"  # noqa: E501
METRICS = (
    "real_tokens_per_second",
    "trained_tokens_per_second",
    "padding_fraction",
    "median_step_seconds",
    "peak_memory_mb",
    "training_memory_mb",
    "energy_joules_per_1k_tokens",
    "collate_share",
    "optimizer_share",
    "eval_pass_seconds",
    "eval_share_default_schedule",
)


def measure(name: str, configuration: str, train_args: list[str], workdir: Path, warmup: int, env: dict) -> dict:
    """Train one configuration in a fresh process and return what its StepMeter measured."""
    report = workdir / f"{name.replace(' ', '_')}.json"
    output_dir = workdir / "outputs" / report.stem
    command = [
        sys.executable, "-m", "shared.train.speed_benchmark", str(report), configuration, "--warmup-steps", str(warmup),
        *train_args, "--output-dir", str(output_dir),
    ]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env)
    if result.returncode:
        raise click.ClickException(f"{name} failed:\n{result.stderr[-3000:]}")
    subprocess.run(["rm", "-rf", str(output_dir)], check=True)  # checkpoints of a finished measurement are not needed
    return json.loads(report.read_text())


def median_run(runs: list[dict]) -> dict:
    """Each metric's median over repeated runs of one configuration (None stays None)."""
    merged = dict(runs[0])
    for key in METRICS:
        values = [r[key] for r in runs if r[key] is not None]
        merged[key] = statistics.median(values) if values else None
    return merged


def device_peaks(threads: int | None) -> dict[str, dict]:
    """Per compute dtype, the peak FLOP/s an MFU divides by, at the thread count the configurations train with."""
    import torch

    from shared.train.speed_benchmark import device_peak_flops

    if threads:
        torch.set_num_threads(threads)
    dtypes = ("float32", "bfloat16", "float16") if torch.cuda.is_available() else ("float32", "bfloat16")
    return {dtype: dict(zip(("flops", "source"), device_peak_flops(dtype), strict=True)) for dtype in dtypes}


def with_model_flops(row: dict, peaks: dict[str, dict]) -> dict:
    flops = row["real_tokens_per_second"] * row["model_flops_per_token"]
    return {**row, "model_flops_per_second": flops, "mfu": flops / peaks[row["compute_dtype"]]["flops"]}


def with_ratios(row: dict, baseline: dict) -> dict:
    return {
        **row,
        "real_tokens_per_second_vs_baseline": row["real_tokens_per_second"] / baseline["real_tokens_per_second"],
        "trained_tokens_per_second_vs_baseline": row["trained_tokens_per_second"]
        / baseline["trained_tokens_per_second"],
        "peak_memory_vs_baseline": row["peak_memory_mb"] / baseline["peak_memory_mb"],
        "training_memory_vs_baseline": None
        if row["training_memory_mb"] is None or not baseline["training_memory_mb"]
        else row["training_memory_mb"] / baseline["training_memory_mb"],
    }


def table(rows: list[dict]) -> str:
    def number(value, spec: str, unit: str = "") -> str:
        return "n/a" if value is None else format(value, spec) + unit

    lines = [
        "| configuration | real tok/s | trained tok/s | padding | median step (s) | peak MB | training MB | J/1k tok | model GFLOP/s | MFU | real tok/s vs baseline | peak memory vs baseline | training memory vs baseline |",  # noqa: E501
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['name']} | {row['real_tokens_per_second']:,.0f} | {row['trained_tokens_per_second']:,.0f} | "
            f"{100 * row['padding_fraction']:.1f}% | {row['median_step_seconds']:.3f} | {row['peak_memory_mb']:,.0f} | "
            f"{number(row['training_memory_mb'], ',.0f')} | {number(row['energy_joules_per_1k_tokens'], '.2f')} | "
            f"{row['model_flops_per_second'] / 1e9:,.1f} | {row['mfu']:.1%} | "
            f"{row['real_tokens_per_second_vs_baseline']:.2f}x | "
            f"{row['peak_memory_vs_baseline']:.2f}x | {number(row['training_memory_vs_baseline'], '.2f', 'x')} |"
        )
    return "\n".join(lines)


def time_shares(rows: list[dict]) -> str:
    """Where a step's time goes besides the model: collating, the optimizer; and what evaluation adds."""

    def share(value) -> str:
        return "n/a" if value is None else f"{value:.1%}"

    lines = [
        "| configuration | collate share | optimizer share | eval pass (s) | eval share at default schedule |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        eval_pass = "n/a" if row["eval_pass_seconds"] is None else f"{row['eval_pass_seconds']:.3f}"
        lines.append(
            f"| {row['name']} | {share(row['collate_share'])} | {share(row['optimizer_share'])} | {eval_pass} | "
            f"{share(row['eval_share_default_schedule'])} |"
        )
    return "\n".join(lines)


def precision_loss_differences(rows: list[dict]) -> str:
    """Each `... --bf16` configuration's training loss beside the same configuration's in float32, step by step."""
    by_name = {row["name"]: row for row in rows}
    lines = []
    for name, row in by_name.items():
        reference = by_name.get(" ".join(word for word in name.split() if word != "--bf16"))
        if "--bf16" not in name.split() or reference is None:
            continue
        ours, theirs = dict(row["loss_curve"]), dict(reference["loss_curve"])
        steps = sorted(set(ours) & set(theirs))
        if not steps:
            continue
        pairs = ", ".join(f"{step}: {ours[step]:.4f} vs {theirs[step]:.4f}" for step in steps)
        largest = max(abs(ours[s] - theirs[s]) / abs(theirs[s]) for s in steps)
        lines.append(
            f"- {name} vs {reference['name']}, training loss at step {pairs}; largest difference {largest:.2%}"
        )
    return "\n".join(lines)


def help_seconds(env: dict) -> dict[str, float]:
    """Wall seconds of `--help` for every script: heavy imports belong to training, not to reading the flags."""
    seconds = {}
    for script in sorted([*REPO.glob("methods/*/*.py"), *REPO.glob("scripts/*.py")]):
        begin = time.perf_counter()
        subprocess.run([sys.executable, str(script), "--help"], cwd=REPO, env=env, capture_output=True, check=True)
        seconds[str(script.relative_to(REPO))] = time.perf_counter() - begin
    return seconds


def targets(rows: list[dict], helps: dict[str, float], gpu: bool) -> str:
    """The performance targets, each with the measured value and whether it is met."""
    by_name = {row["name"]: row for row in rows}
    lines = []

    def check(label: str, value: str, target: str, met: bool) -> None:
        lines.append(f"- {label}: {value} (target {target}): {'met' if met else 'NOT met'}")

    if "lora" in by_name:
        lora = by_name["lora"]
        ratio, wanted = lora["real_tokens_per_second_vs_baseline"], 2.0 if gpu else 1.3
        check("LoRA real tokens/s vs baseline", f"{ratio:.2f}x", f">= {wanted}x on {'GPU' if gpu else 'CPU'}",
              ratio >= wanted)  # fmt: skip
        memory = lora["peak_memory_vs_baseline"]
        check("LoRA peak memory vs baseline", f"{memory:.2f}x", "<= 1.00x", memory <= 1.0)
        if lora["training_memory_vs_baseline"] is not None:
            memory = lora["training_memory_vs_baseline"]
            check("LoRA memory added by training vs baseline", f"{memory:.2f}x", "<= 1.00x", memory <= 1.0)
        if lora["eval_share_default_schedule"] is not None:
            share = lora["eval_share_default_schedule"]
            check("LoRA evaluation at the default schedule", f"{share:.1%} of training", "< 10%", share < 0.1)
    if "lora --bf16" in by_name and not gpu:
        ratio = by_name["lora --bf16"]["real_tokens_per_second_vs_baseline"]
        check("LoRA --bf16 real tokens/s vs the float32 baseline", f"{ratio:.2f}x", ">= 1.6x on CPU", ratio >= 1.6)
    slowest = max(helps, key=helps.get)
    check("slowest --help", f"{helps[slowest]:.2f} s ({slowest})", "< 1 s", helps[slowest] < 1.0)
    return "\n".join(lines)


def prepare_inputs(workdir: Path, base_model: str | None, dataset: Path | None) -> tuple[str, Path]:
    """The tiny model and the HumanEval-derived records, built on the spot when none are given."""
    if base_model is None:
        click.echo("Building the tiny Qwen2 model ...", err=True)
        base_model = str(workdir / "tiny-qwen2")
        subprocess.run(
            [sys.executable, str(REPO / "scripts/make_tiny_model.py"), base_model], check=True, capture_output=True
        )
    if dataset is None:
        click.echo("Writing the HumanEval-derived records ...", err=True)
        dataset = workdir / "humaneval.json"
        command = [sys.executable, str(REPO / "scripts/prepare_data.py"), "--format", "humaneval", "--output", dataset]
        subprocess.run(command, check=True, capture_output=True)
    return base_model, dataset


@click.command(cls=Command)
@click.option("--methods", default=METHODS, show_default=True, help="Comma-separated methods to measure.")
@click.option(
    "--variant",
    "variants",
    multiple=True,
    metavar="'METHOD FLAGS...'",
    help="An extra configuration: a method and training flags, e.g. 'lora --no-packing'. Repeatable.",
)
@click.option(
    "--libraries",
    default=",".join(LIBRARIES),
    show_default=True,
    help="Comma-separated libraries' own LoRA trainings to measure beside the baseline: flattening (a plain "
    "Trainer with transformers' DataCollatorWithFlattening), trl (TRL's SFTTrainer, padding-free; skipped with a "
    "note where TRL is not installed). Empty: none.",
)
@click.option("--base-model", help="Model to train. Default: a tiny Qwen2 built on the spot.")
@click.option(
    "--dataset", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Default: HumanEval-derived."
)
@click.option(
    "--steps", type=click.IntRange(min=1), default=20, show_default=True, help="Measured steps, after warm-up."
)
@click.option("--warmup-steps", type=click.IntRange(min=0), default=3, show_default=True)
@click.option(
    "--logging-steps",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="Training loss logged every N steps: the loss curves compared between precisions.",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--gradient-accumulation", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--max-length", type=click.IntRange(min=8), default=1024, show_default=True)
@click.option(
    "--repeats",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Runs per configuration, interleaved; medians kept.",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    help="torch's CPU threads per configuration (OMP_NUM_THREADS). Default: torch's own choice. On a machine "
    "others share, 1 thread keeps OpenMP from spinning against their processes.",
)
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), help="Write the results as JSON here.")
def main(
    methods: str,
    libraries: str,
    variants: tuple[str, ...],
    base_model: str | None,
    dataset: Path | None,
    steps: int,
    warmup_steps: int,
    logging_steps: int,
    batch_size: int,
    gradient_accumulation: int,
    max_length: int,
    repeats: int,
    threads: int | None,
    output: Path | None,
) -> None:
    """Measure every method and the seed-style baseline; print a table and optionally write JSON."""
    configurations, skipped = {"baseline": ["baseline"]}, {}
    for library in filter(None, (name.strip() for name in libraries.split(","))):
        if library not in LIBRARIES:
            raise click.BadParameter(f"{library!r}: not one of {', '.join(LIBRARIES)}", param_hint="--libraries")
        if importlib.util.find_spec(LIBRARIES[library]) is None:
            skipped[library] = f"the {LIBRARIES[library]} package is not installed here"
            click.echo(f"Skipping {library}: {skipped[library]}.", err=True)
        else:
            configurations[library] = [library]
    configurations.update({m.strip(): [m.strip()] for m in methods.split(",") if m.strip()})
    configurations.update({v: v.split() for v in variants})
    for name, (configuration, *_) in configurations.items():
        from_library = configuration in ("baseline", *LIBRARIES)  # a variant may train a library's run too
        if not from_library and not (REPO / "methods" / configuration / "train.py").is_file():
            raise click.BadParameter(f"{name!r}: no method {configuration!r} under methods/", param_hint="--methods")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    click.echo("Measuring the device's matrix-product peak ...", err=True)
    peaks = device_peaks(threads)
    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(scratch)
        base_model, dataset = prepare_inputs(workdir, base_model, dataset)
        common = [
            "--base-model", base_model, "--dataset", str(dataset), "--max-steps", str(steps + warmup_steps),
            "--eval-steps", str(steps + warmup_steps), "--logging-steps", str(logging_steps),
            "--batch-size", str(batch_size), "--gradient-accumulation", str(gradient_accumulation),
            "--max-length", str(max_length),
            "--tracking-uri", f"sqlite:///{workdir}/mlflow.db", "--experiment-name", "benchmark", "--no-system-metrics",
        ]  # fmt: skip
        runs = {name: [] for name in configurations}
        total = repeats * len(configurations)
        for repeat in range(repeats):  # interleaved, so that drift in a shared machine's speed hits every one
            for index, (name, (configuration, *flags)) in enumerate(configurations.items(), start=1):
                click.echo(f"[{repeat * len(configurations) + index}/{total}] Training {name} ...", err=True)
                runs[name].append(measure(name, configuration, [*common, *flags], workdir, warmup_steps, env))
        click.echo("Timing --help of every script ...", err=True)
        helps = help_seconds(env)
    measured = {name: with_model_flops({"name": name, **median_run(r)}, peaks) for name, r in runs.items()}
    rows = [with_ratios(row, measured["baseline"]) for row in measured.values()]
    gpu = rows[0]["device"] == "cuda"
    click.echo(table(rows))
    for library, reason in skipped.items():
        click.echo(f"\nNot measured: {library} ({reason}).")
    click.echo()
    click.echo(time_shares(rows))
    differences = precision_loss_differences(rows)
    if differences:
        click.echo(f"\nLoss, bfloat16 against float32 (same seed, data and steps):\n{differences}")
    click.echo(f"\n{FLOP_FORMULA}.")
    for dtype, peak in peaks.items():
        click.echo(f"Peak {dtype}: {peak['flops'] / 1e9:,.0f} GFLOP/s ({peak['source']}).")
    click.echo("\nTargets:")
    click.echo(targets(rows, helps, gpu))
    if output:
        settings = {
            "base_model": "tiny-qwen2 (built)" if base_model.startswith(str(workdir)) else base_model,
            "dataset": "humaneval (built)" if str(dataset).startswith(str(workdir)) else str(dataset),
            "steps": steps,
            "warmup_steps": warmup_steps,
            "logging_steps": logging_steps,
            "batch_size": batch_size,
            "gradient_accumulation": gradient_accumulation,
            "max_length": max_length,
            "repeats": repeats,
            "threads": threads,
        }
        result = {
            "settings": settings,
            "host": {"machine": platform.machine(), "cpus": os.cpu_count()},
            "flop_formula": FLOP_FORMULA,
            "peak_flops": peaks,
            "configurations": rows,
            "skipped": skipped,
            "help_seconds": helps,
        }
        output.write_text(json.dumps(result, indent=2) + "\n")
        click.echo(f"Wrote {output}", err=True)


if __name__ == "__main__":
    main()
