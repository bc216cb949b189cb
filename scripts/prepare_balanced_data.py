"""Sample a domain-balanced {input, output} dataset from OpenCodeInstruct-style rows (a `domain` field).

Exactly --generic-count rows with domain "generic" and --algorithmic-count with domain "algorithmic", drawn with
--seed: the same seed writes a byte-identical file.
"""

import random
from pathlib import Path

import click

from shared.cli import Command
from shared.data import formats, sources
from shared.data.records import DataError

DOMAINS = ("generic", "algorithmic")


@click.command(cls=Command)
@click.option("--dataset-id", required=True, help="Hugging Face dataset id (local cache only) or a local file.")
@click.option("--split", default="train", show_default=True, help="Split, optionally sliced: 'train[:50000]'.")
@click.option("--generic-count", type=click.IntRange(min=0), required=True, help="Rows with domain 'generic'.")
@click.option("--algorithmic-count", type=click.IntRange(min=0), required=True, help="Rows with domain 'algorithmic'.")
@click.option("--seed", type=int, default=42, show_default=True, help="Seed of the sampling.")
@click.option("--output", required=True, type=click.Path(dir_okay=False, path_type=Path), help="JSON file to write.")
@click.option("--input-field", default="input", show_default=True, help="Source field holding the input.")
@click.option("--output-field", default="output", show_default=True, help="Source field holding the output.")
def main(
    dataset_id: str,
    split: str,
    generic_count: int,
    algorithmic_count: int,
    seed: int,
    output: Path,
    input_field: str,
    output_field: str,
) -> None:
    """Write a seeded sample with exact per-domain counts, in source order."""
    rows = sources.load_rows(dataset_id, split)
    chosen = sample_indices(dataset_id, rows, {"generic": generic_count, "algorithmic": algorithmic_count}, seed)
    records = formats.convert_rows(
        dataset_id, rows, lambda row: formats.convert_io(row, input_field, output_field), chosen
    )
    sources.write_records(records, output)
    click.echo(
        f"Wrote {len(records)} records ({generic_count} generic, {algorithmic_count} algorithmic, "
        f"seed {seed}) to {output}"
    )


def sample_indices(source: str, rows: list[dict], counts: dict[str, int], seed: int) -> list[int]:
    """Seeded sample of row indices per domain, merged and sorted so the file follows the source order."""
    rng = random.Random(seed)
    chosen: list[int] = []
    for domain in DOMAINS:
        matching = [i for i, row in enumerate(rows) if isinstance(row, dict) and row.get("domain") == domain]
        if len(matching) < counts[domain]:
            raise DataError(
                f"{source}: asked for {counts[domain]} rows with domain '{domain}' but the split has only "
                f"{len(matching)}"
            )
        chosen.extend(rng.sample(matching, counts[domain]))
    return sorted(chosen)


if __name__ == "__main__":
    main()
