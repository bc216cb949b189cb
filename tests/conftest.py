"""Session fixtures: tiny real-architecture models built once, a learnable synthetic task, a script runner."""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
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
