"""scripts/prepare_data.py and scripts/prepare_balanced_data.py on the small samples in tests/data."""

import json
import shutil
from pathlib import Path

from conftest import run_script
from shared.data import sources
from shared.data.records import read_records

DATA = Path(__file__).resolve().parent / "data"
PREPARE = "scripts/prepare_data.py"
BALANCED = "scripts/prepare_balanced_data.py"


def prepare(tmp_path: Path, *args, name: str = "out.json") -> list[dict[str, str]]:
    output = tmp_path / name
    result = run_script(PREPARE, *args, "--output", output)
    assert result.returncode == 0, result.stderr
    return read_records(output)


def test_io_maps_the_named_fields(tmp_path):
    io = ["--format", "io", "--input-field", "question", "--output-field", "answer"]
    records = prepare(tmp_path, "--dataset-id", DATA / "io_qa.jsonl", *io)
    assert records[0] == {"input": "What is the capital of France?", "output": "Paris"}
    assert len(records) == 3


def test_written_records_are_readable_by_others_as_any_new_file(tmp_path):
    """mkstemp's private 0600 would keep a container's user (another UID) from reading prepared data."""
    prepare(tmp_path, "--dataset-id", DATA / "alpaca.json", "--format", "alpaca")
    (tmp_path / "plain.json").write_text("[]")
    assert (tmp_path / "out.json").stat().st_mode & 0o777 == (tmp_path / "plain.json").stat().st_mode & 0o777
    assert (tmp_path / "out.json").stat().st_mode & 0o044 == 0o044


def test_alpaca_appends_the_input_only_when_there_is_one(tmp_path):
    records = prepare(tmp_path, "--dataset-id", DATA / "alpaca.json", "--format", "alpaca")
    assert records[0]["input"] == "Give three tips for staying healthy."
    assert records[1] == {"input": "Translate the sentence into French.\n\nThe cat sleeps.", "output": "Le chat dort."}


def test_humaneval_with_and_without_metadata_differ_only_by_the_comment_lines(tmp_path):
    plain = prepare(tmp_path, "--format", "humaneval", name="plain.json")
    meta = prepare(tmp_path, "--format", "humaneval", "--with-metadata", DATA / "humaneval_metadata.json")
    assert len(plain) == len(meta) == 164
    assert meta[0]["input"].startswith(
        "# @function has_close_elements\n# @algorithm nested-loop\n# @time O(n^2)\n# @space O(1)\n"
    )
    assert "# @" not in plain[0]["input"]
    stripped = ["".join(line for line in r["input"].splitlines(True) if not line.startswith("# @")) for r in meta]
    assert stripped == [r["input"] for r in plain]
    assert [r["output"] for r in meta] == [r["output"] for r in plain]
    assert meta[2] == plain[2]  # no metadata for this task: untouched


def paraphrase(tmp_path: Path, *flags) -> list[dict[str, str]]:
    return prepare(tmp_path, "--dataset-id", DATA / "paraphrase.json", "--format", "paraphrase", *flags)


def test_paraphrase_keeps_the_originals_and_the_chosen_buckets(tmp_path):
    records = paraphrase(tmp_path, "--buckets", "1-2")
    assert [r["input"].split("\n")[0] for r in records] == [
        "Name the largest planet in the solar system.",
        "which planet's the biggest one around here?",
        "Kindly identify the planet of greatest size in our solar system.",
        "Convert the temperature to Fahrenheit.",
        "To Fahrenheit:",
    ]
    assert records[4] == {"input": "To Fahrenheit:\n\n100 degrees Celsius", "output": "212 degrees Fahrenheit"}
    assert len(paraphrase(tmp_path, "--buckets", "1,3")) == 6
    assert len(paraphrase(tmp_path)) == 7


def test_paraphrase_answer_replaces_the_original_output(tmp_path):
    records = paraphrase(tmp_path, "--buckets", "1", "--use-paraphrase-answer")
    assert [r["output"] for r in records] == ["Jupiter", "That's Jupiter!", "212 degrees Fahrenheit", "212 F"]


def test_paraphrase_logs_counts_in_words(tmp_path):
    output = tmp_path / "p.json"
    result = run_script(PREPARE, "--dataset-id", DATA / "paraphrase.json", "--format", "paraphrase", "--output", output)
    assert f"Wrote 7 records (2 originals, 5 paraphrases) to {output}" in result.stdout


def test_several_dataset_ids_are_concatenated_in_order_with_counts_per_source(tmp_path):
    output = tmp_path / "both.json"
    paraphrases, alpaca = DATA / "paraphrase.json", tmp_path / "more.json"
    alpaca.write_text(json.dumps([{**row, "paraphrases": []} for row in json.loads(paraphrases.read_text())[:1]]))
    result = run_script(
        PREPARE, "--format", "paraphrase", "--dataset-id", paraphrases, "--dataset-id", alpaca, "--output", output
    )
    assert result.returncode == 0, result.stderr
    records = read_records(output)
    assert records[:7] == read_records_of(tmp_path, paraphrases) and len(records) == 8
    assert records[7]["input"] == "Name the largest planet in the solar system."
    assert result.stdout.splitlines() == [
        f"Wrote 8 records (3 originals, 5 paraphrases) to {output}",
        f"  {paraphrases}: 7 records (2 originals, 5 paraphrases)",
        f"  {alpaca}: 1 record (1 original, 0 paraphrases)",
    ]
    sidecar = json.loads(output.with_suffix(".meta.json").read_text())
    assert sidecar["sources"] == [str(paraphrases), str(alpaca)] and sidecar["records_per_source"] == [7, 1]


def read_records_of(tmp_path: Path, source: Path) -> list[dict[str, str]]:
    return prepare(tmp_path, "--dataset-id", source, "--format", "paraphrase", name="alone.json")


def test_a_bad_record_in_the_second_source_names_that_file(tmp_path):
    output = tmp_path / "out.json"
    bad = DATA / "alpaca_missing_output.json"
    result = run_script(
        PREPARE, "--format", "alpaca", "--dataset-id", DATA / "alpaca.json", "--dataset-id", bad, "--output", output
    )
    assert result.returncode == 1 and f"{bad}: record 1: field 'output' is missing" in result.stderr
    assert not output.exists()


def grouped_paraphrases(path: Path, originals: int) -> Path:
    """Originals tagged [g<i>], each with 1 to 4 paraphrases carrying the same tag: the groups are known."""
    rows = [
        {
            "instruction_original": f"[g{i}] original",
            "output": f"answer {i}",
            "paraphrases": [{"paraphrase": f"[g{i}] wording {k}", "bucket": k + 1} for k in range(1 + i % 4)],
        }
        for i in range(originals)
    ]
    path.write_text(json.dumps(rows))
    return path


def groups(records: list[dict[str, str]]) -> list[str]:
    return [record["input"].split("]")[0] + "]" for record in records]


def split_groups(tmp_path: Path, source: Path, seed: int, folder: str):
    train_file, dev_file = tmp_path / folder / "train.json", tmp_path / folder / "dev.json"
    split = ["--dev-output", dev_file, "--dev-fraction", 0.25, "--seed", seed]
    result = run_script(PREPARE, "--format", "paraphrase", "--dataset-id", source, "--output", train_file, *split)
    assert result.returncode == 0, result.stderr
    return result, read_records(train_file), read_records(dev_file)


def test_the_held_out_dev_set_keeps_every_original_with_all_its_paraphrases(tmp_path):
    source = grouped_paraphrases(tmp_path / "groups.json", 60)
    result, train_records, dev_records = split_groups(tmp_path, source, 3, "a")
    train, dev = groups(train_records), groups(dev_records)
    assert not set(train) & set(dev), "an original and its paraphrases land on one side only"
    assert len(set(dev)) == 15 and len(set(train)) == 45, "a quarter of the 60 originals is held out"
    sizes = {f"[g{i}]": 2 + i % 4 for i in range(60)}
    assert all(train.count(g) == sizes[g] for g in set(train)) and all(dev.count(g) == sizes[g] for g in set(dev))
    assert 0.15 < len(dev) / (len(dev) + len(train)) < 0.35
    assert f"Wrote {len(dev)} records (15 originals, {len(dev) - 15} paraphrases) to" in result.stdout
    assert split_groups(tmp_path, source, 3, "b")[1:] == (train_records, dev_records), "seeded"
    assert split_groups(tmp_path, source, 4, "c")[2] != dev_records


def test_dev_split_flags_need_dev_output(tmp_path):
    args = ["--format", "alpaca", "--dataset-id", DATA / "alpaca.json", "--output", tmp_path / "o.json"]
    result = run_script(PREPARE, *args, "--seed", 1)
    assert result.returncode == 2 and "pass --dev-output" in result.stderr


def test_buckets_found_and_kept_are_logged_and_recorded(tmp_path):
    output = tmp_path / "p.json"
    args = ["--dataset-id", DATA / "paraphrase.json", "--format", "paraphrase", "--output", output]
    result = run_script(PREPARE, *args, "--buckets", "1-5")
    assert result.returncode == 0, result.stderr
    assert "--buckets asks for 4, 5, which no paraphrase is in: kept 1, 2, 3 only" in result.stderr
    assert "Paraphrase buckets found: 1, 2, 3; kept: 1, 2, 3" in result.stderr
    sidecar = json.loads((tmp_path / "p.meta.json").read_text())
    assert sidecar["buckets"] == {"asked": [1, 2, 3, 4, 5], "found": [1, 2, 3], "kept": [1, 2, 3]}
    assert sources.preparation_params(output) == {
        "prepared_format": "paraphrase",
        "prepared_sources": str(DATA / "paraphrase.json"),
        "prepared_buckets_asked": "1,2,3,4,5",
        "prepared_buckets_found": "1,2,3",
        "prepared_buckets_kept": "1,2,3",
    }
    output.write_text(output.read_text().replace("Jupiter", "Saturn"))
    assert sources.preparation_params(output) == {}, "a sidecar that no longer describes the file is not used"


def test_buckets_that_keep_no_paraphrase_are_refused(tmp_path):
    output = tmp_path / "p.json"
    args = ["--dataset-id", DATA / "paraphrase.json", "--format", "paraphrase", "--output", output]
    result = run_script(PREPARE, *args, "--buckets", "4-5")
    assert result.returncode == 1
    assert f"{DATA / 'paraphrase.json'}: no paraphrase is in bucket 4, 5 (--buckets); found: 1, 2, 3" in result.stderr
    assert not output.exists()


def test_tatqa_one_record_per_question_with_table_paragraphs_and_derivation(tmp_path):
    records = prepare(tmp_path, "--dataset-id", DATA / "tatqa.json", "--format", "tatqa")
    assert len(records) == 3
    assert " | 2019 | 2018\nRevenue | 5,310 | 4,825\n" in records[0]["input"]
    assert "Revenue grew on higher subscription sales" in records[0]["input"]
    assert records[0]["input"].endswith("Question: What was the change in revenue from 2018 to 2019?")
    assert records[0]["output"] == "485 thousand\n\nDerivation: 5,310 - 4,825"
    assert records[1]["output"] == "2019, 2018"
    assert records[2]["output"] == "higher subscription sales in North America"


def test_parquet_input_and_split_slicing(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [json.loads(line) for line in (DATA / "io_qa.jsonl").read_text().splitlines()]
    parquet = tmp_path / "qa.parquet"
    pq.write_table(pa.Table.from_pylist(rows), parquet)
    io = ["--format", "io", "--input-field", "question", "--output-field", "answer"]
    records = prepare(tmp_path, "--dataset-id", parquet, "--split", "train[:2]", *io)
    assert [r["output"] for r in records] == ["Paris", "cba"]


def test_a_missing_field_names_file_record_and_field_and_writes_nothing(tmp_path):
    output = tmp_path / "out.json"
    source = DATA / "alpaca_missing_output.json"
    result = run_script(PREPARE, "--dataset-id", source, "--format", "alpaca", "--output", output)
    assert result.returncode == 1
    assert f"{source}: record 1: field 'output' is missing" in result.stderr
    assert "Traceback" not in result.stderr
    assert not output.exists()


def test_an_uncached_hub_dataset_is_a_clear_error(tmp_path):
    output = tmp_path / "out.json"
    env = {"HF_DATASETS_OFFLINE": "1", "HF_HOME": tmp_path / "hf", "HF_DATASETS_CACHE": tmp_path / "hf" / "d"}
    result = run_script(PREPARE, "--dataset-id", "nobody/not-a-dataset", "--format", "io", "--output", output, env=env)
    assert result.returncode == 1
    assert "'nobody/not-a-dataset' is not in the local cache" in result.stderr
    assert "Traceback" not in result.stderr
    assert not output.exists()


def cache_as_hub_dataset(source: Path, dataset_id: str, cache: Path) -> None:
    """Lay out SOURCE in CACHE the way `datasets` keeps a hub dataset it downloaded once: datasets' own json
    builder writes the Arrow file and dataset_info.json, placed at `{org}___{name}/default/0.0.0/{hash}/` under
    the name `{name}-train.arrow`. (No hub can be reached here to download a real one.)"""
    import datasets

    builder = datasets.load_dataset_builder("json", data_files={"train": str(source)}, cache_dir=str(cache / "build"))
    builder.download_and_prepare()
    org, name = dataset_id.split("/")
    built = Path(builder.cache_dir)
    target = cache / f"{org}___{name}" / "default" / "0.0.0" / built.name
    shutil.copytree(built, target, ignore=shutil.ignore_patterns("*.lock"))
    (target / "json-train.arrow").rename(target / f"{name}-train.arrow")


def test_a_cached_hub_dataset_is_read_offline(tmp_path):
    cache, output = tmp_path / "hf" / "datasets", tmp_path / "out.json"
    cache_as_hub_dataset(DATA / "io_qa.jsonl", "nobody/cached-qa", cache)
    env = {"HF_DATASETS_OFFLINE": "1", "HF_HOME": tmp_path / "hf", "HF_DATASETS_CACHE": cache}
    result = run_script(
        PREPARE, "--dataset-id", "nobody/cached-qa", "--split", "train[:2]", "--format", "io",
        "--input-field", "question", "--output-field", "answer", "--output", output, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    source = [json.loads(line) for line in (DATA / "io_qa.jsonl").read_text().splitlines()][:2]
    assert read_records(output) == [{"input": r["question"], "output": r["answer"]} for r in source]


def balanced(tmp_path: Path, name: str, generic: int, algorithmic: int, seed: int):
    output = tmp_path / name
    args = ["--dataset-id", DATA / "opencodeinstruct.jsonl", "--generic-count", generic]
    args += ["--algorithmic-count", algorithmic, "--seed", seed, "--output", output]
    return run_script(BALANCED, *args), output


def domains_of(records: list[dict[str, str]]) -> list[str]:
    rows = [json.loads(line) for line in (DATA / "opencodeinstruct.jsonl").read_text().splitlines()]
    by_input = {row["input"]: row["domain"] for row in rows}
    return [by_input[r["input"]] for r in records]


def test_balanced_sampling_has_exact_counts_and_is_seeded(tmp_path):
    first, a = balanced(tmp_path, "a.json", 3, 2, seed=1)
    _, b = balanced(tmp_path, "b.json", 3, 2, seed=1)
    _, c = balanced(tmp_path, "c.json", 3, 2, seed=2)
    assert first.returncode == 0, first.stderr
    domains = domains_of(read_records(a))
    assert (domains.count("generic"), domains.count("algorithmic")) == (3, 2)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()


def test_balanced_sampling_refuses_too_few_rows(tmp_path):
    result, output = balanced(tmp_path, "x.json", 2, 5, seed=0)
    assert result.returncode == 1
    assert "asked for 5 rows with domain 'algorithmic' but the split has only 4" in result.stderr
    assert "Traceback" not in result.stderr
    assert not output.exists()
