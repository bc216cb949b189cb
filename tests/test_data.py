"""Reading, validating, rendering and tokenizing {input, output} records."""

import json
import logging

import pytest
from transformers import AutoTokenizer

from conftest import run_script
from shared.data.batching import ALPACA_PROMPT, IGNORE_INDEX, batch_collator, render, tokenize_records
from shared.data.records import DataError, file_sha256, read_records, split_off_dev

GOOD = [{"input": "a", "output": "b"}, {"input": "c", "output": "d", "extra": 1}]


def write(tmp_path, name, content: str | bytes):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def test_reads_a_json_list_and_jsonl_alike(tmp_path):
    as_json = read_records(write(tmp_path, "d.json", json.dumps(GOOD)))
    as_jsonl = read_records(write(tmp_path, "d.jsonl", "\n".join(json.dumps(r) for r in GOOD) + "\n\n"))
    assert as_json == as_jsonl == GOOD


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("bad.json", "[{", "not valid JSON"),
        ("obj.json", json.dumps({"input": "a", "output": "b"}), "expected a JSON list of records, found a dict"),
        ("empty.json", "[]", "the dataset is empty"),
        ("missing.json", json.dumps([GOOD[0], {"input": "x"}]), "record 1: field 'output' is missing"),
        (
            "null.json",
            json.dumps([{"input": None, "output": "y"}]),
            "record 0: field 'input' must be a string, found null",
        ),
        (
            "number.json",
            json.dumps([GOOD[0], GOOD[0], {"input": "x", "output": 3}]),
            "record 2: field 'output' must be a string, found int",
        ),
        ("list.json", json.dumps([["a", "b"]]), "record 0 is a list"),
        ("broken.jsonl", json.dumps(GOOD[0]) + "\n{oops\n", "line 2 is not valid JSON"),
        ("latin1.json", '[{"input": "caf\xe9", "output": "b"}]'.encode("latin-1"), "not UTF-8 text"),
    ],
)
def test_bad_files_are_refused_naming_file_record_and_field(tmp_path, name, content, expected):
    path = write(tmp_path, name, content)
    with pytest.raises(DataError) as err:
        read_records(path)
    assert str(path) in err.value.message
    assert expected in err.value.message


def test_several_files_are_read_in_the_order_given_each_count_logged(tmp_path, caplog):
    first = write(tmp_path, "a.json", json.dumps(GOOD))
    second = write(tmp_path, "b.jsonl", json.dumps({"input": "e", "output": "f"}) + "\n")
    with caplog.at_level(logging.INFO, logger="shared.data.records"):
        records = read_records((first, second))
    assert records == [*GOOD, {"input": "e", "output": "f"}]
    assert f"{first}: 2 records" in caplog.text and f"{second}: 1 records" in caplog.text
    assert read_records((second, first))[0] == {"input": "e", "output": "f"}
    assert file_sha256((first, second)) == f"{file_sha256(first)},{file_sha256(second)}"


def test_a_bad_file_among_several_is_named_with_its_record_and_field(tmp_path):
    good = write(tmp_path, "a.json", json.dumps(GOOD))
    bad = write(tmp_path, "b.json", json.dumps([GOOD[0], {"input": "x", "output": 3}]))
    with pytest.raises(DataError, match=f"^{bad}: record 1: field 'output' must be a string, found int$"):
        read_records((good, bad))


def test_dev_split_is_seeded_disjoint_and_complete():
    records = [{"input": str(i), "output": str(i)} for i in range(50)]
    train, dev = split_off_dev(records, 0.1, seed=7)
    assert len(dev) == 5 and len(train) == 45
    assert sorted(r["input"] for r in train + dev) == sorted(r["input"] for r in records)
    assert split_off_dev(records, 0.1, seed=7) == (train, dev)
    assert split_off_dev(records, 0.1, seed=8)[1] != dev


def test_dev_split_needs_two_records():
    with pytest.raises(DataError, match="--dev-dataset"):
        split_off_dev([GOOD[0]], 0.1, seed=0)


@pytest.fixture(scope="module")
def qwen_tokenizer(tiny_qwen2):
    return AutoTokenizer.from_pretrained(tiny_qwen2)


@pytest.fixture(scope="module")
def llama_tokenizer(tiny_llama):
    return AutoTokenizer.from_pretrained(tiny_llama)


def test_loss_covers_the_output_and_end_of_turn_only(qwen_tokenizer):
    records = [{"input": "Spell in words: 1 2", "output": "one two"}]
    data = tokenize_records(records, qwen_tokenizer, max_length=256, name="t").dataset[0]
    prompt_text, answer_text = render(qwen_tokenizer, "Spell in words: 1 2", "one two")
    prompt_len = len(qwen_tokenizer(prompt_text, add_special_tokens=False)["input_ids"])
    assert data["labels"][:prompt_len] == [IGNORE_INDEX] * prompt_len
    assert data["labels"][prompt_len:] == data["input_ids"][prompt_len:]
    assert qwen_tokenizer.decode(data["labels"][prompt_len:]) == answer_text
    assert answer_text.startswith("one two<|im_end|>")
    assert prompt_text.endswith("<|im_start|>assistant\n")


def test_template_bos_is_not_doubled(llama_tokenizer):
    data = tokenize_records([{"input": "hi", "output": "there"}], llama_tokenizer, 256, "t").dataset[0]
    assert data["input_ids"][0] == llama_tokenizer.bos_token_id
    assert data["input_ids"][1] != llama_tokenizer.bos_token_id


def test_falls_back_to_alpaca_prompt_without_chat_template(tiny_qwen2):
    tokenizer = AutoTokenizer.from_pretrained(tiny_qwen2)
    tokenizer.chat_template = None
    prompt, answer = render(tokenizer, "Add 1 and 2", "3")
    assert prompt == ALPACA_PROMPT.format(input="Add 1 and 2")
    assert answer == "3" + tokenizer.eos_token
    data = tokenize_records([{"input": "Add 1 and 2", "output": "3"}], tokenizer, 256, "t").dataset[0]
    trained = [t for t, label in zip(data["input_ids"], data["labels"], strict=True) if label != IGNORE_INDEX]
    assert tokenizer.decode(trained) == "3" + tokenizer.eos_token


def test_long_records_are_truncated_or_dropped_and_counted(qwen_tokenizer):
    records = [
        {"input": "short", "output": "fine"},
        {"input": "short", "output": " ".join(["word"] * 200)},
        {"input": " ".join(["word"] * 200), "output": "never seen"},
    ]
    data = tokenize_records(records, qwen_tokenizer, max_length=64, name="t")
    assert (data.kept, data.truncated, data.dropped) == (1, 1, 1)
    assert len(data.dataset) == 2
    assert max(len(ids) for ids in data.dataset["input_ids"]) == 64


def test_all_records_dropped_is_an_error(qwen_tokenizer):
    with pytest.raises(DataError, match="every record is longer than --max-length 8"):
        tokenize_records([{"input": " ".join(["word"] * 50), "output": "x"}], qwen_tokenizer, 8, "dev data")


def test_collator_pads_labels_with_the_ignore_index(qwen_tokenizer):
    data = tokenize_records(
        [{"input": "a", "output": "b"}, {"input": "a longer prompt", "output": "b c d"}], qwen_tokenizer, 256, "t"
    )
    batch = batch_collator(qwen_tokenizer, packing=False)([data.dataset[0], data.dataset[1]])
    short = len(data.dataset[0]["input_ids"])
    assert batch["input_ids"].shape == batch["labels"].shape
    assert (batch["labels"][0, short:] == IGNORE_INDEX).all()
    assert (batch["attention_mask"][0, short:] == 0).all()
    assert batch["attention_mask"][1].all()


def test_packed_batch_is_one_row_with_restarting_positions_and_counts_no_padding(qwen_tokenizer):
    data = tokenize_records(
        [{"input": "a", "output": "b"}, {"input": "a longer prompt", "output": "b c d"}], qwen_tokenizer, 256, "t"
    )
    lengths = [len(ids) for ids in data.dataset["input_ids"]]
    collator = batch_collator(qwen_tokenizer, packing=True)
    batch = collator([data.dataset[0], data.dataset[1]])
    assert batch["input_ids"].shape == (1, sum(lengths)) and "attention_mask" not in batch
    assert batch["position_ids"][0].tolist() == list(range(lengths[0])) + list(range(lengths[1]))
    assert batch["labels"][0, lengths[0]] == IGNORE_INDEX, "no label crosses from one sequence into the next"
    assert (collator.real_tokens, collator.padding_tokens) == (sum(lengths), 0)
    padded = batch_collator(qwen_tokenizer, packing=False)
    padded([data.dataset[0], data.dataset[1]])
    assert (padded.real_tokens, padded.padding_tokens) == (sum(lengths), max(lengths) - min(lengths))


def test_tokenization_is_cached_on_disk_and_keyed_by_its_inputs(qwen_tokenizer, tmp_path, caplog):
    records = [{"input": f"question {i}", "output": f"answer {i}"} for i in range(20)]
    first = tokenize_records(records, qwen_tokenizer, 256, "t", cache_dir=tmp_path)
    with caplog.at_level("INFO", logger="shared.data.batching"):
        again = tokenize_records(records, qwen_tokenizer, 256, "t", cache_dir=tmp_path)
    assert "reusing the tokenization cached in" in caplog.text
    assert again.dataset["input_ids"] == first.dataset["input_ids"]
    cached = {f["filename"] for f in first.dataset.cache_files}
    assert cached == {f["filename"] for f in again.dataset.cache_files}
    shorter = tokenize_records(records, qwen_tokenizer, len(first.dataset[0]["input_ids"]) - 1, "t", cache_dir=tmp_path)
    assert not cached & {f["filename"] for f in shorter.dataset.cache_files}, "another max length, another entry"
    assert shorter.truncated > 0


def test_a_bad_file_among_several_is_refused_before_anything_runs(tmp_path, tiny_qwen2, synthetic_dataset):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"input": "a", "output": "b"}, {"input": "c"}]))
    result = run_script(
        "methods/lora/train.py", "--base-model", tiny_qwen2, "--dataset", synthetic_dataset, "--dataset", bad,
        "--output-dir", tmp_path / "out", "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 1
    assert f"{bad}: record 1: field 'output' is missing" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "out").exists()
