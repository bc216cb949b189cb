"""A base model name that is no local folder is read both ways, and refused in seconds when neither works: no folder
here, and a hub that is offline, unreachable or without that model. Real sockets on 127.0.0.1 stand in for the hub."""

import http.server
import socket
import threading
import time

import pytest
from huggingface_hub import constants

from shared.model_source import ModelSourceError, check_model_source


def refusal(name: str, label: str = "--base-model") -> str:
    with pytest.raises(ModelSourceError) as refused:
        check_model_source(name, label)
    return refused.value.format_message()


def test_a_missing_folder_offline_names_both_readings(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    started = time.perf_counter()
    message = refusal("models/tiny-qwen3")
    assert time.perf_counter() - started < 2
    assert message.startswith("--base-model models/tiny-qwen3: there is no folder models/tiny-qwen3 here")
    assert "HF_HUB_OFFLINE is set while the hub cache holds no copy of models/tiny-qwen3" in message


def test_a_path_spelled_as_one_is_only_a_folder(tmp_path):
    assert refusal(f"{tmp_path}/absent", "base_model") == f"base_model {tmp_path}/absent: no such folder"
    assert refusal(f"{tmp_path}/absent.gguf") == f"--base-model {tmp_path}/absent.gguf: no such GGUF file"


def test_a_name_that_cannot_be_a_hub_id_says_so(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert "and it is not a hub model id either" in refusal("models/qwen/extra")


def test_an_unreachable_hub_is_named_as_such_in_seconds(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    message = refusal("someone/some-model")
    assert f"the hub at http://127.0.0.1:{port} is unreachable (offline?" in message
    assert "there is no folder someone/some-model here" in message


class NoSuchModel(http.server.BaseHTTPRequestHandler):
    def do_HEAD(self):
        self.send_response(404 if "missing" in self.path else 200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def hub(monkeypatch):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NoSuchModel)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    yield
    server.shutdown()


def test_a_hub_without_the_model_is_named_and_one_with_it_passes(hub, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert "has no model someone/missing-model (HTTP 404" in refusal("someone/missing-model")
    assert check_model_source("someone/real-model") == {}


def test_a_folder_that_is_not_a_model_and_a_stray_file_are_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    assert refusal(str(tmp_path)) == f"--base-model {tmp_path} holds no config.json: it is not a model folder"
    assert "is a file, not a model folder or a .gguf file" in refusal(str(tmp_path / "notes.txt"))


def test_evaluation_refuses_an_adapters_base_that_cannot_load(monkeypatch, tmp_path):
    """evaluate.py reads the adapter's base from its config, or --base-model: both are checked like a training's."""
    from shared.evaluate.generation import detect_output

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    (tmp_path / "adapter").mkdir()
    config = tmp_path / "adapter" / "adapter_config.json"
    config.write_text('{"peft_type": "LORA", "base_model_name_or_path": "models/gone"}')
    with pytest.raises(ModelSourceError, match=f"{config}: base_model_name_or_path models/gone: there is no folder"):
        detect_output(tmp_path / "adapter")
    with pytest.raises(ModelSourceError, match="--base-model models/elsewhere: there is no folder models/elsewhere"):
        detect_output(tmp_path / "adapter", "models/elsewhere")
