"""A study's spec: the YAML file, read and checked against the real scripts before anything trains.

Every flag a spec sets is checked by the click command of the script that will receive it (the method's
`train.py`, or `scripts/evaluate.py`), so a spec accepts exactly what the command line accepts, and an error names
the spec key. Paths in a spec are relative to the directory the study runs from, as on the command line. A number
may be written as a string: YAML 1.1 reads `3e-3` (no dot) as one.
"""

import importlib.util
import math
import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from shared.model_source import ModelSourceError, check_model_source

REPO = Path(__file__).resolve().parents[2]
METHODS = ("lora", "qlora", "bitfit", "prefix", "fft")

# Where each default grid comes from (docs/study.md): LoRA and QLoRA around the 2e-4 of the QLoRA paper and
# PEFT's examples; BitFit and prefix tuning train few parameters and want larger steps (the BitFit paper searched
# 1e-4 to 1e-3; PEFT's prefix-tuning examples use 1e-2 to 3e-2); full fine-tuning around Alpaca's 2e-5.
DEFAULT_LEARNING_RATES = {
    "lora": (1e-4, 2e-4, 5e-4, 1e-3),
    "qlora": (1e-4, 2e-4, 5e-4, 1e-3),
    "bitfit": (1e-4, 1e-3, 1e-2),
    "prefix": (1e-3, 3e-3, 1e-2, 3e-2),
    "fft": (1e-5, 2e-5, 5e-5),
}
# Set by the study for every child; a spec that sets them would break its bookkeeping.
STUDY_TRAINING_FLAGS = (
    "base_model", "dataset", "dev_dataset", "output_dir", "learning_rate", "seed",
    "experiment_name", "run_name", "tracking_uri", "resume",
)  # fmt: skip
STUDY_EVALUATION_FLAGS = (
    "model", "completions", "base_model", "output_dir", "run_id", "new_run", "tracking_uri",
    "experiment_name", "training_data",
)  # fmt: skip
TOP_KEYS = {
    "name", "base_model", "dataset", "dev_dataset", "evaluation", "flags", "methods", "sweep_seeds", "seeds",
    "experiment_name", "description", "reuse_sweep_seeds",
}  # fmt: skip
FINAL_SEEDS = 3  # the finals' seeds when the spec lists none: the first integers that are not sweep seeds
METHOD_KEYS = {"learning_rates", "flags", "launcher"}


class SpecError(click.ClickException):
    """A study spec that cannot run: the message names the file and the key."""


@dataclass(frozen=True)
class MethodPlan:
    name: str
    learning_rates: tuple[float, ...]
    arguments: tuple[str, ...]  # the common and the method's own flags, as train.py takes them
    launcher: tuple[str, ...]  # what starts train.py: the interpreter, or e.g. torchrun and its flags

    @property
    def script(self) -> Path:
        return REPO / "methods" / self.name / "train.py"


@dataclass(frozen=True)
class StudySpec:
    path: Path
    name: str
    base_model: str
    dataset: str  # one file, or several joined with os.pathsep: how --dataset (and --training-data) take them
    dev_dataset: Path | None
    experiment_name: str
    methods: dict[str, MethodPlan]
    sweep_seeds: tuple[int, ...]
    seeds: tuple[int, ...]  # disjoint from sweep_seeds unless reuse_sweep_seeds
    evaluation: tuple[str, ...]  # scripts/evaluate.py flags
    benchmark: str
    raw: dict = field(default_factory=dict, compare=False)


def load_command(script: Path) -> click.Command:
    """A script's click command, imported without running it (its heavy imports wait until it runs)."""
    spec = importlib.util.spec_from_file_location(f"study_{script.parent.name}_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def load_spec(path: Path) -> StudySpec:
    """Read and check a spec; any problem is a SpecError naming the key, raised before anything runs."""
    import yaml

    try:
        raw = yaml.safe_load(Path(path).read_text())
    except OSError as err:
        raise SpecError(f"{path}: cannot read the spec ({err.strerror})") from None
    except yaml.YAMLError as err:
        raise SpecError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: a spec is a mapping of keys (name, base_model, dataset, methods, ...)")
    where = _Where(path)
    unknown = sorted(set(raw) - TOP_KEYS)
    if unknown:
        raise where.error(unknown[0], f"unknown key (known: {', '.join(sorted(TOP_KEYS))})")
    name = where.text(raw, "name")
    base_model = where.text(raw, "base_model")
    try:
        check_model_source(base_model, f"{path}: base_model")
    except ModelSourceError as err:
        raise SpecError(err.format_message()) from None
    dataset = where.existing_files(raw, "dataset")
    dev_dataset = where.existing_file(raw, "dev_dataset") if raw.get("dev_dataset") is not None else None
    common = where.mapping(raw, "flags")
    methods = where.mapping(raw, "methods")
    if not methods:
        raise where.error("methods", "list at least one method")
    plans = {method: _method_plan(where, method, settings, common) for method, settings in methods.items()}
    evaluation = where.mapping(raw, "evaluation")
    if "benchmark" not in evaluation:
        raise where.error("evaluation.benchmark", "required: the held-out benchmark every final model is scored on")
    evaluation_arguments = _arguments(
        where, "evaluation", load_command(REPO / "scripts" / "evaluate.py"), evaluation, STUDY_EVALUATION_FLAGS
    )
    sweep_seeds, seeds = _seeds(where, raw)
    return StudySpec(
        path=Path(path),
        name=name,
        base_model=base_model,
        dataset=dataset,
        dev_dataset=dev_dataset,
        experiment_name=where.text(raw, "experiment_name", default=name),
        methods=plans,
        sweep_seeds=sweep_seeds,
        seeds=seeds,
        evaluation=tuple(evaluation_arguments),
        benchmark=str(evaluation["benchmark"]),
        raw=raw,
    )


def _seeds(where: "_Where", raw: dict) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The sweep's seeds and the finals': disjoint unless the spec asks to reuse sweep seeds. A final at a sweep
    seed would be the sweep's winner itself, whose dev loss is low partly by the luck that made it win."""
    reuse = raw.get("reuse_sweep_seeds", False)
    if not isinstance(reuse, bool):
        raise where.error("reuse_sweep_seeds", f"expected true or false, got {reuse!r}")
    sweep_seeds = where.seeds(raw, "sweep_seeds", default=(1,))
    unused = (seed for seed in range(1, len(sweep_seeds) + FINAL_SEEDS + 1) if seed not in sweep_seeds)
    seeds = where.seeds(raw, "seeds", default=tuple(unused)[:FINAL_SEEDS])
    shared = sorted(set(seeds) & set(sweep_seeds))
    if shared and not reuse:
        raise where.error(
            "seeds",
            f"shares {', '.join(map(str, shared))} with sweep_seeds: a final at a sweep seed reuses the sweep's "
            "winner, whose dev loss is biased low by the luck that made it win; list other seeds, or set "
            "reuse_sweep_seeds: true to reuse it anyway",
        )
    return sweep_seeds, seeds


def _method_plan(where: "_Where", method: Any, settings: Any, common: dict) -> MethodPlan:
    key = f"methods.{method}"
    if method not in METHODS:
        raise where.error(key, f"unknown method (known: {', '.join(METHODS)})")
    settings = {} if settings is None else settings
    if not isinstance(settings, dict):
        raise where.error(key, "expected a mapping with learning_rates, flags, launcher (or nothing)")
    unknown = sorted(set(settings) - METHOD_KEYS)
    if unknown:
        raise where.error(f"{key}.{unknown[0]}", f"unknown key (known: {', '.join(sorted(METHOD_KEYS))})")
    rates = settings.get("learning_rates", DEFAULT_LEARNING_RATES[method])
    if not isinstance(rates, list | tuple) or not rates:
        raise where.error(f"{key}.learning_rates", "expected a non-empty list of learning rates")
    values = [_number(rate) for rate in rates]
    if not all(value is not None and value > 0 for value in values):
        raise where.error(f"{key}.learning_rates", f"every learning rate must be a number above 0, got {rates}")
    rates = values
    if len(set(rates)) != len(rates):
        raise where.error(f"{key}.learning_rates", f"a learning rate is listed twice: {rates}")
    own = where.mapping(settings, "flags", prefix=f"{key}.")
    command = load_command(REPO / "methods" / method / "train.py")
    arguments = _arguments(where, "flags", command, common, STUDY_TRAINING_FLAGS, script=f"methods/{method}")
    arguments += _arguments(where, f"{key}.flags", command, own, STUDY_TRAINING_FLAGS, script=f"methods/{method}")
    launcher = settings.get("launcher")
    if launcher is not None and (not isinstance(launcher, str) or not launcher.strip()):
        raise where.error(f"{key}.launcher", "expected a command such as 'torchrun --nproc_per_node 2'")
    return MethodPlan(method, tuple(rates), tuple(arguments), tuple(shlex.split(launcher or sys.executable)))


def _number(value: Any) -> float | None:
    """A finite number, also when written as a string ("3e-3", which YAML 1.1 reads as one); None otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        value = float(value)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _arguments(
    where: "_Where", key: str, command: click.Command, flags: dict, reserved: tuple, script: str = "scripts/evaluate"
) -> list[str]:
    """Command-line arguments for `flags` ({flag_name: value}), each value checked by the command's own option."""
    params = {param.name: param for param in command.params if isinstance(param, click.Option)}
    context = click.Context(command)
    arguments = []
    for name, value in flags.items():
        flag_key = f"{key}.{name}"
        if name in reserved:
            raise where.error(flag_key, "set by the study for every run: remove it from the spec")
        param = params.get(name)
        if param is None:
            raise where.error(flag_key, f"{script} takes no --{str(name).replace('_', '-')}")
        arguments += _option_arguments(where, flag_key, param, value, context)
    return arguments


def _option_arguments(where: "_Where", key: str, param: click.Option, value: Any, context) -> list[str]:
    if param.is_flag:
        if not isinstance(value, bool):
            raise where.error(key, f"a switch: expected true or false, got {value!r}")
        if param.secondary_opts:
            return [param.opts[0] if value else param.secondary_opts[0]]
        return [param.opts[0]] if value else []
    values = value if param.multiple else [value]
    if param.multiple and not isinstance(value, list):
        raise where.error(key, f"expected a list, got {value!r}")
    arguments = []
    for item in values:
        text = ",".join(map(str, item)) if isinstance(item, list) else _text(param, item)  # evaluation k: [1, 10]
        try:
            param.type_cast_value(context, [text] if param.multiple else text)
        except click.BadParameter as err:
            raise where.error(key, err.format_message()) from None
        arguments += [param.opts[0], text]
    return arguments


def _text(param: click.Option, value: Any) -> str:
    """A value as the option reads it; a whole number written as 1.0e+3 or "1e3" is the integer an integer
    option wants."""
    if isinstance(value, bool):
        return str(value).lower()  # a switch that also takes another word (--bf16 true|false|auto)
    whole = _number(value)
    if isinstance(param.type, click.types.IntParamType) and whole is not None and whole.is_integer():
        return str(int(whole))
    return str(value)


class _Where:
    """Reads typed values out of the spec; errors name the file and the key."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def error(self, key: str, message: str) -> SpecError:
        return SpecError(f"{self.path}: {key}: {message}")

    def text(self, raw: dict, key: str, default: str | None = None) -> str:
        value = raw.get(key, default)
        if not isinstance(value, str) or not value.strip():
            raise self.error(key, "required: expected a non-empty string")
        return value

    def existing_file(self, raw: dict, key: str) -> Path:
        path = Path(self.text(raw, key))
        if not path.is_file():
            raise self.error(key, f"{path} is not a file (paths are relative to the directory the study runs from)")
        return path

    def existing_files(self, raw: dict, key: str) -> str:
        """One file, or a list of files trained on together, joined with os.pathsep."""
        value = raw.get(key)
        if not isinstance(value, list):
            return str(self.existing_file(raw, key))
        if not value:
            raise self.error(key, "expected a file or a non-empty list of files")
        items = {f"{key}[{index}]": item for index, item in enumerate(value)}
        paths = [str(self.existing_file(items, item_key)) for item_key in items]
        if any(os.pathsep in path for path in paths):
            raise self.error(key, f"a file name holding '{os.pathsep}' cannot be listed: it separates the files")
        return os.pathsep.join(paths)

    def mapping(self, raw: dict, key: str, prefix: str = "") -> dict:
        value = raw.get(key)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.error(prefix + key, f"expected a mapping, got {value!r}")
        return value

    def seeds(self, raw: dict, key: str, default: tuple[int, ...]) -> tuple[int, ...]:
        value = raw.get(key, list(default))
        if not isinstance(value, list) or not value:
            raise self.error(key, "expected a non-empty list of integer seeds")
        seeds = [_number(seed) for seed in value]
        if not all(seed is not None and seed.is_integer() for seed in seeds) or len(set(seeds)) < len(seeds):
            raise self.error(key, f"expected distinct integer seeds, got {value}")
        return tuple(int(seed) for seed in seeds)
