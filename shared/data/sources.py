"""Where preparation reads source rows (local JSON/JSONL/Parquet files, cached Hugging Face datasets), which rows
it holds out, and how it writes training records (atomically, so a failure leaves no partial file) with a sidecar
that says how they were made.
"""

import json
import logging
import os
import random
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import click

from shared.data.records import DataError, data_files, file_sha256, read_json_rows

log = logging.getLogger(__name__)

LOCAL_SUFFIXES = {".json", ".jsonl", ".parquet"}


def load_rows(dataset_id: str, split: str) -> list[dict]:
    """Rows of a local JSON/JSONL/Parquet file or of a cached Hugging Face dataset; `split` may slice."""
    path = Path(dataset_id)
    if path.suffix in LOCAL_SUFFIXES or path.exists():
        return slice_rows(_read_local(path), split, str(path))
    return _load_cached(dataset_id, split)


def slice_rows(rows: list, split: str, source: str) -> list:
    """Apply the slice of a split spec like 'train[:5000]' or 'train[10%:]'; the split name itself is ignored."""
    from datasets import ReadInstruction

    try:
        instruction = ReadInstruction.from_spec(split)
        absolutes = instruction.to_absolute({_split_name(split): len(rows)})
    except (ValueError, AssertionError, KeyError) as err:
        raise click.BadParameter(f"{split!r} is not a split spec such as 'train' or 'train[:100]' ({err})") from None
    if len(absolutes) != 1:
        raise click.BadParameter(f"{split!r}: a local file has one split; combining splits is not supported")
    rows = rows[absolutes[0].from_ : absolutes[0].to]
    if not rows:
        raise DataError(f"{source}: split {split!r} selects no records")
    return rows


def _split_name(split: str) -> str:
    return split.split("[", 1)[0].strip()


def _read_local(path: Path) -> list[dict]:
    # Not datasets' json loader: Arrow refuses columns whose type varies between records (TAT-QA answers are
    # strings, numbers or lists) and would fill missing fields with null.
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    return read_json_rows(path)


def _load_cached(dataset_id: str, split: str) -> list[dict]:
    import datasets

    try:
        dataset = datasets.load_dataset(dataset_id, split=split)
    except ValueError as err:
        if "split" in str(err).lower():
            raise DataError(f"{dataset_id}: bad split {split!r}: {err}") from None
        raise DataError(f"{dataset_id}: {err}") from None
    except Exception as err:  # offline misses surface as several exception types across datasets versions
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(
            f"dataset {dataset_id!r} is not in the local cache and the hub cannot be reached; download it once with "
            f"network access, or pass a local JSON/JSONL/Parquet file ({type(err).__name__}: {first_line})"
        ) from None
    return dataset.to_list()


def write_records(records: Iterable[dict[str, str]], output: Path) -> None:
    """Write a JSON list atomically: a temporary file in the same folder, renamed into place."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            json.dump(list(records), stream, indent=1, ensure_ascii=False)
            stream.write("\n")
        # mkstemp makes the file private (0600); the records get the permissions any new file gets, so that a
        # container's user, or a colleague, can read them.
        os.chmod(temp, 0o666 & ~current_umask())
        os.replace(temp, output)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def hold_out(sizes: list[int], fraction: float, seed: int) -> list[set[int]]:
    """A seeded `fraction` (at least one, never all) of the rows of several sources, as row indices per source.

    Rows, not records, are drawn: every record a row yields (an original and its paraphrases, a table's
    questions) lands on the same side, so no dev prompt is a rewording of a training one.
    """
    rows = [(source, index) for source, size in enumerate(sizes) for index in range(size)]
    if len(rows) < 2:
        raise DataError("cannot hold out a dev set from a single source row")
    count = min(len(rows) - 1, max(1, round(len(rows) * fraction)))
    chosen: list[set[int]] = [set() for _ in sizes]
    for source, index in random.Random(seed).sample(rows, count):
        chosen[source].add(index)
    return chosen


def sidecar_path(records_file: Path) -> Path:
    """Where the account of how a records file was prepared lives: `train.json` -> `train.meta.json`."""
    return Path(records_file).with_suffix(".meta.json")


def write_sidecar(records_file: Path, preparation: dict) -> Path:
    """Write `preparation` beside `records_file`, with the file's sha256 so a reader can tell it describes it."""
    path = sidecar_path(records_file)
    path.write_text(json.dumps({**preparation, "sha256": file_sha256(records_file)}, indent=1) + "\n", encoding="utf-8")
    return path


def preparation_params(records_files: Path | Sequence[Path]) -> dict[str, str]:
    """How the records files were prepared, as `prepared_*` run params; several files give each key their values
    in file order, separated by '; ' ('-' for a file without it); none for a file without a sidecar or changed
    since."""
    described = [_preparation_params(path) for path in data_files(records_files)]
    if len(described) == 1:
        return described[0]
    keys = dict.fromkeys(key for params in described for key in params)
    return {key: "; ".join(params.get(key, "-") for params in described) for key in keys}


def _preparation_params(records_file: Path) -> dict[str, str]:
    path = sidecar_path(records_file)
    if not path.is_file():
        return {}
    preparation = json.loads(path.read_text(encoding="utf-8"))
    if preparation.get("sha256") != file_sha256(records_file):
        log.warning("%s does not describe %s any more (the records changed since): not logged", path, records_file)
        return {}
    params = {"prepared_format": preparation["format"], "prepared_sources": ", ".join(preparation["sources"])}
    for key, value in preparation.get("buckets", {}).items():
        params[f"prepared_buckets_{key}"] = ",".join(map(str, value))
    return params
