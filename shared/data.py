"""Training data: read and validate {input, output} records, render them as prompts, tokenize, batch.

Loss is computed on the output tokens only: prompt tokens carry the label -100.
"""

import hashlib
import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

log = logging.getLogger(__name__)

REQUIRED_FIELDS = ("input", "output")
IGNORE_INDEX = -100
ALPACA_PROMPT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{input}\n\n### Response:\n"
)


class DataError(click.ClickException):
    """A data file that cannot be used; the message names the file, the record and the field."""


def read_records(path: Path) -> list[dict[str, str]]:
    """Read a JSON list or JSONL file of {input, output} records, refusing anything else with a clear error."""
    records = read_json_rows(path)
    if not records:
        raise DataError(f"{path}: the dataset is empty")
    for index, record in enumerate(records):
        validate_record(path, index, record)
    return records


def read_json_rows(path: Path) -> list[Any]:
    """The rows of a JSON list or a JSONL file (by suffix), with errors naming the file and the line."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text (bad byte at offset {err.start})") from None
    if path.suffix == ".jsonl":
        return _parse_jsonl(path, text)
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}") from None
    if not isinstance(rows, list):
        raise DataError(f"{path}: expected a JSON list of records, found a {type(rows).__name__}")
    return rows


def _parse_jsonl(path: Path, text: str) -> list[Any]:
    records = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise DataError(f"{path}: line {line_number} is not valid JSON: {err.msg}") from None
    return records


def validate_record(path: Path | str, index: int, record: Any) -> None:
    """Refuse a record that is not an object with string `input` and `output`, naming file, record and field."""
    if not isinstance(record, dict):
        raise DataError(
            f"{path}: record {index} is a {type(record).__name__}, expected an object with {REQUIRED_FIELDS}"
        )
    for field in REQUIRED_FIELDS:
        if field not in record:
            raise DataError(f"{path}: record {index}: field '{field}' is missing")
        if not isinstance(record[field], str):
            found = "null" if record[field] is None else type(record[field]).__name__
            raise DataError(f"{path}: record {index}: field '{field}' must be a string, found {found}")


def file_sha256(path: Path) -> str:
    """Content hash of a data file, logged so runs on the same data can be matched."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


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


def render(tokenizer, prompt: str, answer: str) -> tuple[str, str]:
    """Split one record into (prompt text, completion text) with the chat template, or Alpaca's without one.

    The completion carries the end-of-turn marker, so the model learns to stop.
    """
    if not tokenizer.chat_template:
        return ALPACA_PROMPT.format(input=prompt), answer + (tokenizer.eos_token or "")
    user = [{"role": "user", "content": prompt}]
    prompt_text = tokenizer.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
    full_text = tokenizer.apply_chat_template(user + [{"role": "assistant", "content": answer}], tokenize=False)
    if not full_text.startswith(prompt_text):
        raise click.ClickException(
            "the tokenizer's chat template renders a conversation that does not start with its own generation "
            "prompt, so the output tokens cannot be told apart; remove chat_template to use the Alpaca prompt"
        )
    return prompt_text, full_text[len(prompt_text) :]


@dataclass
class TokenizedData:
    dataset: Any
    kept: int
    truncated: int
    dropped: int


def tokenize_records(records: list[dict[str, str]], tokenizer, max_length: int, name: str) -> TokenizedData:
    """Tokenize records into input_ids/attention_mask/labels; truncate the output or drop the record when too long."""
    from datasets import Dataset

    # The chat template already writes the BOS token into the text; the Alpaca prompt does not.
    prompt_special_tokens = not tokenizer.chat_template

    def encode(batch: dict[str, list]) -> dict[str, list]:
        pairs = [render(tokenizer, i, o) for i, o in zip(batch["input"], batch["output"], strict=True)]
        prompts = tokenizer([p for p, _ in pairs], add_special_tokens=prompt_special_tokens)["input_ids"]
        answers = tokenizer([a for _, a in pairs], add_special_tokens=False)["input_ids"]
        out = {"input_ids": [], "attention_mask": [], "labels": [], "fate": []}
        for prompt_ids, answer_ids in zip(prompts, answers, strict=True):
            room = max_length - len(prompt_ids)
            fate = "dropped" if room <= 0 else "truncated" if len(answer_ids) > room else "kept"
            answer_ids = answer_ids[: max(room, 0)]
            out["input_ids"].append(prompt_ids + answer_ids)
            out["attention_mask"].append([1] * (len(prompt_ids) + len(answer_ids)))
            out["labels"].append([IGNORE_INDEX] * len(prompt_ids) + answer_ids)
            out["fate"].append(fate)
        return out

    raw = Dataset.from_list([{"input": r["input"], "output": r["output"]} for r in records])
    encoded = raw.map(encode, batched=True, remove_columns=raw.column_names, desc=f"Tokenizing {name}")
    fates = list(encoded["fate"])
    result = TokenizedData(
        dataset=encoded.filter(lambda fate: fate != "dropped", input_columns="fate").remove_columns("fate"),
        kept=fates.count("kept"),
        truncated=fates.count("truncated"),
        dropped=fates.count("dropped"),
    )
    log.info(
        "%s: %d records kept whole, %d truncated and %d dropped for exceeding --max-length %d",
        name,
        result.kept,
        result.truncated,
        result.dropped,
        max_length,
    )
    if not len(result.dataset):
        raise DataError(f"{name}: every record is longer than --max-length {max_length} before its output starts")
    return result


def padding_collator(tokenizer):
    """Pad each batch to its longest sequence; padded label positions are ignored by the loss."""
    from transformers import DataCollatorForSeq2Seq

    return DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX)
