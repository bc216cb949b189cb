"""Compare the training runs of one MLflow experiment head to head: a table, a CSV and a cost-vs-metric plot.

The plot's cost is energy; when no run measured energy (no GPU, or NVML unreadable) it is the training runtime,
and the title says so.

Training runs are those tagged `method`; the summary runs this script logs (tag `summary=true`) are skipped.
`--study` keeps a study's children alone, `--phase` those of one phase (sweep or final). Each point of the plot is
labelled with what tells its run apart: the method, and the learning rate and seed where those differ.
Any metric name works as `--metric`, including scores an evaluation step logs into the runs later (say
`pass_at_1`: MLflow refuses '@' in metric names).
"""

import csv
import math
import re
import statistics
from pathlib import Path

import click

from shared.cli import Command
from shared.track.redaction import redact_uri

MISSING = "missing"
SIGNIFICANT_DIGITS = 4
# The plot's cost axis, first choice first: (row key, name, axis label).
COSTS = (("energy_joules", "energy", "energy (J)"), ("train_runtime", "runtime", "runtime (s)"))
NO_PHASE = "-"  # a run that is no study's child
IDENTITY = {"learning_rate": "lr", "seed": "seed"}  # what may tell two runs of a method apart: param -> label
# (row key, table header); the chosen metric is appended when it is not one of these.
COLUMNS = [
    ("run_name", "run"),
    ("method", "method"),
    ("phase", "phase"),
    ("learning_rate", "learning rate"),
    ("seed", "seed"),
    ("trainable_percent", "trainable %"),
    ("train_runtime", "runtime s"),
    ("peak_memory_mb", "peak memory MB"),
    ("energy_joules", "energy J"),
    ("tokens_per_second", "tokens/s"),
    ("best_eval_loss", "best dev loss"),
]


def columns(metric: str) -> list[tuple[str, str]]:
    known = {key for key, _ in COLUMNS}
    return COLUMNS if metric in known else [*COLUMNS, (metric, metric)]


def training_runs(client, experiment_id: str, parent_id: str | None = None, phase: str | None = None) -> list:
    """Every run of the experiment that trained a method, oldest first; summary runs are left out. With `parent_id`
    only the children of that study run, with `phase` only those of that study phase."""
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], max_results=1000, page_token=token, order_by=["start_time ASC"])
        runs.extend(page)
        token = page.token
        if not token:
            break
    return [
        r
        for r in runs
        if "method" in r.data.tags
        and r.data.tags.get("summary") != "true"
        and parent_id in (None, r.data.tags.get("mlflow.parentRunId"))
        and phase in (None, r.data.tags.get("phase"))
    ]


def history(client, run_id: str, key: str) -> list[float]:
    return [m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def run_row(client, run, metric: str) -> dict:
    """One table row; a value the run never logged is None, and so is NaN: a run scored again logs NaN for what its
    latest evaluation did not measure."""
    params = run.data.params
    metrics = {key: value for key, value in run.data.metrics.items() if not math.isnan(value)}
    memory = history(client, run.info.run_id, "peak_memory_mb")
    # The run's average over all its steps; a run from before it was logged: the median of its logging intervals.
    speed = metrics.get("train_tokens_per_second")
    if speed is None:
        speeds = history(client, run.info.run_id, "tokens_per_second")
        speed = statistics.median(speeds) if speeds else None
    percent = params.get("trainable_percent")
    row = {
        "run_id": run.info.run_id,
        "run_name": run.info.run_name,
        "method": run.data.tags["method"],
        "phase": run.data.tags.get("phase", NO_PHASE),
        "learning_rate": params.get("learning_rate"),
        "seed": params.get("seed"),
        "trainable_percent": float(percent) if percent is not None else None,
        "train_runtime": metrics.get("train_runtime"),
        "peak_memory_mb": max(memory) if memory else metrics.get("peak_memory_mb"),
        "energy_joules": metrics.get("energy_joules"),
        "tokens_per_second": speed,
        "best_eval_loss": metrics.get("best_eval_loss"),
    }
    row.setdefault(metric, metrics.get(metric))
    return row


def collect_rows(
    client, experiment_id: str, metric: str, parent_id: str | None = None, phase: str | None = None
) -> list[dict]:
    return [run_row(client, run, metric) for run in training_runs(client, experiment_id, parent_id, phase)]


def point_labels(rows: list[dict]) -> list[str]:
    """What tells each run apart: its method, plus its learning rate and seed where those differ between the runs of
    that method; its run name where that still leaves two alike."""
    labels = []
    for row in rows:
        siblings = [other for other in rows if other["method"] == row["method"]]
        varying = [key for key in IDENTITY if len({other.get(key) for other in siblings}) > 1]
        labels.append(" ".join([row["method"], *(f"{IDENTITY[key]} {row.get(key)}" for key in varying)]))
    return [row["run_name"] if labels.count(label) > 1 else label for row, label in zip(rows, labels, strict=True)]


def plot_points(rows: list[dict], metric: str, cost: str) -> list[tuple[str, float, float]]:
    """(label, cost, metric) for each run that has both numbers, labelled by what tells it apart from the others."""
    drawn = [row for row in rows if row[cost] is not None and row.get(metric) is not None]
    return [(label, row[cost], row[metric]) for label, row in zip(point_labels(drawn), drawn, strict=True)]


def cost_axis(rows: list[dict], metric: str) -> tuple[str, str, str]:
    """Energy when any run has both energy and the metric, else runtime: (row key, name, axis label)."""
    return next((axis for axis in COSTS if plot_points(rows, metric, axis[0])), COSTS[-1])


def show(value) -> str:
    """Every number alike: four significant digits, fixed point, thousands separated; whole digits never rounded."""
    if value is None:
        return MISSING
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return str(value)
    if value == 0:
        return "0"
    decimals = max(0, SIGNIFICANT_DIGITS - 1 - math.floor(math.log10(abs(value))))
    return f"{value:,.{decimals}f}"


def align(column: int, cell: str, width: int) -> str:
    return cell.ljust(width) if column < 3 else cell.rjust(width)  # run, method and phase left, numbers right


def format_table(rows: list[dict], metric: str) -> str:
    cols = columns(metric)
    cells = [[header for _, header in cols]] + [[show(row.get(key)) for key, _ in cols] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(cols))]
    lines = ["  ".join(align(i, c, w) for i, (c, w) in enumerate(zip(line, widths, strict=True))) for line in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_csv(rows: list[dict], metric: str, path: Path) -> None:
    keys = ["run_id", *(key for key, _ in columns(metric))]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({k: ("" if row.get(k) is None else row[k]) for k in keys} for row in rows)


def plot_title(rows: list[dict], metric: str) -> str:
    key, name, _ = cost_axis(rows, metric)
    title = f"{name.capitalize()} vs {metric}"
    if not plot_points(rows, metric, key):
        return f"{title}: no run has {metric}"
    if key != "energy_joules":
        measured = any(row["energy_joules"] is not None for row in rows)
        title += f" (no run has {'both energy and ' + metric if measured else 'energy'}: runtime stands in)"
    return title


def draw_plot(rows: list[dict], metric: str):
    """The cost-vs-metric figure, each point labelled by what tells its run apart."""
    from matplotlib.figure import Figure

    key, _, label = cost_axis(rows, metric)
    points = plot_points(rows, metric, key)
    figure = Figure(figsize=(6, 4.5))
    axes = figure.subplots()
    for name, cost, value in points:
        axes.scatter(cost, value)
        axes.annotate(name, (cost, value), textcoords="offset points", xytext=(5, 5), fontsize="small")
    axes.margins(x=0.2, y=0.1)  # room for the labels of the outermost points
    axes.set_xlabel(label)
    axes.set_ylabel(metric)
    title = plot_title(rows, metric)
    if not points:
        axes.text(0.5, 0.5, title.split(": ", 1)[1], ha="center", va="center", transform=axes.transAxes)
    axes.set_title(title, fontsize="medium")
    figure.tight_layout()
    return figure


def write_plot(rows: list[dict], metric: str, path: Path) -> None:
    draw_plot(rows, metric).savefig(path, format="png")


def plot_name(rows: list[dict], metric: str) -> str:
    """'<cost>_vs_<metric>.png', the cost being the axis drawn; metric names may hold '/', ':' and spaces."""
    return f"{cost_axis(rows, metric)[1]}_vs_" + re.sub(r"[^\w.@-]", "_", metric) + ".png"


def log_summary(client, experiment_id: str, params: dict[str, str | None], files: list[Path]) -> str:
    """A summary run holding the files, its params what was compared (those given)."""
    run = client.create_run(experiment_id, run_name=f"compare-{params['metric']}", tags={"summary": "true"})
    try:
        for key, value in params.items():
            if value is not None:
                client.log_param(run.info.run_id, key, value)
        for path in files:
            client.log_artifact(run.info.run_id, str(path))
    except BaseException:
        client.set_terminated(run.info.run_id, "FAILED")
        raise
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def find_experiment(client, name: str):
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        raise click.ClickException(f"No experiment named {name!r} at tracking URI {redact_uri(client.tracking_uri)}")
    return experiment


def find_study(client, study: str):
    """A study's parent run, given as the study's output folder or as the run's id."""
    from mlflow.exceptions import MlflowException

    from shared.study.driver import ROLE_TAG, find_parent

    if Path(study).is_dir():
        return find_parent(client, Path(study).resolve())
    try:
        run = client.get_run(study)
    except MlflowException:
        raise click.ClickException(
            f"--study {study}: neither a folder nor a run at tracking URI {redact_uri(client.tracking_uri)}"
        ) from None
    if run.data.tags.get(ROLE_TAG) != "parent":
        raise click.ClickException(f"--study {study}: run {run.info.run_name!r} is no study's parent run")
    return run


def find_runs(client, experiment_name: str | None, study: str | None) -> tuple[object, str | None]:
    """The experiment to compare in, and the study run whose children alone to compare (None: every run)."""
    if study is None:
        if experiment_name is None:
            raise click.UsageError("give --experiment-name, --study, or both")
        return find_experiment(client, experiment_name), None
    parent = find_study(client, study)
    experiment = client.get_experiment(parent.info.experiment_id)
    if experiment_name not in (None, experiment.name):
        raise click.UsageError(f"--study {study} ran in experiment {experiment.name!r}, not {experiment_name!r}")
    return experiment, parent.info.run_id


@click.command(cls=Command)
@click.option("--experiment-name", help="MLflow experiment whose training runs to compare (default: --study's).")
@click.option(
    "--study",
    help="Compare only a study's children: its output folder (study.py run --output-dir) or its MLflow run id.",
)
@click.option("--phase", type=click.Choice(["sweep", "final"]), help="Compare only the study children of one phase.")
@click.option("--tracking-uri", envvar="MLFLOW_TRACKING_URI", help="MLflow tracking URI. Default: MLflow's own.")
@click.option("--output-dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--metric",
    default="best_eval_loss",
    show_default=True,
    help="Metric to plot against energy (runtime when no run has energy): eval_loss, best_eval_loss, or any other "
    "a run logged (an evaluation score).",
)
def main(
    experiment_name: str | None, study: str | None, phase: str | None, tracking_uri: str | None, output_dir: Path,
    metric: str,
) -> None:  # fmt: skip
    """Tabulate an experiment's training runs, plot energy (or runtime) against --metric, log both as a summary run."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment, parent_id = find_runs(client, experiment_name, study)
    rows = collect_rows(client, experiment.experiment_id, metric, parent_id, phase)
    if not rows:
        which = (f" of study run {parent_id}" if parent_id else "") + (f" in phase {phase}" if phase else "")
        raise click.ClickException(
            f"Experiment {experiment.name!r} holds no training runs{which} (none tagged 'method')"
        )
    click.echo(format_table(rows, metric) + "\n")
    output_dir.mkdir(parents=True, exist_ok=True)
    table, plot = output_dir / "comparison.csv", output_dir / plot_name(rows, metric)
    write_csv(rows, metric, table)
    write_plot(rows, metric, plot)
    params = {"metric": metric, "study_run_id": parent_id, "phase": phase}
    run_id = log_summary(client, experiment.experiment_id, params, [table, plot])
    click.echo(f"Wrote {table} and {plot}; logged to summary run {run_id}", err=True)


if __name__ == "__main__":
    main()
