"""Source dataset formats to {input, output} training records: one pure converter per format.

A converter takes one source record and returns the training records it yields. A required field that is
missing (or null) raises MissingField naming it; the scripts add the file and the record index.
"""

import re
from collections.abc import Callable, Iterable
from typing import Any

from shared.data.records import DataError, validate_record

Record = dict[str, str]


class MissingField(Exception):
    """A source record lacks a field its format requires; `field` is its name, with a path for nested ones."""

    def __init__(self, field: str):
        super().__init__(field)
        self.field = field


def require(record: Any, field: str, where: str = "") -> Any:
    if not isinstance(record, dict) or record.get(field) is None:
        raise MissingField(f"{where}{field}")
    return record[field]


def _with_input(instruction: str, extra: Any) -> str:
    return f"{instruction}\n\n{extra}" if extra else instruction


def convert_io(record: dict, input_field: str = "input", output_field: str = "output") -> list[Record]:
    return [{"input": require(record, input_field), "output": require(record, output_field)}]


def convert_alpaca(record: dict) -> list[Record]:
    instruction = require(record, "instruction")
    return [{"input": _with_input(instruction, record.get("input")), "output": require(record, "output")}]


def parse_buckets(spec: str) -> set[int]:
    """'1-3' -> {1, 2, 3}; '1,2,5' -> {1, 2, 5}; both may be mixed ('1-2,5')."""
    buckets: set[int] = set()
    for part in spec.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not match:
            raise ValueError(f"bad bucket list {spec!r}: expected numbers and ranges such as '1-3' or '1,2,5'")
        low, high = int(match[1]), int(match[2] or match[1])
        if low > high:
            raise ValueError(f"bad bucket range {part.strip()!r}: the start exceeds the end")
        buckets.update(range(low, high + 1))
    return buckets


def paraphrase_buckets(rows: Iterable[dict]) -> set[int]:
    """The buckets the paraphrases of already converted (so well-formed) paraphrase rows fall in."""
    return {int(item["bucket"]) for row in rows for item in row["paraphrases"]}


def convert_paraphrase(
    record: dict, buckets: set[int] | None = None, use_paraphrase_answer: bool = False
) -> list[Record]:
    """The original instruction always, then each paraphrase in `buckets` (all when None) in its place."""
    extra = record.get("input")
    output = require(record, "output")
    records = [{"input": _with_input(require(record, "instruction_original"), extra), "output": output}]
    for index, item in enumerate(require(record, "paraphrases")):
        where = f"paraphrases[{index}]."
        bucket = require(item, "bucket", where)
        try:
            bucket = int(bucket)
        except (TypeError, ValueError):
            raise MissingField(f"{where}bucket (not a number: {bucket!r})") from None
        if buckets is not None and bucket not in buckets:
            continue
        answer = require(item, "answer", where) if use_paraphrase_answer else output
        records.append({"input": _with_input(require(item, "paraphrase", where), extra), "output": answer})
    return records


def render_table(rows: list[list[Any]]) -> str:
    return "\n".join(" | ".join(str(cell).strip() for cell in row) for row in rows)


def tatqa_answer(question: dict, where: str = "") -> str:
    """The answer as text (list items joined with ', ', the scale appended), then the derivation when given."""
    answer = require(question, "answer", where)
    text = ", ".join(str(a) for a in answer) if isinstance(answer, list) else str(answer)
    if question.get("scale"):
        text = f"{text} {question['scale']}"
    if question.get("derivation"):
        text = f"{text}\n\nDerivation: {question['derivation']}"
    return text


def convert_tatqa(record: dict) -> list[Record]:
    """One record per question: the table as pipe-separated rows, the paragraphs, then the question."""
    table = render_table(require(require(record, "table"), "table", "table."))
    texts = [require(p, "text", f"paragraphs[{i}].") for i, p in enumerate(record.get("paragraphs") or [])]
    paragraphs = "\n".join(texts)
    context = f"Table:\n{table}" + (f"\n\nParagraphs:\n{paragraphs}" if paragraphs else "")
    records = []
    for index, question in enumerate(require(record, "questions")):
        where = f"questions[{index}]."
        text = require(question, "question", where)
        records.append({"input": f"{context}\n\nQuestion: {text}", "output": tatqa_answer(question, where)})
    return records


def metadata_comments(metadata: dict[str, Any]) -> str:
    """'# @key value' lines in the metadata's own key order (as written in its file), so reruns match."""
    lines = []
    for key, value in metadata.items():
        text = ", ".join(map(str, value)) if isinstance(value, list) else str(value)
        lines.append(f"# @{key} {text}".rstrip())
    return "".join(line + "\n" for line in lines)


def convert_humaneval(problem: dict, metadata: dict[str, Any] | None = None) -> list[Record]:
    prompt = require(problem, "prompt")
    return [{"input": metadata_comments(metadata or {}) + prompt, "output": require(problem, "canonical_solution")}]


PROGRESS_FROM = 1000  # rows; smaller conversions finish before a bar would be read


def convert_rows(
    source: str, rows: list, converter: Callable[[dict], list[Record]], indices: Iterable[int] | None = None
) -> list[Record]:
    """Convert rows (those at `indices`, by default all), naming the source, the row index and the field of the
    first bad one; every record is checked as training will check it."""
    from tqdm import tqdm

    indices = list(range(len(rows)) if indices is None else indices)
    records = []
    for index in tqdm(indices, desc="Converting", unit="row", disable=len(indices) < PROGRESS_FROM):
        row = rows[index]
        if not isinstance(row, dict):
            raise DataError(f"{source}: record {index} is a {type(row).__name__}, expected an object")
        try:
            converted = converter(row)
        except MissingField as err:
            raise DataError(f"{source}: record {index}: field '{err.field}' is missing") from None
        for record in converted:
            validate_record(source, index, record)
        records.extend(converted)
    return records
