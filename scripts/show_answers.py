"""Print what the model was asked, what it answered and what was expected, for chosen samples of an evaluation.

SOURCE is an evaluation's --output-dir (or its samples.jsonl), or the MLflow run the scores were logged to (its
evaluation/<benchmark>/samples.jsonl artifact). `--sid` picks samples by task id or by the id of the source record
(exact match: the record's index in the --data file; paraphrase: the original's index, so every wording of it;
HumanEval: `7` is `HumanEval/7`).
"""

import tempfile
from pathlib import Path

import click

from shared.cli import Command
from shared.data.records import read_jsonl_lines
from shared.evaluate.job import SAMPLES_FILE

RULE = "-" * 100
HUMANEVAL_PREFIX = "HumanEval/"


def local_samples(source: Path) -> Path:
    path = source / SAMPLES_FILE if source.is_dir() else source
    if not path.is_file():
        raise click.UsageError(f"{source} holds no {SAMPLES_FILE}: pass an evaluation's --output-dir")
    return path


def run_samples(run_id: str, benchmark: str | None, tracking_uri: str | None, folder: Path) -> Path:
    """Download the run's evaluation/<benchmark>/samples.jsonl (the only benchmark it was scored on by default)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri)
    try:
        scored = [Path(item.path).name for item in client.list_artifacts(run_id, "evaluation") if item.is_dir]
    except MlflowException:
        raise click.UsageError(f"{run_id} is neither a folder, a file nor an MLflow run at this tracking URI") from None
    if benchmark is None and len(scored) == 1:
        benchmark = scored[0]
    if benchmark not in scored:
        found = ", ".join(scored) or "none"
        raise click.UsageError(f"run {run_id}: pass --benchmark, one of those it was scored on ({found})")
    return Path(client.download_artifacts(run_id, f"evaluation/{benchmark}/{SAMPLES_FILE}", str(folder)))


def chosen(path: Path, sids: tuple[str, ...]) -> list[dict]:
    """The samples whose task id or source record id is one of `sids`, in the order asked (a bare number N also
    names HumanEval/N); an unknown id is refused."""
    samples = [record for _, record in read_jsonl_lines(path)]
    picked = []
    for sid in sids:
        names = {sid, HUMANEVAL_PREFIX + sid} if sid.isdigit() else {sid}
        matching = [s for s in samples if names & {str(s.get("task_id")), str(s.get("source_id"))}]
        if not matching:
            ids = sorted({str(s.get("task_id")) for s in samples}, key=lambda i: (len(i), i))
            listed = ", ".join(ids[:3]) + (f", ... {ids[-1]}" if len(ids) > 3 else "")
            raise click.UsageError(f"--sid {sid}: no sample in {path} has this task or source id (task ids: {listed})")
        picked += matching
    return picked


def verdict(sample: dict) -> str:
    if "exact" in sample:
        return "exact match" if sample["exact"] else "not an exact match"
    return sample.get("result", "not scored")


def visible(text: str) -> str:
    """The text, or what it is when it would print as blank lines: empty, or only whitespace (shown with repr)."""
    if not text:
        return "⟨empty⟩"
    return text if text.strip() else f"⟨only whitespace: {text!r}⟩"


def describe(sample: dict) -> str:
    title = f"task {sample['task_id']}"
    if sample.get("source_id") not in (None, sample["task_id"]):
        title += f" (source record {sample['source_id']})"
    if sample.get("bucket"):
        title += f", bucket {sample['bucket']}"
    if "sample" in sample:
        title += f", sample {sample['sample']}"
    reference = sample.get("reference", "(none: the tests decide)")
    parts = [
        f"{'=' * 100}\n{title}: {verdict(sample)}",
        f"{RULE}\nPROMPT\n{sample.get('prompt', '(not recorded: evaluated before samples carried prompts)')}",
        f"{RULE}\nANSWER\n{visible(sample['completion'])}",
    ]
    if "program" in sample:
        parts.append(f"{RULE}\nPROGRAM RUN (before the tests)\n{visible(sample['program'])}")
    parts.append(f"{RULE}\nREFERENCE\n{reference}")
    return "\n".join(part.rstrip("\n") for part in parts)


@click.command(cls=Command)
@click.argument("source")
@click.option(
    "--sid",
    multiple=True,
    required=True,
    callback=lambda ctx, param, values: tuple(sid.strip() for value in values for sid in value.split(",")),
    help="Task id or source record id to show; repeatable, or several separated by commas ('7,100').",
)
@click.option("--benchmark", help="For a run scored on several benchmarks: which one.")
@click.option("--tracking-uri", envvar="MLFLOW_TRACKING_URI", help="MLflow tracking URI. Default: MLflow's own.")
def main(source: str, sid: tuple[str, ...], benchmark: str | None, tracking_uri: str | None) -> None:
    """Show the prompt, answer, program run, reference and verdict of the samples --sid names, from SOURCE: an
    evaluation's output folder or samples.jsonl, or the MLflow run its scores went to."""
    with tempfile.TemporaryDirectory() as folder:
        if Path(source).exists():
            path = local_samples(Path(source))
        else:
            path = run_samples(source, benchmark, tracking_uri, Path(folder))
        click.echo("\n".join(describe(sample) for sample in chosen(path, sid)))


if __name__ == "__main__":
    main()
