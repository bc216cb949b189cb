"""Training records: read and validate {input, output} records from JSON or JSONL files, hash them, hold out a
dev split. Light on purpose (no torch, no datasets): the job's checks read records before anything heavy loads.
"""

import hashlib
import json
import logging
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

log = logging.getLogger(__name__)

REQUIRED_FIELDS = ("input", "output")


class DataError(click.ClickException):
    """A data file that cannot be used; the message names the file, the record and the field."""


def data_files(paths: Path | Sequence[Path] | None) -> list[Path]:
    """The files a data flag holds: `--dataset` gives one Path, or a tuple when repeated; none gives []."""
    if isinstance(paths, str | Path):
        return [Path(paths)]
    return [Path(path) for path in paths or ()]


def read_records(paths: Path | Sequence[Path]) -> list[dict[str, str]]:
    """Read a JSON list or JSONL file of {input, output} records, or several files' records one file after the
    other (each file's count logged), refusing anything else with an error naming the file, record and field."""
    files = data_files(paths)
    if len(files) == 1:
        return _read_file(files[0])
    records = []
    for index, path in enumerate(files):
        if path in files[:index]:
            log.warning("%s is given twice as training data: its records count twice", path)
        file_records = _read_file(path)
        log.info("%s: %d records", path, len(file_records))
        records += file_records
    return records


def _read_file(path: Path) -> list[dict[str, str]]:
    records = read_json_rows(path)
    if not records:
        raise DataError(f"{path}: the dataset is empty")
    for index, record in enumerate(records):
        validate_record(path, index, record)
    return records


def read_json_rows(path: Path) -> list[Any]:
    """The rows of a JSON list or a JSONL file (by suffix), with errors naming the file and the line."""
    path = Path(path)
    if path.suffix == ".jsonl":
        return [row for _, row in read_jsonl_lines(path)]
    try:
        rows = json.loads(_utf8_text(path))
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}") from None
    if not isinstance(rows, list):
        raise DataError(f"{path}: expected a JSON list of records, found a {type(rows).__name__}")
    return rows


def read_jsonl_lines(path: Path) -> list[tuple[int, Any]]:
    """The rows of a JSONL file with their line numbers (blank lines skipped), errors naming the file and the line."""
    rows = []
    for line_number, line in enumerate(_utf8_text(Path(path)).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append((line_number, json.loads(line)))
        except json.JSONDecodeError as err:
            raise DataError(f"{path}: line {line_number} is not valid JSON: {err.msg}") from None
    return rows


def _utf8_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except OSError as err:
        raise DataError(f"{path}: cannot be read ({err.strerror})") from None
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text (bad byte at offset {err.start})") from None


def validate_record(path: Path | str, index: int, record: Any) -> None:
    """Refuse a record that is not an object with string `input` and `output`, naming file, record and field."""
    if not isinstance(record, dict):
        raise DataError(
            f"{path}: record {index} is a {type(record).__name__}, expected an object with {REQUIRED_FIELDS}"
        )
    check_string_fields(f"{path}: record {index}", record, REQUIRED_FIELDS)


def check_string_fields(where: str, record: dict, fields: tuple[str, ...]) -> None:
    """Refuse a record whose `fields` are missing or not strings; `where` names the file and the record."""
    for field in fields:
        if field not in record:
            raise DataError(f"{where}: field '{field}' is missing")
        if not isinstance(record[field], str):
            found = "null" if record[field] is None else type(record[field]).__name__
            raise DataError(f"{where}: field '{field}' must be a string, found {found}")


def file_sha256(paths: Path | Sequence[Path]) -> str:
    """Content hash of a data file (of several: theirs, comma-separated), logged so runs on the same data can be
    matched."""
    return ",".join(hashlib.sha256(path.read_bytes()).hexdigest() for path in data_files(paths))


def split_off_dev(records: list, fraction: float, seed: int) -> tuple[list, list]:
    """Hold out a seeded fraction (at least one record) of the records for evaluation."""
    if len(records) < 2:
        raise DataError("cannot hold out a dev set from a single record: pass --dev-dataset")
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    dev_count = min(len(records) - 1, max(1, round(len(records) * fraction)))
    dev_indices = set(order[:dev_count])
    train = [r for i, r in enumerate(records) if i not in dev_indices]
    dev = [r for i, r in enumerate(records) if i in dev_indices]
    return train, dev
