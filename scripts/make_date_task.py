"""Write the project's learnable task: dates written out in words, to be answered in ISO form (YYYY-MM-DD).

A real model knows the months but answers in prose, so its exact match starts near 0; a short fine-tune on 2 cores
teaches it the rule and the format. Seeded: the same --seed writes byte-identical files. The train, dev and test
splits hold distinct dates, so no record (and no answer) is shared between them.
"""

import calendar
import datetime
import json
import random
from pathlib import Path

import click

from shared.cli import Command

STYLES = (
    "{month} {day}, {year}",
    "{day} {month} {year}",
    "the {ordinal} of {month}, {year}",
    "{short} {day} {year}",
)
FIRST_DAY = datetime.date(1900, 1, 1)
DAYS = (datetime.date(2099, 12, 31) - FIRST_DAY).days + 1


def ordinal(day: int) -> str:
    suffix = "th" if 10 <= day % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
    return f"{day}{suffix}"


def date_record(date: datetime.date, style: str) -> dict[str, str]:
    written = style.format(
        month=calendar.month_name[date.month],
        short=calendar.month_abbr[date.month],
        day=date.day,
        ordinal=ordinal(date.day),
        year=date.year,
    )
    return {"input": f"Write this date as YYYY-MM-DD: {written}", "output": date.isoformat()}


def make_splits(sizes: dict[str, int], seed: int) -> dict[str, list[dict]]:
    """Distinct random dates (1900-2099) in random styles, cut into splits of the given sizes."""
    rng = random.Random(seed)
    offsets = rng.sample(range(DAYS), sum(sizes.values()))
    records = [date_record(FIRST_DAY + datetime.timedelta(days=o), rng.choice(STYLES)) for o in offsets]
    splits, start = {}, 0
    for name, size in sizes.items():
        splits[name] = records[start : start + size]
        start += size
    return splits


@click.command(cls=Command)
@click.option("--output-dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--train-size", type=click.IntRange(min=1), default=400, show_default=True)
@click.option("--dev-size", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--test-size", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def main(output_dir: Path, train_size: int, dev_size: int, test_size: int, seed: int) -> None:
    """Write train.json, dev.json and test.json ({input, output} records) to --output-dir."""
    splits = make_splits({"train": train_size, "dev": dev_size, "test": test_size}, seed)
    output_dir.mkdir(parents=True, exist_ok=True)
    for name, records in splits.items():
        (output_dir / f"{name}.json").write_text(json.dumps(records, indent=1) + "\n")
    counts = ", ".join(f"{len(records)} {name}" for name, records in splits.items())
    click.echo(f"Wrote the date task to {output_dir}: {counts} records")


if __name__ == "__main__":
    main()
