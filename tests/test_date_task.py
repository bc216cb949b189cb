"""The learnable date task: the same seed writes the same files, the splits share no date, every answer is the
ISO form of the date its question writes out."""

import datetime
import json
import re

from conftest import run_in_process

MONTHS = {datetime.date(2000, m, 1).strftime(f): m for m in range(1, 13) for f in ("%B", "%b")}


def read_date(question: str) -> datetime.date:
    """An independent reading of the question's date (regexes, not the generator's templates)."""
    written = question.removeprefix("Write this date as YYYY-MM-DD: ")
    year = int(re.search(r"\b(\d{4})$", written).group(1))
    month = next(number for name, number in MONTHS.items() if re.search(rf"\b{name}\b", written))
    day = int(re.search(r"\b(\d{1,2})(?:st|nd|rd|th)?\b", written.removesuffix(str(year))).group(1))
    return datetime.date(year, month, day)


def make(folder, seed=0):
    result = run_in_process("scripts/make_date_task.py", "--output-dir", folder, "--seed", seed)
    assert result.returncode == 0, result.stderr
    return {name: json.loads((folder / f"{name}.json").read_text()) for name in ("train", "dev", "test")}


def test_the_task_is_seeded_disjoint_and_answered_correctly(tmp_path):
    splits = make(tmp_path / "a")
    assert [len(splits[name]) for name in ("train", "dev", "test")] == [400, 50, 100]
    again = make(tmp_path / "b")
    assert all(
        (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in ("train.json", "test.json")
    )
    assert make(tmp_path / "c", seed=1)["test"] != splits["test"]
    answers = {name: {r["output"] for r in records} for name, records in splits.items()}
    assert not answers["train"] & answers["test"] and not answers["train"] & answers["dev"]
    assert not answers["dev"] & answers["test"]
    for record in (r for records in again.values() for r in records):
        assert record["output"] == read_date(record["input"]).isoformat(), record
