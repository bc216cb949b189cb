"""From records to batches: render each record as a prompt and an answer, tokenize, collate.

Loss is computed on the output tokens only: prompt tokens carry the label -100.
"""

import copy
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from shared.data.records import DataError

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
TOKENIZATION_VERSION = 1  # part of the tokenization cache key: bump when `tokenize_records` changes its output
ALPACA_PROMPT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{input}\n\n### Response:\n"
)


def data_order_sha256(loader) -> str | None:
    """Digest of the training records (their token ids) in the order a training dataloader's first epoch presents
    them: equal for two runs that see the same records in the same order, whatever their method, batching or
    stopping step. None for a sampler whose order cannot be read without disturbing it."""
    sampler = loader.batch_sampler
    while hasattr(sampler, "batch_size"):  # batch samplers, sharded or not, wrap the sampler of records
        sampler = getattr(sampler, "sampler", None) or getattr(sampler, "batch_sampler", None)
    if not hasattr(sampler, "set_epoch") or not hasattr(sampler, "initial_seed"):
        return None  # a plain RandomSampler draws from the global RNG: reading it would change the training order
    probe = copy.copy(sampler)  # reseeds itself from initial_seed + epoch on every pass; the original is untouched
    probe.set_epoch(0)
    digest = hashlib.sha256()
    for index in probe:
        digest.update(json.dumps(loader.dataset[index]["input_ids"]).encode())
    return digest.hexdigest()


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


def tokenize_records(
    records: list[dict[str, str]], tokenizer, max_length: int, name: str, cache_dir: Path | None = None
) -> TokenizedData:
    """Tokenize records into input_ids/attention_mask/labels; truncate the output or drop the record when too long.

    The result is cached on disk (default: under the datasets cache), keyed by the records, the tokenizer and
    the settings, so every method of a comparison reuses one tokenization.
    """
    import datasets
    from datasets import Dataset
    from datasets.fingerprint import Hasher

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

    pairs = [{"input": r["input"], "output": r["output"]} for r in records]
    cache_dir = Path(cache_dir or datasets.config.HF_DATASETS_CACHE) / "peft-workbench-tokenized"
    cache_file = cache_dir / f"{Hasher.hash([pairs, encode, TOKENIZATION_VERSION])}.arrow"
    if cache_file.is_file():
        log.info("%s: reusing the tokenization cached in %s", name, cache_file)
    cache_dir.mkdir(parents=True, exist_ok=True)
    raw = Dataset.from_list(pairs)
    encoded = raw.map(
        encode,
        batched=True,
        remove_columns=raw.column_names,
        cache_file_name=str(cache_file),
        desc=f"Tokenizing {name}",
    )
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


def batch_collator(tokenizer, packing: bool, bounded_rows: bool = False) -> "TokenCountingCollator":
    """Padding-free batches (one row, position ids restarting per sequence), or each batch padded to its longest.

    Packed rows carry no attention mask: transformers builds a block-diagonal one from the restarting position
    ids, so no sequence attends to another. That holds only without a KV cache (`use_cache=False`).
    With `bounded_rows`, packing fills several rows no longer than the batch's longest sequence instead of one.
    """
    from transformers import DataCollatorForSeq2Seq, DataCollatorWithFlattening

    flatten = DataCollatorWithFlattening(return_position_ids=True, separator_id=IGNORE_INDEX)
    if packing and bounded_rows:
        return TokenCountingCollator(BoundedRowPacker(flatten, tokenizer.pad_token_id))
    if packing:
        return TokenCountingCollator(flatten)
    return TokenCountingCollator(DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX))


class BoundedRowPacker:
    """Packs a batch into rows no longer than its longest sequence (first fit, longest first), padded to that length.

    Dense attention (SDPA, eager) costs the square of a row's length whatever the block-diagonal mask leaves out, so
    one row of the whole batch costs more than the padding it saves; rows bounded this way cost at most what a
    padded batch does. The padding at a row's end is a sequence of its own (positions restart at 0, labels ignored),
    so no real token attends to it.
    """

    def __init__(self, flatten: Callable[[list[dict]], dict], pad_token_id: int) -> None:
        self.flatten = flatten
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict]) -> dict:
        import torch

        width = max(len(feature["input_ids"]) for feature in features)
        rows: list[list[dict]] = []
        room: list[int] = []
        for feature in sorted(features, key=lambda f: len(f["input_ids"]), reverse=True):
            size = len(feature["input_ids"])
            row = next((i for i, left in enumerate(room) if left >= size), None)
            if row is None:
                rows.append([])
                room.append(width)
                row = len(rows) - 1
            rows[row].append(feature)
            room[row] -= size
        columns = {"input_ids": [], "position_ids": [], "labels": []}
        fill = {"input_ids": self.pad_token_id, "labels": IGNORE_INDEX}
        for members, left in zip(rows, room, strict=True):
            packed = self.flatten(members)
            for key, row_values in columns.items():
                tail = torch.arange(left) if key == "position_ids" else torch.full((left,), fill[key])
                row_values.append(torch.cat([packed[key][0], tail.to(packed[key].dtype)]))
        return {key: torch.stack(values) for key, values in columns.items()}


class TokenCountingCollator:
    """Counts the real and padding tokens of the batches it builds, so the waste is visible.

    The counts live in the process that collates: with dataloader workers they stay zero here.
    """

    def __init__(self, collate: Callable[[list[dict]], dict]) -> None:
        self.collate = collate
        self.real_tokens = 0
        self.padding_tokens = 0
        self.last_shape: tuple[int, ...] | None = None  # of the latest batch: what an out-of-memory error names

    def __call__(self, features: list[dict]) -> dict:
        batch = self.collate(features)
        self.last_shape = tuple(batch["input_ids"].shape)
        real = sum(len(feature["input_ids"]) for feature in features)
        self.real_tokens += real
        self.padding_tokens += batch["input_ids"].numel() - real
        return batch
