"""Helpers of the container stage: the engine check, commands with their output on failure, `docker compose`."""

import os
import shutil
import socket
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PROJECT = "workbench-ci"
TRAIN_IMAGE = f"{PROJECT}-train"
COMPOSE_FILES = ["docker/compose.yaml", ".ci/compose.no-gpu.yaml"]


def engine_missing() -> str | None:
    """Why the stage's engine or images are not there, or None when they are."""
    for tool in ("podman", "docker-compose"):
        if shutil.which(tool) is None:
            return f"{tool} is not on PATH"
    if not os.environ.get("DOCKER_HOST"):
        return "DOCKER_HOST is not set"
    for image in (TRAIN_IMAGE, f"{PROJECT}-mlflow"):
        if subprocess.run(["podman", "image", "exists", image]).returncode != 0:
            return f"image {image} is not built"
    return None


def run(*command: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run a command, echoing its output into the test's report when it fails."""
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(command)} exited {result.returncode}\n"
            f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}"
        )
    return result


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Compose:
    """`docker compose` on the shipped compose file (GPU request dropped), as its own project, with an env file."""

    def __init__(self, env_file: Path):
        self.env_file = env_file
        self.settings: dict[str, str] = {}

    def configure(self, **settings: str) -> None:
        self.settings.update(settings)
        self.env_file.write_text("".join(f"{key}={value}\n" for key, value in self.settings.items()))

    def __call__(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        """`docker compose ARGS`; when it fails, the error carries the services' last log lines."""
        result = run(*self.command, *args, check=False, timeout=timeout)
        if check and result.returncode != 0:
            logs = run(*self.command, "logs", "--no-color", "--tail=25", check=False, timeout=60)
            raise AssertionError(
                f"docker compose {' '.join(args)} exited {result.returncode}\n"
                f"stdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}\n"
                f"services' logs:\n{logs.stdout[-6000:]}"
            )
        return result

    @property
    def command(self) -> list[str]:
        files = [word for path in COMPOSE_FILES for word in ("--file", path)]
        return ["docker-compose", "--project-name", PROJECT, *files, "--env-file", str(self.env_file)]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.settings['MLFLOW_PORT']}"
