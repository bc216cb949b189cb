"""End MLflow runs left RUNNING by jobs that were killed outright (SIGKILL, out of memory, a node failure).

    python scripts/runs.py reap --experiment-name E [--tracking-uri U] [--stale-after SECONDS] [--dry-run]
    python scripts/runs.py mark-failed --output-dir DIR --reason TEXT [--tracking-uri U]

`reap` marks FAILED each RUNNING run whose process is gone (see shared/track/reaping.py) and prints one line per
RUNNING run: what it reaped, what it left, and why. `mark-failed` ends the run that trained DIR FAILED, if it is
still RUNNING; the SLURM wrappers call it when their trainer was killed.
"""

from pathlib import Path

import click

from shared.cli import Group

TRACKING_URI = click.option(
    "--tracking-uri", envvar="MLFLOW_TRACKING_URI", help="MLflow tracking URI. Default: MLflow's own."
)


class UnknownExperiment(click.ClickException):
    """The experiment to reap does not exist in the tracking store."""


@click.group(cls=Group)
def main() -> None:
    """Find and end runs whose training process is gone."""


@main.command()
@click.option("--experiment-name", required=True, help="The experiment whose RUNNING runs are judged.")
@TRACKING_URI
@click.option(
    "--stale-after",
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds without a heartbeat after which a run from another host (or without process tags) is reaped "
    "(default: 900, shared.track.reaping.DEFAULT_STALE_AFTER_SECONDS).",
)
@click.option("--dry-run", is_flag=True, help="Print what would be reaped, change nothing.")
def reap(experiment_name: str, tracking_uri: str | None, stale_after: float | None, dry_run: bool) -> None:
    """Mark FAILED the RUNNING runs of an experiment whose process no longer runs."""
    from mlflow.tracking import MlflowClient

    from shared.track.reaping import DEFAULT_STALE_AFTER_SECONDS, reap_runs

    stale_after = stale_after or DEFAULT_STALE_AFTER_SECONDS
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        raise UnknownExperiment(
            f"no experiment named {experiment_name!r} in this tracking store: check --experiment-name and "
            "--tracking-uri (or MLFLOW_TRACKING_URI)"
        )
    runs = client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'", max_results=50000)
    for verdict in reap_runs(client, runs, stale_after, dry_run):
        action = ("would reap" if dry_run else "reaped") if verdict.reap else "left"
        click.echo(f"{action} {verdict.run_id} ({verdict.run_name}): {verdict.reason}")


@main.command("mark-failed")
@click.option(
    "--output-dir",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="A training output directory: its mlflow_run.json names the run.",
)
@click.option("--reason", required=True, help="Why the run failed, recorded as its tag reaped_reason.")
@TRACKING_URI
def mark_failed(output_dir: Path, reason: str, tracking_uri: str | None) -> None:
    """End the run that trained OUTPUT_DIR FAILED with REASON, unless it already ended."""
    from mlflow.tracking import MlflowClient

    from shared.outputs import read_run_id
    from shared.track import reaping

    run_id = read_run_id(output_dir)
    client = MlflowClient(tracking_uri)
    if reaping.mark_failed(client, run_id, reason):
        click.echo(f"run {run_id} marked FAILED: {reason}")
    else:
        click.echo(f"run {run_id} already ended {client.get_run(run_id).info.status}: left as it is")


if __name__ == "__main__":
    main()
