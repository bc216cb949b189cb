"""Train every method briefly on the same model and data, and tabulate what each costs, from its MLflow run.

The README's method table is this script's output (`--update-readme`), so its numbers are measured, not typed.
Each method runs in its own process with the same flags, one after another, into a scratch MLflow store.
"""

import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import click

from shared.cli import Command

REPO = Path(__file__).resolve().parent.parent
METHODS = ("lora", "qlora", "bitfit", "prefix", "fft")
MERGE_NEEDED = {
    "lora": "yes",
    "qlora": "yes (into full precision)",
    "bitfit": "no",
    "prefix": "no (adapter)",
    "fft": "no",
}


def measure(method: str, base_model: str, dataset: Path, steps: int, workdir: Path, extra: list[str]) -> dict:
    """Train METHOD for STEPS steps (plus its EXTRA flags) and return its run's params and metrics."""
    from mlflow import MlflowClient

    store = f"sqlite:///{workdir}/mlflow.db"
    command = [
        sys.executable, str(REPO / "methods" / method / "train.py"), "--base-model", base_model,
        "--dataset", str(dataset), "--output-dir", str(workdir / method), "--max-steps", str(steps),
        "--eval-steps", str(steps), "--logging-steps", "1", "--max-length", "512",
        "--batch-size", "4", "--gradient-accumulation", "2", "--tracking-uri", store, "--experiment-name", "table",
        *extra,
    ]  # fmt: skip
    click.echo(f"Training {method} for {steps} steps ...", err=True)
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        raise click.ClickException(f"{method} failed:\n{result.stderr[-2000:]}")
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("table")
    run = client.search_runs([experiment.experiment_id], f"tags.method = '{method}'")[0]
    history = sorted(client.get_metric_history(run.info.run_id, "tokens_per_second"), key=lambda m: m.step)
    speeds = sorted(m.value for m in history[len(history) // 4 :])  # the first steps warm up
    return {
        "method": method,
        "trainable_percent": float(run.data.params["trainable_percent"]),
        "peak_memory_mb": run.data.metrics["peak_memory_mb"],
        "tokens_per_second": speeds[len(speeds) // 2],
    }


def markdown_table(rows: list[dict], hardware: str) -> str:
    lines = [
        "| method | trainable % | peak memory (MB) | tokens/s (median) | merge needed |",
        "|---|---:|---:|---:|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['method']} | {row['trainable_percent']:.3f} | {row['peak_memory_mb']:,.0f} | "
            f"{row['tokens_per_second']:,.0f} | {MERGE_NEEDED[row['method']]} |"
        )
    lines.append(f"\nMeasured by `scripts/method_table.py` on {hardware}.")
    return "\n".join(lines)


def replace_block(text: str, table: str, block: str = "method-table") -> str:
    """Put TABLE between the BLOCK markers of a README text (`<!-- BLOCK:start -->`, `<!-- BLOCK:end -->`)."""
    start, end = f"<!-- {block}:start -->", f"<!-- {block}:end -->"
    if start not in text or end not in text:
        raise click.ClickException(f"the README has no {start} ... {end} block to fill")
    return re.sub(f"{re.escape(start)}.*?{re.escape(end)}", f"{start}\n{table}\n{end}", text, flags=re.DOTALL)


def parse_method_flags(given: tuple[str, ...]) -> dict[str, list[str]]:
    """{method: its extra flags} from METHOD=FLAGS items."""
    flags = {}
    for item in given:
        method, separator, words = item.partition("=")
        if not separator or method.strip() not in METHODS:
            raise click.BadParameter(f"{item!r}: expected METHOD=FLAGS with a method of {', '.join(METHODS)}")
        flags[method.strip()] = shlex.split(words)
    return flags


@click.command(cls=Command)
@click.option("--methods", default=",".join(METHODS), show_default=True, help="Comma-separated methods to run.")
@click.option("--base-model", help="Model to train. Default: a tiny Qwen2 built on the spot.")
@click.option("--dataset", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Default: HumanEval.")
@click.option("--steps", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--hardware", default="this machine's CPU", show_default=True, help="Said under the table.")
@click.option("--update-readme", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="README to fill.")
@click.option("--block", default="method-table", show_default=True, help="The README block to fill.")
@click.option(
    "--method-flags",
    multiple=True,
    help="METHOD=FLAGS: more flags for one method, e.g. 'bitfit=--trainable-pattern norm' for a model without biases.",
)
def main(
    methods: str,
    base_model: str | None,
    dataset: Path | None,
    steps: int,
    hardware: str,
    update_readme: Path | None,
    block: str,
    method_flags: tuple[str, ...],
):
    """Print (and optionally write into a README) the per-method cost table."""
    extra = parse_method_flags(method_flags)
    if update_readme:
        replace_block(update_readme.read_text(), "", block)  # refuse a README without the block before training
    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(scratch)
        if base_model is None:
            base_model = str(workdir / "tiny-qwen2")
            subprocess.run(
                [sys.executable, str(REPO / "scripts/make_tiny_model.py"), base_model], check=True, capture_output=True
            )
        if dataset is None:
            dataset = workdir / "humaneval.json"
            subprocess.run(
                [sys.executable, str(REPO / "scripts/prepare_data.py"), "--format", "humaneval", "--output", dataset],
                check=True,
                capture_output=True,
            )
        chosen = [m.strip() for m in methods.split(",")]
        rows = [measure(m, base_model, dataset, steps, workdir, extra.get(m, [])) for m in chosen]
    table = markdown_table(rows, hardware)
    click.echo(table)
    if update_readme:
        update_readme.write_text(replace_block(update_readme.read_text(), table, block))
        click.echo(f"Updated {update_readme}", err=True)


if __name__ == "__main__":
    main()
