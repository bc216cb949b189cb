"""docker/Dockerfile's image, run the way the README runs it: `docker run IMAGE <method|script> [flags]`."""

import pytest

from containers.stack import REPO, TRAIN_IMAGE, run

pytestmark = pytest.mark.containers


def test_method_help_runs_in_the_container():
    result = run("podman", "run", "--rm", TRAIN_IMAGE, "lora", "--help")
    assert "--base-model" in result.stdout
    assert "--lora-r" in result.stdout


def test_unknown_method_gets_a_clear_error_and_the_list_of_methods():
    result = run("podman", "run", "--rm", TRAIN_IMAGE, "nosuchmethod", check=False)
    assert result.returncode == 2
    assert "unknown method or script 'nosuchmethod'" in result.stderr
    for method in ("lora", "qlora", "bitfit", "prefix", "fft"):
        assert method in result.stderr


def test_container_runs_as_the_non_root_user():
    result = run("podman", "run", "--rm", "--entrypoint", "id", TRAIN_IMAGE)
    assert result.stdout.startswith("uid=1000(trainer) gid=1000(trainer)"), result.stdout


def test_image_holds_the_locked_libraries():
    script = "import transformers, peft, mlflow; print(transformers.__version__, peft.__version__, mlflow.__version__)"
    result = run("podman", "run", "--rm", "--entrypoint", "python", TRAIN_IMAGE, "-c", script)
    lines = (REPO / "constraints.txt").read_text().splitlines()
    locked = dict(line.split("==") for line in lines if "==" in line)
    assert result.stdout.split() == [locked["transformers"], locked["peft"], locked["mlflow"]]
