"""MLproject: every entry point mirrors its script's flags, and `mlflow run` trains into the run it created."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
import yaml

from conftest import REPO, only_run

ENTRY_POINTS = yaml.safe_load((REPO / "MLproject").read_text())["entry_points"]
TOOLS = {"prepare_data", "prepare_balanced_data", "merge", "evaluate", "compare", "study"}
METHODS = {p.parent.name for p in REPO.glob("methods/*/train.py")}


def script_of(entry: dict) -> str:
    """The script an entry point runs: `python SCRIPT --flag {param} ...`."""
    words = entry["command"].split()
    assert words[0] == "python", entry["command"]
    return words[1]


def click_command(entry: dict) -> click.Command:
    """The click command an entry point runs, whatever its name (merge.py runs one imported from shared), or the
    subcommand it names (`python scripts/study.py run ...`)."""
    words = entry["command"].split()
    spec = importlib.util.spec_from_file_location(words[1].replace("/", "_"), REPO / words[1])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    commands = {id(v): v for v in vars(module).values() if isinstance(v, click.Command)}
    groups = [command for command in commands.values() if isinstance(command, click.Group)]
    if groups:
        return groups[0].commands[words[2]]
    assert len(commands) == 1, f"{words[1]}: expected one click command, found {len(commands)}"
    return next(iter(commands.values()))


def expressible(option: click.Option) -> bool:
    """Whether `--flag {param}` can carry the option: not a switch, and a value always exists (given or default)."""
    return not option.is_flag and (option.required or option.to_info_dict()["default"] is not None)


def param_name(option: click.Option) -> str:
    return option.opts[0].lstrip("-").replace("-", "_")


def param_type(option: click.Option) -> str:
    if isinstance(option.type, click.types.IntParamType):
        return "int"
    if isinstance(option.type, click.types.FloatParamType):
        return "float"
    if isinstance(option.type, click.Path) and option.type.exists:
        return "path"  # MLflow checks that it exists and makes it absolute
    return "string"


def test_every_method_and_tool_has_an_entry_point():
    assert set(ENTRY_POINTS) == METHODS | TOOLS
    for method in METHODS:
        assert script_of(ENTRY_POINTS[method]) == f"methods/{method}/train.py"


@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
def test_entry_point_mirrors_the_flags_and_defaults(name):
    entry = ENTRY_POINTS[name]
    params = click_command(entry).params
    options = {param_name(o): o for o in params if isinstance(o, click.Option)}
    arguments = {a.name: a for a in params if isinstance(a, click.Argument)}
    declared = entry["parameters"]
    assert set(declared) == {n for n, o in options.items() if expressible(o)} | set(arguments)
    for param, spec in declared.items():
        if param in arguments:
            assert f" {{{param}}}" in entry["command"] and spec == param_type(arguments[param]), param
            continue
        option = options[param]
        assert f"{option.opts[0]} {{{param}}}" in entry["command"], param
        spec = spec if isinstance(spec, dict) else {"type": spec}
        assert spec["type"] == param_type(option), param
        if option.required:
            assert "default" not in spec, param
        else:
            assert spec["default"] == option.default, param
            assert type(spec["default"]) is not str or isinstance(option.default, str), param


@pytest.mark.slow
def test_mlflow_run_trains_into_the_run_it_created(tmp_path, tiny_qwen2, synthetic_dataset):
    """`mlflow run` creates the run and sets MLFLOW_RUN_ID; the script must log there, not into a second run."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env = {
        **inherited,
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db",
        "HF_HUB_OFFLINE": "1",
        # The entry point runs `python`: this interpreter's environment, as an activated one would give.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    params = {
        "base_model": tiny_qwen2,
        "dataset": synthetic_dataset,
        "output_dir": tmp_path / "out",
        "max_steps": 6,
        "batch_size": 8,
        "gradient_accumulation": 1,
        "learning_rate": 0.01,
        "logging_steps": 3,
        "eval-steps": 3,  # undeclared: reaches the script as --eval-steps 3
    }
    command = [sys.executable, "-m", "mlflow", "run", REPO, "-e", "lora", "--env-manager", "local"]
    command += ["--experiment-name", "tests", *(f"-P{k}={v}" for k, v in params.items())]
    result = subprocess.run(list(map(str, command)), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]

    client, run = only_run(tmp_path)
    every_run = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [r.info.run_id for r in every_run] == [run.info.run_id]
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlflow.project.entryPoint"] == "lora"  # set by `mlflow run`
    assert run.data.tags["method"] == "lora"  # set by the script
    assert run.data.params["lora_r"] == "8"  # a declared default, logged by `mlflow run`
    assert run.data.params["eval_steps"] == "3"
    assert int(run.data.params["trainable_params"]) > 0  # logged by the script
    assert {"train_loss", "eval_loss", "best_eval_loss"} <= set(run.data.metrics)
    assert json.loads((tmp_path / "out" / "mlflow_run.json").read_text())["run_id"] == run.info.run_id
