"""A tracking server that is down at the start, and one that dies mid-run (a real `mlflow server` we stop)."""

import json
import os
import subprocess
import sys
import time

import pytest
from mlflow import MlflowClient

from conftest import FAST, REPO, run_script
from mlflow_server import free_port, running_server
from shared.track.outbox import OUTBOX_FILE


def test_an_unreachable_server_fails_the_job_in_seconds_before_loading(tmp_path, tiny_qwen2, synthetic_dataset):
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    result = run_script(
        "methods/lora/train.py", "--base-model", tiny_qwen2, "--dataset", synthetic_dataset,
        "--output-dir", tmp_path / "out", "--tracking-uri", uri, cwd=tmp_path,
    )  # fmt: skip
    elapsed = time.monotonic() - started
    assert result.returncode == 1
    assert f"the MLflow tracking server at {uri} does not answer" in result.stderr
    assert "Loading base model" not in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()
    assert elapsed < 60, f"{elapsed:.0f} s: no minutes of retries"  # Python and torch imports take most of it


@pytest.mark.slow
def test_a_server_lost_mid_run_loses_nothing(tmp_path, tiny_qwen2, synthetic_dataset):
    root, out = tmp_path / "server", tmp_path / "out"
    root.mkdir()
    port = free_port()
    args = [
        "--base-model", tiny_qwen2, "--dataset", synthetic_dataset, "--output-dir", out, "--experiment-name", "tests",
        *FAST, "--gradient-accumulation", 4, "--eval-steps", 5, "--max-steps", 100, "--logging-steps", 5,
        "--no-system-metrics",
    ]  # fmt: skip
    # 100 steps: the job is still training seconds after its first checkpoint, when the server is stopped.
    with running_server(root, port) as uri:
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "HF_HUB_OFFLINE": "1"}
        command = [sys.executable, str(REPO / "methods/lora/train.py"), *map(str, args)]
        job = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 180
        while not list(out.glob("checkpoint-*")) and time.monotonic() < deadline:
            assert job.poll() is None
            time.sleep(0.2)
    # The server is stopped here; training goes on without it.
    _, stderr = job.communicate(timeout=600)
    stderr = stderr.decode()
    assert job.returncode == 0, stderr[-3000:]
    assert "MLflow is unreachable" in stderr and "scripts/send_unsent.py" in stderr
    kept = [json.loads(line) for line in (out / OUTBOX_FILE).read_text().splitlines()]
    assert kept[-1]["status"] == "FINISHED"
    assert any("points" in action for action in kept) and any("upload" in action for action in kept)
    assert (out / "training_complete.json").is_file()

    with running_server(root, port) as uri:
        run_id = json.loads((out / "mlflow_run.json").read_text())["run_id"]
        client = MlflowClient(uri)
        assert client.get_run(run_id).info.status == "RUNNING", "the server never heard the end"
        sent = run_script("scripts/send_unsent.py", out, "--tracking-uri", uri)
        assert sent.returncode == 0, sent.stderr[-3000:]
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        steps = [m.step for m in client.get_metric_history(run_id, "eval_loss")]
        final_step = json.loads((out / "trainer_state.json").read_text())["global_step"]
        assert steps == list(range(0, final_step + 1, 5)), "every evaluation, once, before and after the loss"
        assert "best_eval_loss" in run.data.metrics
        assert "model" in {a.path for a in client.list_artifacts(run_id)}
        assert not (out / OUTBOX_FILE).exists()
