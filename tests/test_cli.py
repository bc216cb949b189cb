"""The command lines: `--help` stays light, every method takes the same common flags, the container runs them."""

import os
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest
import yaml

from conftest import REPO, load_command
from shared.options import common_options

REQUIRED = ["--base-model", "m", "--dataset", "MLproject", "--output-dir", "out"]
LISTED = ("MLproject", "README.md", "pyproject.toml")
SCRIPTS = sorted(str(p.relative_to(REPO)) for p in [*REPO.glob("methods/*/*.py"), *REPO.glob("scripts/*.py")])


HEAVY = ("torch", "transformers", "mlflow", "peft")
METHODS = sorted(p.parent.name for p in REPO.glob("methods/*/train.py"))


def run_probed(script: str, *args: str, cwd: Path = REPO) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run a script's command in a fresh process; also return which heavy libraries it had imported by its end."""
    probe = (
        "import runpy, sys\n"
        f"sys.argv = [{script!r}, *{list(args)!r}]\n"
        "try:\n"
        f"    runpy.run_path({str(REPO / script)!r}, run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=cwd)
    return result, eval(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_imports_no_heavy_library(script):
    result, imported = run_probed(script, "--help")
    assert "Usage:" in result.stdout
    assert imported == []
    assert not re.search(r"--[a-z0-9]+_", result.stdout), "the underscore spellings stay out of --help"


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    ("config", "message"),
    [
        (None, "--base-model {model} holds no config.json: it is not a model folder"),
        ("{}", "{data}: record 1: field 'output' is missing"),
    ],
)
def test_bad_input_is_refused_before_the_training_stack_is_imported(method, config, message, tmp_path):
    """A mistake costs a fraction of a second: the checks run before torch, transformers and MLflow load."""
    data, model = tmp_path / "train.json", tmp_path / "model"
    data.write_text('[{"input": "a", "output": "b"}, {"input": "c"}]')
    model.mkdir()
    if config is not None:
        (model / "config.json").write_text(config)
    args = ["--base-model", str(model), "--dataset", str(data), "--output-dir", str(tmp_path / "out")]
    result, imported = run_probed(f"methods/{method}/train.py", *args, cwd=tmp_path)
    assert message.format(model=model, data=data) in result.stderr
    assert "Traceback" not in result.stderr
    assert imported == []
    assert not (tmp_path / "out").exists() and not (tmp_path / "mlruns").exists()


def describe(command: click.Command) -> dict[str, tuple]:
    return {p.name: (tuple(p.opts), repr(p.type), p.default, p.required, p.is_flag) for p in command.params}


COMMON_NAMES = set(describe(common_options(click.command()(lambda **flags: None))))


def test_every_method_takes_the_same_common_flags():
    scripts = sorted(str(p.relative_to(REPO)) for p in REPO.glob("methods/*/train.py"))
    assert len(scripts) >= 2
    reference = describe(load_command(scripts[0]))
    assert COMMON_NAMES <= set(reference)
    for script in scripts[1:]:
        params = describe(load_command(script))
        assert {n: params.get(n) for n in COMMON_NAMES} == {n: reference[n] for n in COMMON_NAMES}, script


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--bf16"], {"bf16": True}),
        (["--bf16", "true", "--fp16=false"], {"bf16": True, "fp16": False}),
        (["--bf16", "--resume"], {"bf16": True, "resume": True}),
        (["--bf16", "AUTO"], {"bf16": "auto"}),
        (["--packing", "false"], {"packing": False}),
        (["--no_packing", "--dev_dataset", "README.md", "--eval_steps", "50"], {"packing": False, "eval_steps": 50}),
        (["--dataset", "README.md"], {"dataset": (Path("MLproject"), Path("README.md"))}),
        (["--dataset", f"README.md{os.pathsep}pyproject.toml"], {"dataset": tuple(map(Path, LISTED))}),
    ],
)
def test_switches_take_a_value_and_flags_their_underscore_name(args, expected, monkeypatch):
    monkeypatch.chdir(REPO)
    params = load_command("methods/lora/train.py").make_context("train.py", [*REQUIRED, *args]).params
    assert {k: params[k] for k in expected} == expected


def test_a_bad_switch_value_is_refused_naming_the_switch(monkeypatch):
    monkeypatch.chdir(REPO)
    with pytest.raises(click.BadParameter) as refused:
        load_command("methods/lora/train.py").make_context("train.py", [*REQUIRED, "--bf16", "maybe"])
    assert refused.value.format_message().startswith("Invalid value for '--bf16': 'maybe' is not a valid boolean")


@pytest.mark.parametrize(
    ("args", "status", "expected"),
    [
        (["lora", "--help"], 0, "Usage: train.py"),
        (["qlora", "merge", "--help"], 0, "Usage: merge.py"),
        (["compare", "--help"], 0, "Usage: compare.py"),
        (["nope"], 2, "unknown method or script 'nope'"),
        (["bitfit", "merge"], 2, "method 'bitfit' has no merge.py"),
    ],
)
def test_docker_entrypoint_runs_a_method_or_a_script(args, status, expected):
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"  # its `python`: this environment's
    command = ["bash", REPO / "docker/entrypoint.sh", *args]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PATH": path})
    assert result.returncode == status
    assert expected in result.stdout + result.stderr


def test_compose_trains_beside_the_server_on_the_images_volumes():
    compose = yaml.safe_load((REPO / "docker/compose.yaml").read_text())
    train = compose["services"]["train"]
    dockerfile = (REPO / train["build"]["dockerfile"]).read_text()
    user = re.search(r"^ARG APP_USER=(\S+)", dockerfile, re.MULTILINE)[1]
    hf_home = re.search(r"HF_HOME=(\S+)", dockerfile)[1].replace("${APP_USER}", user)
    declared = re.search(r"^VOLUME \[(.*)\]", dockerfile, re.MULTILINE)[1]
    image_volumes = {v.strip(' "').replace("${HF_HOME}", hf_home) for v in declared.split(",")}
    assert image_volumes == {f"/home/{user}/.cache/huggingface", "/workspace/outputs"}
    mounts = dict(v.split(":") for v in train["volumes"])
    assert set(mounts.values()) == image_volumes and set(mounts) <= set(compose["volumes"])  # named volumes
    assert train["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000" and "mlflow" in compose["services"]
