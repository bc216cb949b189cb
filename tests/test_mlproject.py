"""MLproject: every entry point mirrors its script's flags, and `mlflow run` trains into the run it created."""

import functools
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import click
import pytest
import torch
import yaml

from conftest import REPO, only_run, run_script, script_env, spelled_digits
from shared.data import sources

ENTRY_POINTS = yaml.safe_load((REPO / "MLproject").read_text())["entry_points"]
TOOLS = {"prepare_data", "prepare_balanced_data", "merge", "evaluate", "compare", "study", "show_answers"}
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
    if isinstance(option.type, click.Path) and option.type.exists and not option.multiple:
        return "path"  # MLflow checks that it exists and makes it absolute
    return "string"  # several paths joined with os.pathsep (--dataset) are no one path


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


def sample_values(option: click.Parameter, folder: Path) -> list[str]:
    """Values to try for an option, valid ones among them: an existing file or folder for a path, each choice."""
    if isinstance(option.type, click.Path):
        path = folder / ("folder" if not option.type.file_okay else "file.json")
        return [str(path)]
    if isinstance(option.type, click.Choice):
        return [str(choice) for choice in option.type.choices]
    if isinstance(option, click.Option) and (option.is_flag or option._flag_needs_value):
        return ["false", "true", "auto"]  # auto: --bf16's third value
    return ["3", "2", "0.5", "64", "x1", "1", "zero2"]


@functools.cache
def mlflow_project():
    from mlflow.projects._project_spec import load_project

    return load_project(REPO)


def mlflow_command(name: str, parameters: dict) -> list[str]:
    """The arguments `mlflow run . -e NAME -P k=v ...` hands the script, built by MLflow's own code."""
    command = mlflow_project().get_entry_point(name).compute_command(parameters, storage_dir=None)
    subcommand = not ENTRY_POINTS[name]["command"].split()[2].startswith(("-", "{"))  # study.py run ...
    return shlex.split(command)[3 if subcommand else 2 :]


def parse(command: click.Command, args: list[str]) -> dict | None:
    """The values `command` reads from `args`, or None when it refuses them."""
    try:
        return command.make_context("script", list(args)).params
    except click.ClickException:
        return None


@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
def test_every_option_is_reachable_by_its_underscore_name(name, tmp_path):
    """Each option, set as `-P underscore_name=value`, reaches the script with that value: declared parameters
    through the command template, the others as `--underscore_name value`, switches as `--switch true|false`."""
    (tmp_path / "folder").mkdir()
    (tmp_path / "file.json").write_text("[]")
    command = click_command(ENTRY_POINTS[name])
    params = [p for p in command.params if p.name != "help"]
    required = {}
    for param in params:
        if param.required or isinstance(param, click.Argument):
            key = param_name(param) if isinstance(param, click.Option) else param.name
            required[key] = next(v for v in sample_values(param, tmp_path) if parse_one(param, v) is not None)
    base = parse(command, mlflow_command(name, required))
    assert base is not None, f"{name}: the required parameters alone do not parse"
    for option in (p for p in params if isinstance(p, click.Option) and not p.required):
        key = param_name(option)
        for value in sample_values(option, tmp_path):
            expected = parse(command, [*mlflow_command(name, required), option.opts[0], value])
            if expected is not None and expected[option.name] != base[option.name]:
                break
        else:
            pytest.fail(f"{name}: found no value that changes --{key}")
        got = parse(command, mlflow_command(name, {**required, key: value}))
        assert got is not None and got[option.name] == expected[option.name], f"{name}: -P {key}={value}"


def parse_one(param: click.Parameter, value: str):
    try:
        return param.type.convert(value, param, None)
    except click.BadParameter:
        return None


def mlflow_run(cwd: Path, entry: str, params: dict, *options: str) -> subprocess.CompletedProcess:
    """`mlflow run REPO -e ENTRY -P k=v ...` as a user types it, into the sqlite store at CWD/mlflow.db."""
    env = script_env(
        {
            "MLFLOW_TRACKING_URI": f"sqlite:///{cwd}/mlflow.db",
            # The entry point runs `python`: this interpreter's environment, as an activated one would give.
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        }
    )
    command = [sys.executable, "-m", "mlflow", "run", REPO, "-e", entry, "--env-manager", "local", *options]
    command += [f"-P{k}={v}" for k, v in params.items()]
    return subprocess.run(list(map(str, command)), cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


FAST_PARAMS = {"max_steps": 6, "batch_size": 8, "gradient_accumulation": 1, "learning_rate": 0.01, "logging_steps": 3}


@pytest.mark.slow
def test_mlflow_run_trains_into_the_run_it_created(tmp_path, tiny_qwen2, synthetic_dataset):
    """`mlflow run` creates the run and sets MLFLOW_RUN_ID; the script logs there, not into a second run, with
    flags MLproject does not declare (an optional flag, a switch) set by their underscore names."""
    dev = tmp_path / "dev.json"
    dev.write_text(json.dumps(spelled_digits(16, seed=7)))
    params = {
        "base_model": tiny_qwen2,
        "dataset": synthetic_dataset,
        "output_dir": tmp_path / "out",
        **FAST_PARAMS,
        "eval_steps": 3,  # undeclared: reaches the script as --eval_steps 3
        "dev_dataset": dev,
        "bf16": "true",
    }
    result = mlflow_run(tmp_path, "lora", params, "--experiment-name", "tests")
    assert result.returncode == 0, result.stderr[-3000:]

    client, run = only_run(tmp_path)
    every_run = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [r.info.run_id for r in every_run] == [run.info.run_id]
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlflow.project.entryPoint"] == "lora"  # set by `mlflow run`
    assert run.data.tags["method"] == "lora"  # set by the script
    assert re.fullmatch(r"lora-\d{8}-\d{6}", run.info.run_name), run.info.run_name
    params = run.data.params
    assert params["lora_r"] == "8"  # a declared default, logged by `mlflow run`
    assert params["experiment_name"] == "tests"  # the experiment the run is in
    assert params["eval_steps"] == "3" and params["bf16"] == "true" and params["dev_dataset"] == str(dev)
    assert params["dev_rows"] == "16" and params["train_rows"] == "240"
    assert int(params["trainable_params"]) > 0  # logged by the script
    assert "stays" not in result.stderr, "the script logged every value as `mlflow run` had"
    evaluations = client.get_metric_history(run.info.run_id, "eval_loss")
    assert [m.step for m in evaluations] == [0, 3, 6]
    settings = torch.load(tmp_path / "out" / "training_args.bin", weights_only=False)
    assert settings.bf16 is True
    assert json.loads((tmp_path / "out" / "mlflow_run.json").read_text())["run_id"] == run.info.run_id


@pytest.mark.slow
def test_mlflow_run_keeps_the_name_it_was_given(tmp_path, tiny_qwen2, synthetic_dataset):
    params = {"base_model": tiny_qwen2, "dataset": synthetic_dataset, "output_dir": tmp_path / "out"}
    params.update(FAST_PARAMS, max_steps=2, packing="false")
    result = mlflow_run(tmp_path, "bitfit", params, "--experiment-name", "tests", "--run-name", "my-try")
    assert result.returncode == 0, result.stderr[-3000:]
    _, run = only_run(tmp_path)
    assert run.info.run_name == "my-try" and run.info.status == "FINISHED"
    assert run.data.params["packing"] == "false" and run.data.tags["method"] == "bitfit"


@pytest.mark.slow
def test_mlflow_run_refuses_a_bad_switch_value_naming_it(tmp_path, synthetic_dataset):
    params = {"base_model": "no-model", "dataset": synthetic_dataset, "output_dir": tmp_path / "out", "bf16": "maybe"}
    result = mlflow_run(tmp_path, "lora", params, "--experiment-name", "tests")
    assert result.returncode != 0
    assert "Invalid value for '--bf16': 'maybe' is not a valid boolean" in result.stderr
    _, run = only_run(tmp_path)
    assert run.info.status == "FAILED"
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_several_training_files_through_mlflow_run_as_on_the_command_line(tmp_path, tiny_qwen2):
    """-P dataset=a.json:b.jsonl trains on both files, exactly as --dataset a.json --dataset b.jsonl does: same
    records, same dev split, same data order."""
    records = spelled_digits(120, seed=3)
    first, second = tmp_path / "a.json", tmp_path / "b.jsonl"
    first.write_text(json.dumps(records[:80]))
    second.write_text("\n".join(json.dumps(r) for r in records[80:]))
    sources.write_sidecar(first, {"format": "io", "sources": ["digits.jsonl"]})  # as prepare_data.py leaves it
    short = {**FAST_PARAMS, "max_steps": 2}
    params = {"base_model": tiny_qwen2, "dataset": f"{first}{os.pathsep}{second}", "output_dir": tmp_path / "mlflow"}
    result = mlflow_run(tmp_path, "lora", {**params, **short}, "--experiment-name", "tests")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{first}: 80 records" in result.stderr and f"{second}: 40 records" in result.stderr
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in short.items()]
    by_hand = run_script(
        "methods/lora/train.py", "--base-model", tiny_qwen2, "--dataset", first, "--dataset", second,
        "--output-dir", tmp_path / "cli", "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db",
        "--experiment-name", "by-hand", *flags, cwd=tmp_path,
    )  # fmt: skip
    assert by_hand.returncode == 0, by_hand.stderr[-3000:]

    client, run = only_run(tmp_path)
    other = client.search_runs([client.get_experiment_by_name("by-hand").experiment_id])[0]
    assert run.data.params["dataset"] == other.data.params["dataset"] == f"{first}{os.pathsep}{second}"
    assert run.data.params["dataset_rows"] == "120"
    keys = ("dataset_sha256", "train_rows", "dev_rows", "data_order_sha256")
    assert {k: run.data.params[k] for k in keys} == {k: other.data.params[k] for k in keys}
    assert run.data.params["dataset_sha256"].count(",") == 1, "one digest per file"
    assert run.data.params["prepared_format"] == "io; -", "how each file was prepared, '-' for none"
    training_inputs = [i.dataset for i in run.inputs.dataset_inputs if i.tags[0].value == "training"]
    assert [d.name for d in training_inputs] == ["a.json+b.jsonl"]
    assert json.loads(training_inputs[0].source)["uri"] == f"{first}{os.pathsep}{second}"
    assert "stays" not in result.stderr
