"""Running untrusted generated programs: each in its own process with limits, in parallel across cores.

Every program gets a fresh private working directory (removed afterwards), an environment holding only a
minimal PATH, LANG, HOME and TMPDIR (no inherited secrets), a wall-clock timeout that kills its whole process
group, and CPU-time, memory (address space), file-size and core-dump limits. A check passes only when the
program ran to its end: a random token, printed by the launcher once the program has returned, must be the last
line of its output, so a program that exits early with status 0 fails. See docs/evaluation.md for what this
does not protect against.
"""

import os
import secrets
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

PROGRAM_FILE = "program.py"
OUTPUT_TAIL = 4096  # bytes of stdout/stderr kept: enough for the sentinel and a traceback's last lines

# Applied in the child before the program runs (instead of preexec_fn, which can deadlock in a threaded parent).
LAUNCHER = """\
import resource, runpy, sys
memory, cpu, file_size = (int(v) for v in sys.argv[1:4])
token = sys.argv[4]
resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
resource.setrlimit(resource.RLIMIT_FSIZE, (file_size, file_size))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
sys.argv = sys.argv[5:]
runpy.run_path(sys.argv[0], run_name="__main__")
if token:
    print(token, flush=True)
"""


@dataclass(frozen=True)
class Limits:
    timeout: float = 10.0  # wall-clock seconds
    cpu_seconds: int = 10
    memory_mb: int = 1024
    file_size_mb: int = 16  # any file the program writes, its captured output included


@dataclass(frozen=True)
class Program:
    """Source to run; with `expected_stdout` it passes on matching output, else when it runs to its end."""

    source: str
    stdin: str = ""
    expected_stdout: str | None = None


@dataclass(frozen=True)
class Outcome:
    passed: bool
    reason: str  # "passed", or why not: "failed: AssertionError", "timed out", "exited before the end", ...


def run_program(program: Program, limits: Limits = Limits()) -> Outcome:
    """Run one program in a fresh process under `limits` and judge it."""
    # Printed by the launcher once the program returns: an early exit (even with status 0) never prints it.
    token = secrets.token_hex(16) if program.expected_stdout is None else ""
    # Input and output are anonymous files read back through their descriptors, so a program that deletes or
    # rewrites whatever it finds in its folder cannot break the judging.
    with tempfile.TemporaryDirectory(prefix="sandbox-", ignore_cleanup_errors=True) as private:
        work = Path(private)
        (work / PROGRAM_FILE).write_text(program.source, encoding="utf-8")
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(work), "TMPDIR": str(work)}
        limit_args = [str(limits.memory_mb * 2**20), str(limits.cpu_seconds), str(limits.file_size_mb * 2**20)]
        with tempfile.TemporaryFile() as stdin, tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
            stdin.write(program.stdin.encode("utf-8"))
            stdin.seek(0)
            process = subprocess.Popen(
                [sys.executable, "-I", "-c", LAUNCHER, *limit_args, token, PROGRAM_FILE],
                cwd=work,
                env=env,
                stdin=stdin,
                stdout=stdout,
                stderr=stderr,
                start_new_session=True,  # its own process group, so a timeout kills its children too
            )
            try:
                process.wait(timeout=limits.timeout)
                timed_out = False
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                _kill_group(process)
            returncode = process.wait()
            out, err = _tail(stdout), _tail(stderr)
    if timed_out:
        return Outcome(False, "timed out")
    return _judge(program, returncode, out, err, token)


def run_programs(programs: Sequence[Program], limits: Limits = Limits(), workers: int | None = None) -> list[Outcome]:
    """Run programs in parallel (one process each, `workers` at a time: default one per core), in order."""
    from tqdm import tqdm

    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        outcomes = pool.map(lambda program: run_program(program, limits), programs)
        return list(tqdm(outcomes, total=len(programs), desc="Executing", unit="program"))


def _kill_group(process: subprocess.Popen) -> None:
    # Also after a normal exit: background children the program left behind must not outlive it.
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _tail(file: BinaryIO) -> str:
    size = file.seek(0, os.SEEK_END)
    file.seek(max(0, size - OUTPUT_TAIL))
    return file.read().decode("utf-8", errors="replace")


def _judge(program: Program, returncode: int, out: str, err: str, token: str) -> Outcome:
    if returncode < 0:
        name = signal.Signals(-returncode).name
        return Outcome(False, "killed: " + ("CPU time limit" if name == "SIGXCPU" else name))
    if returncode != 0:
        last = err.strip().splitlines()[-1] if err.strip() else f"exit status {returncode}"
        return Outcome(False, "memory limit: " + last if last.startswith("MemoryError") else f"failed: {last}")
    if program.expected_stdout is not None:
        same = _lines(out) == _lines(program.expected_stdout)
        return Outcome(same, "passed" if same else "failed: wrong output")
    lines = out.strip().splitlines()
    if not lines or lines[-1] != token:
        return Outcome(False, "exited before the end")
    return Outcome(True, "passed")


def _lines(text: str) -> list[str]:
    return [line.rstrip() for line in text.strip().splitlines()]
