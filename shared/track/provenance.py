"""What it takes to reproduce a training run: library versions, CUDA and GPUs, the code's commit and whether the
checkout had uncommitted changes, the base model's revision, and the data (through MLflow's dataset tracking).

Logged once per run as params (`version.*`, `git_*`, `cuda_*`, `base_model_revision`); a run resumed elsewhere
keeps its first values, and the difference is logged as a warning.
"""

import hashlib
import importlib.metadata
import logging
import os
import platform
import subprocess
from collections.abc import Sequence
from pathlib import Path

from shared.data.records import data_files

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("torch", "transformers", "peft", "bitsandbytes", "deepspeed", "accelerate", "mlflow")
MODEL_FILES = ("config.json", "*.safetensors", "*.safetensors.index.json", "*.bin", "*.pt")
PROVENANCE_PARAMS = (
    "version.python", *(f"version.{p}" for p in PACKAGES), "cuda_version", "cuda_driver", "git_commit", "git_dirty",
)  # fmt: skip


def environment_record() -> dict[str, str]:
    """Python and library versions, CUDA version and driver where there is a GPU, the git commit and dirty flag."""
    record = {"version.python": platform.python_version()}
    for package in PACKAGES:
        try:
            record[f"version.{package}"] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            record[f"version.{package}"] = "not installed"
    record.update(_cuda())
    record.update(_git())
    return record


def _cuda() -> dict[str, str]:
    import torch

    if not torch.cuda.is_available():
        return {}
    record = {"cuda_version": str(torch.version.cuda)}
    try:
        import pynvml

        pynvml.nvmlInit()
        record["cuda_driver"] = str(pynvml.nvmlSystemGetDriverVersion())
        pynvml.nvmlShutdown()
    except Exception as err:  # the driver version is a nicety: no NVML, no entry
        log.debug("no driver version from NVML: %s", err)
    return record


def _git() -> dict[str, str]:
    """The checkout's commit and whether tracked files changed; nothing when the code is not a git checkout."""

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=30).stdout

    try:
        commit = git("rev-parse", "HEAD").strip()
    except (OSError, subprocess.TimeoutExpired):
        return {}
    if not commit:
        return {}
    return {"git_commit": commit, "git_dirty": str(bool(git("status", "--porcelain", "--untracked-files=no"))).lower()}


def model_revision(base_model: str, config) -> str:
    """The hub commit the base model was loaded at; for a local folder the sha256 of its config and weights, for a
    GGUF file that of the file."""
    folder = Path(base_model)
    if folder.is_file():
        files = [folder]
    elif folder.is_dir():
        files = sorted({path for pattern in MODEL_FILES for path in folder.glob(pattern)})
    else:
        return getattr(config, "_commit_hash", None) or "unknown"
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as stream:
            while chunk := stream.read(1 << 20):
                digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


def log_datasets(datasets: dict[str, tuple[Path | Sequence[Path] | None, list[dict]]]) -> None:
    """Each {context: (file or files, records)} as an MLflow dataset input of the active run (name, source, digest);
    several files are one input, their paths joined with os.pathsep."""
    import mlflow
    import pandas
    from mlflow.data.sources import LocalArtifactDatasetSource

    for context, (paths, records) in datasets.items():
        frame = pandas.DataFrame(records, columns=["input", "output"])
        files = data_files(paths)
        resolved = os.pathsep.join(str(path.resolve()) for path in files)
        # Given as an object: MLflow 3 resolves a path string to two identical local sources, and warns about it.
        source = LocalArtifactDatasetSource(resolved or f"held out of the training file ({context})")
        name = "+".join(path.name for path in files) or f"{context}-split"
        mlflow.log_input(mlflow.data.from_pandas(frame, source=source, name=name), context=context)
