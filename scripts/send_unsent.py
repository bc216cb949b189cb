"""Send to MLflow what a training job kept in its output directory while the tracking server was unreachable.

    python scripts/send_unsent.py OUTPUT_DIR [--tracking-uri URI]

Metrics keep their steps and timestamps; artifacts are uploaded; the run gets the final status the job reached.
"""

from pathlib import Path

import click

from shared.cli import Command


@click.command(cls=Command)
@click.argument("output_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--tracking-uri", help="MLflow tracking URI. Default: $MLFLOW_TRACKING_URI, else MLflow's local store.")
def main(output_dir: Path, tracking_uri: str | None) -> None:
    """Replay OUTPUT_DIR's kept MLflow calls into the run that trained it."""
    import mlflow

    from shared.outputs import read_run_id
    from shared.track.outbox import OUTBOX_FILE, send_unsent

    if not (output_dir / OUTBOX_FILE).is_file():
        click.echo(f"{output_dir} holds no {OUTBOX_FILE}: nothing to send")
        return
    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    run_id = read_run_id(output_dir)
    count = send_unsent(output_dir, run_id)
    click.echo(f"Sent {count} kept MLflow calls to run {run_id}")


if __name__ == "__main__":
    main()
