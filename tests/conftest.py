"""Session fixtures: tiny real-architecture models built once, a learnable synthetic task, a script runner."""

import importlib.util
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import click
import pytest
from mlflow import MlflowClient

REPO = Path(__file__).resolve().parent.parent
# The tiny models' checkpoints take kilobytes: a small machine's /tmp must not trip the 1 GiB free-space floor.
os.environ.setdefault("PEFT_WORKBENCH_MIN_FREE_GB", "0.05")
DIGIT_WORDS = "zero one two three four five six seven eight nine".split()


def run_script(script: str, *args, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run one of the repo's scripts as a user would, in a fresh process."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}  # hermetic: no outside store
    full_env = {**inherited, "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, str(REPO / script), *map(str, args)],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=600,
    )


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
    """The click command defined by a script of the repo, imported without running it."""
    spec = importlib.util.spec_from_file_location(path.replace("/", "_"), REPO / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main
