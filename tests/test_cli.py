"""The scripts' command lines: MLproject mirrors the flags, and `--help` stays light."""

import subprocess
import sys

import click
import pytest
import yaml

from conftest import REPO, load_command
from shared.options import common_options

# Flags MLproject cannot carry as `--flag {value}`: switches, and optional flags without a default.
NOT_IN_MLPROJECT = {
    "bf16", "fp16", "gradient_checkpointing", "resume", "system_metrics",
    "dev_dataset", "cache_dir", "energy_log", "eval_steps", "run_name", "tracking_uri",
}  # fmt: skip


def test_mlproject_lora_entry_mirrors_the_flags_and_defaults():
    entry = yaml.safe_load((REPO / "MLproject").read_text())["entry_points"]["lora"]
    options = {p.name: p for p in load_command("methods/lora/train.py").params}
    declared = entry["parameters"]
    assert set(declared) == set(options) - NOT_IN_MLPROJECT
    for name, spec in declared.items():
        option = options[name]
        assert f"{option.opts[0]} {{{name}}}" in entry["command"], name
        if option.required:
            assert not isinstance(spec, dict) or "default" not in spec, name
        else:
            assert spec["default"] == option.default, name


SCRIPTS = sorted(str(p.relative_to(REPO)) for p in [*REPO.glob("methods/*/*.py"), *REPO.glob("scripts/*.py")])


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_imports_no_heavy_library(script):
    probe = (
        "import runpy, sys\n"
        f"sys.argv = [{script!r}, '--help']\n"
        "try:\n"
        f"    runpy.run_path({str(REPO / script)!r}, run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(sorted(m for m in ('torch', 'transformers', 'mlflow', 'peft') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO)
    assert "Usage:" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "[]"


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
