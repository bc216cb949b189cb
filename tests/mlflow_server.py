"""A real `mlflow server` for tests: one process per test session, listening on the loopback interface only.

Its backend is a sqlite file and its artifacts live under `--artifacts-destination`, both in a temporary folder.
Artifact serving is on, so clients upload and download artifacts through the server's HTTP API, as they would
against a shared tracking server. Use it from a test file with:

    from mlflow_server import mlflow_server  # noqa: F401

and take `mlflow_server` (the server's `http://127.0.0.1:PORT` URI) as a fixture argument.
"""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

STARTUP_TIMEOUT_S = 60
STOP_TIMEOUT_S = 30


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def healthy(uri: str) -> bool:
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def log_tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"


def wait_until_healthy(uri: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"mlflow server exited with {process.returncode}:\n{log_tail(log)}")
        if healthy(uri):
            return
        time.sleep(0.5)
    pytest.fail(f"mlflow server at {uri} not healthy after {STARTUP_TIMEOUT_S} s:\n{log_tail(log)}")


def stop(process: subprocess.Popen) -> None:
    """SIGTERM (the server stops its workers), then SIGKILL its whole process group if it hangs."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@contextmanager
def running_server(root: Path, port: int | None = None) -> Iterator[str]:
    """A real MLflow tracking server on 127.0.0.1 with its store under ROOT, stopped on exit; yields its URI.

    Started again on the same ROOT and port, it serves the same runs (a server that went away and came back).
    """
    port = port or free_port()
    uri = f"http://127.0.0.1:{port}"
    command = [
        sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "artifacts"),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}  # hermetic: no outside store
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # as docker/compose.yaml: no job workers to start
    log = root / "server.log"
    with log.open("a") as handle:
        # Own session, so a hung server's workers can be killed together as one group.
        process = subprocess.Popen(
            command, cwd=root, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        wait_until_healthy(uri, process, log)
        yield uri
    finally:
        stop(process)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory) -> Iterator[str]:
    """URI of a real MLflow tracking server on 127.0.0.1 (sqlite backend, artifacts served), for the session."""
    with running_server(tmp_path_factory.mktemp("mlflow_server")) as uri:
        yield uri
