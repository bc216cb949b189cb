"""Study specs: a bad spec is refused before anything trains, naming its key; a good one becomes the real flags."""

import json
import os
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, run_script
from shared.evaluate.contamination import contaminated_tasks
from shared.study.spec import DEFAULT_LEARNING_RATES, SpecError, load_command, load_spec


def model_folder(folder: Path) -> Path:
    """A folder the spec check takes for a model (it reads no weights)."""
    (folder / "model").mkdir(exist_ok=True)
    (folder / "model" / "config.json").write_text("{}")
    return folder / "model"


def write_spec(folder: Path, **changes) -> Path:
    (folder / "train.json").write_text(json.dumps([{"input": "a", "output": "b"}]))
    spec = {
        "name": "tiny",
        "base_model": str(model_folder(folder)),
        "dataset": str(folder / "train.json"),
        "evaluation": {"benchmark": "humaneval", "k": [1], "max_new_tokens": 8},
        "flags": {"max_steps": 4, "batch_size": 2, "packing": False},
        "methods": {"lora": {"learning_rates": [1e-3, 1e-2], "flags": {"lora_r": 4}}, "bitfit": None},
        "seeds": [2, 3],
    }
    for key, value in changes.items():
        if value is None:
            spec.pop(key)
        else:
            spec[key] = value
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_a_good_spec_becomes_each_scripts_own_flags(tmp_path):
    spec = load_spec(write_spec(tmp_path))
    lora, bitfit = spec.methods["lora"], spec.methods["bitfit"]
    assert lora.learning_rates == (1e-3, 1e-2)
    assert bitfit.learning_rates == DEFAULT_LEARNING_RATES["bitfit"], "a method without a grid gets its default"
    assert lora.arguments == ("--max-steps", "4", "--batch-size", "2", "--no-packing", "--lora-r", "4")
    assert bitfit.arguments == ("--max-steps", "4", "--batch-size", "2", "--no-packing")
    assert lora.launcher == (sys.executable,)
    assert spec.evaluation == ("--benchmark", "humaneval", "--k", "1", "--max-new-tokens", "8")
    assert (spec.sweep_seeds, spec.seeds, spec.experiment_name) == ((1,), (2, 3), "tiny")


@pytest.mark.parametrize(("value", "arguments"), [("auto", ("--bf16", "auto")), (True, ("--bf16", "true"))])
def test_bf16_is_a_switch_or_auto_in_a_spec(tmp_path, value, arguments):
    spec = load_spec(write_spec(tmp_path, flags={"bf16": value}))
    assert spec.methods["bitfit"].arguments == arguments


def test_numbers_written_as_yaml_1_1_strings_are_the_numbers_a_person_means(tmp_path):
    """YAML 1.1 reads 3e-3 (no dot) as a string: in a grid, a seed list or a flag it is still the number."""
    (tmp_path / "train.json").write_text(json.dumps([{"input": "a", "output": "b"}]))
    path = tmp_path / "spec.yaml"
    path.write_text(
        f"name: tiny\nbase_model: {model_folder(tmp_path)}\ndataset: {tmp_path / 'train.json'}\n"
        "evaluation: {benchmark: humaneval, max_new_tokens: 8e0}\n"
        "flags: {max_steps: 1e1, weight_decay: 1e-2, warmup_steps: 2.0}\n"
        "methods: {lora: {learning_rates: [3e-3, 3e-2]}}\n"
        "seeds: [2e0, '3']\n"
    )
    raw = yaml.safe_load(path.read_text())
    assert raw["methods"]["lora"]["learning_rates"] == ["3e-3", "3e-2"] and raw["flags"]["max_steps"] == "1e1"
    spec = load_spec(path)
    assert spec.methods["lora"].learning_rates == (3e-3, 3e-2)
    assert spec.methods["lora"].arguments == ("--max-steps", "10", "--weight-decay", "1e-2", "--warmup-steps", "2")
    assert spec.evaluation == ("--benchmark", "humaneval", "--max-new-tokens", "8")
    assert spec.seeds == (2, 3)


def test_an_option_given_several_times_is_a_list_in_a_spec(tmp_path):
    methods = {"bitfit": {"flags": {"trainable_pattern": ["norm", "embed"]}}}
    assert load_spec(write_spec(tmp_path, methods=methods)).methods["bitfit"].arguments[-4:] == (
        "--trainable-pattern", "norm", "--trainable-pattern", "embed",
    )  # fmt: skip
    with pytest.raises(SpecError, match="methods.bitfit.flags.trainable_pattern: expected a list, got 'norm'"):
        load_spec(write_spec(tmp_path, methods={"bitfit": {"flags": {"trainable_pattern": "norm"}}}))


def test_final_seeds_are_drawn_apart_from_the_sweep_seeds_unless_reuse_is_asked_for(tmp_path):
    assert load_spec(write_spec(tmp_path, seeds=None, sweep_seeds=[1, 3])).seeds == (2, 4, 5)
    assert load_spec(write_spec(tmp_path, seeds=None)).seeds == (2, 3, 4)
    with pytest.raises(SpecError, match="seeds: shares 1 with sweep_seeds: a final at a sweep seed reuses the sweep's"):
        load_spec(write_spec(tmp_path, seeds=[1, 2]))
    reused = load_spec(write_spec(tmp_path, seeds=[1, 2], reuse_sweep_seeds=True))
    assert (reused.sweep_seeds, reused.seeds) == ((1,), (1, 2))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"colour": "red"}, "colour: unknown key"),
        ({"methods": {"adalora": None}}, "methods.adalora: unknown method"),
        ({"methods": {"bitfit": {"flags": {"lora_r": 4}}}}, "methods.bitfit.flags.lora_r: methods/bitfit takes no"),
        ({"flags": {"warmup": 3}}, "flags.warmup: methods/lora takes no --warmup"),
        ({"flags": {"learning_rate": 1e-3}}, "flags.learning_rate: set by the study"),
        ({"flags": {"batch_size": "big"}}, "flags.batch_size: Invalid value for '--batch-size': 'big'"),
        ({"flags": {"packing": "yes"}}, "flags.packing: a switch: expected true or false"),
        ({"flags": {"bf16": "maybe"}}, "flags.bf16: Invalid value for '--bf16': 'maybe' is not a valid boolean or"),
        ({"methods": {"lora": {"learning_rates": []}}}, "methods.lora.learning_rates: expected a non-empty list"),
        ({"methods": {"lora": {"learning_rates": [0.1, -1]}}}, "methods.lora.learning_rates: every learning rate"),
        ({"methods": {"lora": {"schedule": 1}}}, "methods.lora.schedule: unknown key"),
        ({"methods": {}}, "methods: list at least one method"),
        ({"dataset": "missing.json"}, "dataset: missing.json is not a file"),
        ({"dataset": []}, "dataset: expected a file or a non-empty list of files"),
        ({"dataset": ["missing.json"]}, "dataset[0]: missing.json is not a file"),
        ({"dataset": [{"path": "a.json"}]}, "dataset[0]: required: expected a non-empty string"),
        ({"name": None}, "name: required"),
        ({"base_model": "models/absent"}, "base_model models/absent: there is no folder models/absent here, and HF_"),
        ({"base_model": "/nowhere/model.gguf"}, "base_model /nowhere/model.gguf: no such GGUF file"),
        ({"seeds": [2, 2]}, "seeds: expected distinct integer seeds"),
        ({"seeds": [2, "two"]}, "seeds: expected distinct integer seeds"),
        ({"seeds": [2, 2.5]}, "seeds: expected distinct integer seeds"),
        ({"reuse_sweep_seeds": "yes"}, "reuse_sweep_seeds: expected true or false"),
        ({"methods": {"lora": {"learning_rates": ["3e-3", "fast"]}}}, "methods.lora.learning_rates: every learning"),
        ({"methods": {"lora": {"learning_rates": ["nan"]}}}, "methods.lora.learning_rates: every learning rate"),
        ({"methods": {"lora": {"learning_rates": [1e-3, "1e-3"]}}}, "methods.lora.learning_rates: a learning rate is"),
        ({"evaluation": {"k": [1]}}, "evaluation.benchmark: required"),
        ({"evaluation": {"benchmark": "mmlu"}}, "evaluation.benchmark: Invalid value for '--benchmark': 'mmlu'"),
        ({"evaluation": {"benchmark": "humaneval", "model": "x"}}, "evaluation.model: set by the study"),
    ],
)
def test_a_bad_spec_is_refused_naming_its_key(tmp_path, changes, message):
    with pytest.raises(SpecError) as refused:
        load_spec(write_spec(tmp_path, **changes))
    assert f"{tmp_path / 'spec.yaml'}: {message}" in refused.value.format_message()


def test_several_training_files_reach_each_child_as_its_dataset_flag(tmp_path):
    (tmp_path / "more.jsonl").write_text(json.dumps({"input": "c", "output": "d"}) + "\n")
    files = [str(tmp_path / "train.json"), str(tmp_path / "more.jsonl")]
    spec = load_spec(write_spec(tmp_path, dataset=files))
    assert spec.dataset == os.pathsep.join(files)
    # what the driver passes each child: --dataset SPEC.DATASET, read by train.py as both files
    flags = load_command(REPO / "methods" / "lora" / "train.py").make_context(
        "train.py", ["--base-model", "m", "--dataset", spec.dataset, "--output-dir", str(tmp_path / "out")]
    )
    assert flags.params["dataset"] == tuple(Path(f) for f in files)


def test_the_command_refuses_a_bad_spec_before_anything_runs(tmp_path):
    spec = write_spec(tmp_path, methods={"lora": {"flags": {"lora_rank": 4}}})
    result = run_script("scripts/study.py", "run", spec, "--output-dir", tmp_path / "study", cwd=tmp_path)
    assert result.returncode == 1
    assert "methods.lora.flags.lora_rank: methods/lora takes no --lora-rank" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "study").exists() and not (tmp_path / "mlflow.db").exists()


def test_contamination_finds_shared_ngrams_and_whole_short_prompts():
    long_prompt = " ".join(f"w{i}" for i in range(20))
    prompts = {"long": long_prompt, "short": "add two numbers", "clean": " ".join(f"c{i}" for i in range(20))}
    training = [
        "intro " + " ".join(f"w{i}" for i in range(5, 18)) + " outro",  # 13 of its words in a row
        "please   add two\nnumbers now",  # the short prompt, whitespace aside
        " ".join(f"c{i}" for i in range(12)),  # 12 words in a row: below the bound
    ]
    assert contaminated_tasks(prompts, training) == {"long": "13-gram", "short": "exact"}
    assert contaminated_tasks(prompts, training, n=12) == {"long": "12-gram", "short": "exact", "clean": "12-gram"}
    assert contaminated_tasks(prompts, []) == {}


def test_the_shipped_example_spec_is_valid(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # its paths are relative to where the study runs: the files the README makes
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "humaneval.json").write_text(json.dumps([{"input": "a", "output": "b"}]))
    (tmp_path / "models").mkdir()
    model_folder(tmp_path / "models").rename(tmp_path / "models" / "tiny-qwen2")
    spec = load_spec(REPO / "studies" / "tiny-example.yaml")
    assert set(spec.methods) == {"lora", "bitfit"} and spec.benchmark == "humaneval"
    assert not set(spec.seeds) & set(spec.sweep_seeds), "the example reuses no sweep winner as a final"
