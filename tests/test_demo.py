"""README's main job, scripts/demo.sh, step by step in a scratch folder: its own training command, read from the
script, with a shorter schedule; the full demo runs in CI as it ships."""

import json
import re
import shlex
import subprocess

from conftest import REPO, only_run, run_in_process, script_env


def demo_training_command() -> list[str]:
    """The tiny demo's `python methods/lora/train.py ...` line, its continuation lines joined, split as bash does."""
    script = (REPO / "scripts/demo.sh").read_text().replace("\\\n", " ")
    trainings = [line for line in script.splitlines() if line.startswith("python methods/lora/train.py")]
    [line] = [line for line in trainings if "models/tiny-qwen2" in line]
    return shlex.split(re.sub(r'"[^"]*\$\(date[^"]*"', "OUT", line))[2:]


def with_values(args: list[str], **values) -> list[str]:
    """ARGS with each --flag named in VALUES (underscores for dashes) given that value instead."""
    replaced = list(args)
    for name, value in values.items():
        replaced[replaced.index("--" + name.replace("_", "-")) + 1] = str(value)
    return replaced


def test_the_demo_trains_lora_on_the_bundled_humaneval_records(tmp_path, tiny_qwen2):
    data = tmp_path / "humaneval.json"
    prepared = run_in_process("scripts/prepare_data.py", "--format", "humaneval", "--output", data, cwd=tmp_path)
    assert prepared.returncode == 0, prepared.stderr[-3000:]

    args = demo_training_command()
    assert "--experiment-name" in args and "--max-steps" in args, "demo.sh's training command was read"
    out = tmp_path / "out"
    args = with_values(
        args, base_model=tiny_qwen2, dataset=data, output_dir=out, max_steps=4, eval_steps=2, experiment_name="tests"
    )
    trained = run_in_process("methods/lora/train.py", *args, cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]

    client, run = only_run(tmp_path)
    assert run.info.status == "FINISHED" and run.data.tags["method"] == "lora"
    assert run.data.params["dataset_rows"] == "164", "every HumanEval problem the package ships"
    assert run.data.params["max_length"] == "512" and run.data.params["learning_rate"] == "0.01"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "eval_loss")]
    assert steps == [0, 2, 4]
    assert (out / "adapter_model.safetensors").is_file()


def test_the_demo_ends_with_the_link_that_opens_its_experiments_runs_table(tmp_path):
    """demo.sh's closing line, run on a run file as its training writes one."""
    script = (REPO / "scripts/demo.sh").read_text()
    function = script[script.index("where_to_look() {") :]
    closing = function[: function.index("\n}\n") + 3] + script[script.rindex('echo "Done.') :]
    (tmp_path / "mlflow_run.json").write_text(json.dumps({"run_id": "0123", "experiment_id": "7"}))
    env = script_env({"MLFLOW_TRACKING_URI": "http://127.0.0.1:5000", "out": str(tmp_path)})
    result = subprocess.run(["bash", "-c", closing], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Done. See the run: http://127.0.0.1:5000/#/experiments/7?workflowType=machine_learning\n"
