"""Session fixtures: tiny real-architecture models built once, a learnable synthetic task, script runners."""

import contextlib
import importlib.util
import io
import json
import logging
import os
import random
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

import click
import mlflow
import pytest
from mlflow import MlflowClient

from shared.logs import FORMAT

REPO = Path(__file__).resolve().parent.parent
# The tiny models' checkpoints take kilobytes: a small machine's /tmp must not trip the 1 GiB free-space floor.
os.environ.setdefault("PEFT_WORKBENCH_MIN_FREE_GB", "0.05")
# Read when huggingface_hub is imported: the scripts run in this process must never reach a hub either.
os.environ["HF_HUB_OFFLINE"] = "1"
# GGUF files are converted into this cache: a test's conversions stay out of the user's ~/.cache.
os.environ["PEFT_WORKBENCH_CACHE"] = tempfile.mkdtemp(prefix="workbench-cache-")
DIGIT_WORDS = "zero one two three four five six seven eight nine".split()


def script_env(env: dict | None = None) -> dict[str, str]:
    """This process's environment without MLflow settings (hermetic: no outside store), offline, plus ENV."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    return {**inherited, "HF_HUB_OFFLINE": "1", **(env or {})}


def run_script(script: str, *args, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run one of the repo's scripts as a user would, in a fresh process."""
    full_env = script_env(env)
    return subprocess.run(
        [sys.executable, str(REPO / script), *map(str, args)],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def run_in_process(script: str, *args, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """The script's click command run in this process, as run_script runs it in a fresh one: same environment and
    working directory, its exit status, its output and log lines. For trainings whose process boundary is not what
    a test is about: no second interpreter, no ~10 s of imports."""
    command = load_command(script)
    saved_env, saved_cwd = dict(os.environ), Path.cwd()
    out, err = io.StringIO(), io.StringIO()
    log_lines = logging.StreamHandler(err)
    log_lines.setFormatter(logging.Formatter(FORMAT))
    root = logging.getLogger()
    saved_level = root.level
    os.environ.clear()
    os.environ.update(script_env(env))
    mlflow.set_tracking_uri(None)  # resolved afresh from the environment, as a new process would
    root.addHandler(log_lines)
    root.setLevel(logging.INFO)
    os.chdir(cwd or saved_cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                command.main([str(a) for a in args], prog_name=script)
                code = 0
            except SystemExit as exit:
                code = exit.code if isinstance(exit.code, int) else int(exit.code is not None)
            except Exception:
                traceback.print_exc()
                code = 1
            finally:
                while mlflow.active_run():  # a run the script left open would capture the next one's calls
                    mlflow.end_run("FAILED")
    finally:
        os.chdir(saved_cwd)
        root.removeHandler(log_lines)
        root.setLevel(saved_level)
        mlflow.set_tracking_uri(None)
        os.environ.clear()
        os.environ.update(saved_env)
    return subprocess.CompletedProcess([script, *map(str, args)], code, out.getvalue(), err.getvalue())


def build_tiny_model(out_dir: Path, *args: str) -> Path:
    result = run_script("scripts/make_tiny_model.py", out_dir, *args)
    assert result.returncode == 0, result.stderr
    return out_dir


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("models") / "qwen2", "--arch", "qwen2")


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("models") / "llama", "--arch", "llama")


def spelled_digits(count: int, seed: int = 0) -> list[dict[str, str]]:
    """A task a tiny model learns in a few dozen steps: spell three digits as words."""
    rng = random.Random(seed)
    records = []
    for _ in range(count):
        digits = [rng.randrange(10) for _ in range(3)]
        records.append(
            {
                "input": "Spell in words: " + " ".join(map(str, digits)),
                "output": " ".join(DIGIT_WORDS[d] for d in digits),
            }
        )
    return records


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "spelled_digits.json"
    path.write_text(json.dumps(spelled_digits(240)))
    return path


# Settings under which the tiny model learns the synthetic task in a few dozen steps.
FAST = ["--batch-size", 8, "--gradient-accumulation", 1, "--learning-rate", 1e-2, "--logging-steps", 10]


def only_run(cwd: Path):
    """The single run of experiment 'tests' in the sqlite store at CWD/mlflow.db, with a client to read it."""
    client = MlflowClient(f"sqlite:///{cwd}/mlflow.db")
    experiment = client.get_experiment_by_name("tests")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    return client, runs[0]


def load_command(path: str) -> click.Command:
    """The click command a script of the repo runs, imported without running it."""
    spec = importlib.util.spec_from_file_location(path.replace("/", "_"), REPO / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # merge.py has no main of its own: it runs the shared merge_command.
    return getattr(module, "main", None) or next(v for v in vars(module).values() if isinstance(v, click.Command))
