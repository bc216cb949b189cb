"""Running untrusted generated programs: each in its own process with limits, in parallel across cores.

Every program gets a fresh private working directory (removed afterwards), an environment holding only a
minimal PATH, LANG, HOME and TMPDIR (no inherited secrets), a wall-clock timeout that kills its whole process
group, and CPU-time, memory (address space), file-size and core-dump limits. Where bubblewrap can run, it also
runs in namespaces of its own ("namespace" isolation): no network, a read-only file system with the user's
folders masked and only its private folder writable, its own PID namespace (nothing it starts outlives it) and a
bound on its number of processes. Elsewhere the "process" isolation alone remains. A check passes only when the
program ran to its end: a random token, printed by the launcher once the program has returned, must be the last
line of its output, so a program that exits early with status 0 fails. See docs/evaluation.md for what this
does not protect against.
"""

import contextlib
import functools
import itertools
import logging
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger(__name__)

PROGRAM_FILE = "program.py"
OUTPUT_TAIL = 4096  # bytes of stdout/stderr kept: enough for the sentinel and a traceback's last lines

# Applied in the child before the program runs (instead of preexec_fn, which can deadlock in a threaded parent).
# uid (non-zero: drop to it first) and processes (non-zero: RLIMIT_NPROC) are set in the namespace sandbox only.
LAUNCHER = """\
import os, sys
memory, cpu, file_size, processes, uid = (int(v) for v in sys.argv[1:6])
token = sys.argv[6]
if uid:
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
os.environ.pop("PWD", None)  # bwrap's, the same as the working directory
import resource, runpy
resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
resource.setrlimit(resource.RLIMIT_FSIZE, (file_size, file_size))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
if processes:
    resource.setrlimit(resource.RLIMIT_NPROC, (processes, processes))
sys.argv = sys.argv[7:]
runpy.run_path(sys.argv[0], run_name="__main__")
if token:
    print(token, flush=True)
"""

NAMESPACE, PROCESS = "namespace", "process"
# Besides the home folder and the working directory: where caches may live when they are not under home.
CACHE_VARIABLES = ("HF_HOME", "HF_HUB_CACHE", "XDG_CACHE_HOME", "TORCH_HOME")
# Run as root, each program drops to a uid of its own (no account, no files): the kernel exempts uid 0 from
# RLIMIT_NPROC, and a uid per program makes the limit count that program's processes only.
FIRST_SANDBOX_UID = 2**30
_program_numbers = itertools.count()


@dataclass(frozen=True)
class Limits:
    timeout: float = 10.0  # wall-clock seconds
    cpu_seconds: int = 10
    memory_mb: int = 1024
    file_size_mb: int = 16  # any file the program writes, its captured output included
    processes: int = 64  # processes and threads at once (namespace isolation only)


@dataclass(frozen=True)
class Isolation:
    """How programs are walled off: NAMESPACE (bubblewrap, as well as the process limits) or PROCESS (limits only)."""

    kind: str = PROCESS
    hidden: tuple[Path, ...] = ()  # folders masked besides home, caches and the working directory (namespace only)


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


def namespace_problem() -> str | None:
    """Why programs cannot run in the namespace sandbox here, or None when they can."""
    if shutil.which("bwrap") is None:
        return "bubblewrap (bwrap) is not installed"
    return _namespace_trial()


@functools.cache
def _namespace_trial() -> str | None:
    # Tried once per process, with the interpreter and a standard-library import, as every program will run.
    outcome = run_program(Program("import json"), Limits(timeout=30), Isolation(NAMESPACE))
    return None if outcome.passed else f"bubblewrap cannot isolate programs here ({outcome.reason})"


def detect_isolation(hidden: Sequence[Path] = ()) -> Isolation:
    """Namespace isolation (masking `hidden` too) where bubblewrap works, else process isolation, with a warning."""
    problem = namespace_problem()
    if problem is None:
        return Isolation(NAMESPACE, tuple(hidden))
    log.warning("%s: generated code runs with process limits only, with the network and your files in reach", problem)
    return Isolation(PROCESS)


def run_program(program: Program, limits: Limits = Limits(), isolation: Isolation | None = None) -> Outcome:
    """Run one program in a fresh process under `limits` and judge it (`isolation`: default, the best here)."""
    isolation = isolation or detect_isolation()
    # Printed by the launcher once the program returns: an early exit (even with status 0) never prints it.
    token = secrets.token_hex(16) if program.expected_stdout is None else ""
    with tempfile.TemporaryDirectory(prefix="sandbox-", ignore_cleanup_errors=True) as private:
        work = Path(private)
        (work / PROGRAM_FILE).write_text(program.source, encoding="utf-8")
        returncode, out, err = _execute(_command(work, limits, isolation, token), work, program.stdin, limits.timeout)
    if returncode is None:
        return Outcome(False, "timed out")
    if isolation.kind == NAMESPACE and returncode > 128:
        returncode = 128 - returncode  # bwrap reports a program killed by signal N as status 128 + N
    return _judge(program, returncode, out, err, token)


def _execute(command: list[str], work: Path, stdin_text: str, timeout: float) -> tuple[int | None, str, str]:
    """Exit status (None: timed out) and the tails of stdout and stderr of `command`, run in `work`."""
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(work), "TMPDIR": str(work)}
    # Input and output are anonymous files read back through their descriptors, so a program that deletes or
    # rewrites whatever it finds in its folder cannot break the judging.
    with tempfile.TemporaryFile() as stdin, tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
        stdin.write(stdin_text.encode("utf-8"))
        stdin.seek(0)
        process = subprocess.Popen(
            command,
            cwd=work,
            env=env,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,  # its own process group, so a timeout kills its children too
        )
        try:
            process.wait(timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            _kill_group(process)
        returncode = process.wait()
        return None if timed_out else returncode, _tail(stdout), _tail(stderr)


def run_programs(
    programs: Sequence[Program],
    limits: Limits = Limits(),
    workers: int | None = None,
    isolation: Isolation | None = None,
) -> list[Outcome]:
    """Run programs in parallel (one process each, `workers` at a time: default one per core), in order."""
    from tqdm import tqdm

    isolation = isolation or detect_isolation()
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        outcomes = pool.map(lambda program: run_program(program, limits, isolation), programs)
        return list(tqdm(outcomes, total=len(programs), desc="Executing", unit="program"))


def _command(work: Path, limits: Limits, isolation: Isolation, token: str) -> list[str]:
    """The launcher's command line, inside bubblewrap for namespace isolation."""
    sizes = [limits.memory_mb * 2**20, limits.cpu_seconds, limits.file_size_mb * 2**20]
    launcher = [sys.executable, "-I", "-c", LAUNCHER]
    if isolation.kind == PROCESS:
        return [*launcher, *map(str, [*sizes, 0, 0]), token, PROGRAM_FILE]
    uid = 0
    if os.getuid() == 0:
        uid = FIRST_SANDBOX_UID + next(_program_numbers) % 2**20
        os.chown(work, uid, uid)
    launch = [*launcher, *map(str, [*sizes, limits.processes, uid]), token, PROGRAM_FILE]
    return [*_bubblewrap(work, isolation.hidden), *launch]


def _bubblewrap(work: Path, hidden: Sequence[Path]) -> list[str]:
    """No network, no IPC, its own PID namespace; `/` read-only with the user's folders masked; `work` writable."""
    # Root needs no user namespace to make the others, and inside one uid 0 would be exempt from RLIMIT_NPROC.
    user = [] if os.getuid() == 0 else ["--unshare-user"]
    namespaces = [*user, "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
    system = ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
    masked = _masked_folders(hidden)
    mounts = [*_mask_and_expose(masked), "--bind", str(work), str(work)]
    # The masks are empty tmpfs: read-only too, so the private folder is the only place a program can write.
    read_only = [arg for folder in ["/dev", *masked] for arg in ("--remount-ro", str(folder))]
    session = ["--die-with-parent", "--new-session", "--chdir", str(work)]
    # By its full path: Popen looks for it on the program's PATH (/usr/bin:/bin), not this process's.
    bwrap = shutil.which("bwrap") or "bwrap"
    return [bwrap, *namespaces, *system, *mounts, *read_only, *session]


def _masked_folders(hidden: Sequence[Path]) -> list[Path]:
    """Existing folders to mask: /tmp, /run (sockets), homes, caches, the working directory and `hidden`."""
    homes = [os.environ.get("HOME")]
    with contextlib.suppress(KeyError):  # a uid without an account
        homes.append(pwd.getpwuid(os.getuid()).pw_dir)
    caches = [os.environ.get(name) for name in CACHE_VARIABLES]
    candidates = ["/tmp", "/run", "/var/run", "/home", *homes, *caches, os.getcwd(), *hidden]
    folders = {Path(path).resolve() for path in candidates if path}
    return sorted(folder for folder in folders if folder.is_dir() and folder != Path("/"))


def _mask_and_expose(masked: list[Path]) -> list[str]:
    """tmpfs over each masked folder, then the interpreter's folders inside them read-only again, deeper last."""
    prefixes = {Path(p).resolve() for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix)}
    exposed = [p for p in prefixes if any(p.is_relative_to(folder) for folder in masked)]
    # Shallower first, so a folder masked inside an exposed prefix stays masked; at equal depth the prefix wins.
    steps = sorted([(len(f.parts), 0, f) for f in masked] + [(len(p.parts), 1, p) for p in exposed])
    args = []
    for _, expose, path in steps:
        args += _expose(path, masked) if expose else ["--tmpfs", str(path)]
    return args


def _expose(prefix: Path, masked: list[Path]) -> list[str]:
    # The folders bwrap creates on a tmpfs are private (0700): a program that dropped to its own uid could not
    # reach the interpreter through them.
    mask = max((folder for folder in masked if prefix.is_relative_to(folder)), key=lambda f: len(f.parts))
    between = [p for p in reversed(prefix.parents) if p.is_relative_to(mask) and p != mask]
    created = [arg for folder in between for arg in ("--perms", "0755", "--dir", str(folder))]
    return [*created, "--ro-bind", str(prefix), str(prefix)]


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
