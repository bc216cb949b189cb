"""A fair comparison as one command: every method at its own best learning rate, over several seeds.

`run` sweeps each method's learning rates, picks each method's rate on dev loss, trains every method at its rate
over the spec's seeds, and scores every final model on the held-out benchmark: each training and evaluation is the
real script, as a user runs it, logged as a nested run of one MLflow parent run. Rerunning the same command after
a crash finishes the study without retraining what is done. `status` prints each child's state. `verdict` compares
methods scored anywhere, from a table of per-task scores, as a study's report does. See docs/study.md.
"""

import fcntl
import resource
import shlex
from functools import partial
from pathlib import Path

import click

from shared.cli import Group
from shared.logs import setup_logging

OUTPUT_DIR = click.option(
    "--output-dir", required=True, type=click.Path(file_okay=False, path_type=Path), help="The study's folder."
)
TRACKING_URI = click.option(
    "--tracking-uri", envvar="MLFLOW_TRACKING_URI", help="MLflow tracking URI. Default: MLflow's own."
)


@click.group(cls=Group)
def main() -> None:
    """Run a study (sweep, select, final, evaluate) or show where one stands."""
    setup_logging()


@main.command()
@click.argument("spec", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@OUTPUT_DIR
@click.option(
    "--launcher",
    type=click.Choice(["local", "slurm"]),
    default="local",
    show_default=True,
    help="local: child processes here; slurm: one sbatch --array job per phase, the driver waiting for it.",
)
@click.option(
    "--parallel", type=click.IntRange(min=1), default=1, show_default=True, help="Jobs at once (one GPU each)."
)
@click.option("--sbatch-args", default="", help="Extra sbatch options for --launcher slurm, e.g. '--mem=16G'.")
@TRACKING_URI
def run(spec: Path, output_dir: Path, launcher: str, parallel: int, sbatch_args: str, tracking_uri: str | None):
    """Run the study SPEC into --output-dir; rerun the same command to finish an interrupted one."""
    from shared.study import launchers
    from shared.study.driver import Study, StudyError
    from shared.study.spec import load_spec

    plan = load_spec(spec)  # every key checked before anything trains
    output_dir.mkdir(parents=True, exist_ok=True)
    with (output_dir / ".study.lock").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StudyError(f"another study driver is running in {output_dir}: one driver per study") from None
        study = Study(plan, output_dir, tracking_uri)
        if launcher == "local":
            launch = partial(launchers.run_local, parallel=parallel)
        else:
            launch = partial(
                launchers.run_slurm,
                parallel=parallel,
                folder=output_dir / "slurm",
                sbatch_args=shlex.split(sbatch_args),
            )
        with study.outcome():  # the parent run ends as this command does, the report included
            chosen = study.run(launch)
            click.echo("Chosen learning rates: " + ", ".join(f"{m} {r:g}" for m, r in chosen.items()))
            click.echo(f"Study {plan.name}: MLflow run {study.parent_id}")
            usage = resource.getrusage(resource.RUSAGE_SELF)  # the driver itself, not the jobs it waited for
            seconds, jobs = usage.ru_utime + usage.ru_stime, max(study.jobs_run, 1)
            click.echo(f"Driver: {seconds:.1f} s of CPU for {study.jobs_run} jobs ({seconds / jobs:.2f} s each)")
            _report(output_dir, tracking_uri)


@main.command()
@OUTPUT_DIR
@TRACKING_URI
def report(output_dir: Path, tracking_uri: str | None) -> None:
    """Write the report of the study in --output-dir (intervals, paired tests, Pareto front) and log it."""
    _report(output_dir, tracking_uri)


def _report(output_dir: Path, tracking_uri: str | None) -> None:
    from shared.study.report import build_report

    click.echo(f"Report: {build_report(output_dir, tracking_uri)}")


@main.command()
@OUTPUT_DIR
@TRACKING_URI
def status(output_dir: Path, tracking_uri: str | None) -> None:
    """Each child of the study in --output-dir: phase, state, best dev loss, score."""
    from shared.study.driver import read_summary, study_link

    rows = read_summary(output_dir, tracking_uri)
    click.echo(f"{'child':<32} {'phase':<6} {'final':<6} {'state':<12} {'best dev loss':>13}  score")
    for row in rows:
        loss = f"{row['best_eval_loss']:.4f}" if row["best_eval_loss"] is not None else "-"
        score = " ".join(f"{k} {v:.4f}" for k, v in row["score"].items()) or "-"
        click.echo(f"{row['child']:<32} {row['phase']:<6} {row['final']:<6} {row['state']:<12} {loss:>13}  {score}")
    counts = {s: sum(r["state"] == s for r in rows) for s in ("done", "failed", "running", "interrupted", "pending")}
    click.echo(", ".join(f"{n} {s}" for s, n in counts.items()))
    click.echo(f"In MLflow: {study_link(output_dir, tracking_uri)}")


@main.command()
@click.argument("scores", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--output-dir", required=True, type=click.Path(file_okay=False, path_type=Path), help="Where the verdict goes."
)
def verdict(scores: Path, output_dir: Path) -> None:
    """Compare the methods in SCORES, a CSV table with columns method, seed, task_id, score (in [0, 1]; one row per
    method, seed and task; further columns: per-run costs): write summary.csv, pairs.csv and report.md."""
    from shared.study.score_table import read_score_table
    from shared.study.verdict import write_verdict

    table = read_score_table(scores)
    intro = [f"From `{scores}`: {len(table.methods)} methods, {', '.join(table.methods)}."]
    click.echo(f"Verdict: {write_verdict(table, output_dir, f'Verdict: {scores.name}', intro, [])}")


if __name__ == "__main__":
    main()
