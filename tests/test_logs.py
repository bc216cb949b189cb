"""shared/logs.py: a real method script's log without the library notices that hold nothing to act on.
(One line per message under torchrun: tests/test_fft.py, on its DeepSpeed run.)"""

import logging
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from conftest import FAST, REPO, only_run, run_script, script_env
from shared.logs import process_rank, quiet_library_noise

AVX512BF16 = {"PYTHONPATH": str(Path(__file__).resolve().parent / "avx512bf16")}
BNB_NOTICE = "Failed to load CPU gemm_4bit_forward"


@pytest.mark.slow
def test_the_stand_in_makes_bitsandbytes_log_its_notice():
    """The control: without shared.logs, importing peft (which imports bitsandbytes) logs the notice."""
    result = subprocess.run(
        [sys.executable, "-c", "import peft"], cwd=REPO, env=AVX512BF16, capture_output=True, text=True
    )
    assert result.returncode == 0 and BNB_NOTICE in result.stderr


@pytest.mark.slow
def test_a_method_that_never_quantizes_logs_no_bitsandbytes_notice(tmp_path, tiny_qwen2, synthetic_dataset):
    result = run_script(
        "methods/bitfit/train.py", "--base-model", tiny_qwen2, "--dataset", synthetic_dataset,
        "--output-dir", tmp_path / "out", "--experiment-name", "tests", *FAST, "--max-steps", 1, "--eval-steps", 1,
        "--no-system-metrics", cwd=tmp_path, env=AVX512BF16,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert BNB_NOTICE not in result.stderr + result.stdout
    assert "INFO shared.train.checks: Held out" in result.stderr, "the script's own INFO lines still show"
    assert only_run(tmp_path)[1].info.status == "FINISHED"


def test_the_known_notices_are_dropped_and_every_other_line_kept(caplog):
    quiet_library_noise()
    deepspeed = logging.getLogger("DeepSpeed")
    with caplog.at_level(logging.INFO, logger="DeepSpeed"):
        deepspeed.info("Setting ds_accelerator to cpu (auto detect)")
        deepspeed.info("Setting accelerator to cpu")
        deepspeed.warning("Setting the stage: ZeRO-3 found no parameters to shard")
    assert [r.getMessage() for r in caplog.records] == ["Setting the stage: ZeRO-3 found no parameters to shard"]


def test_peft_wrapping_a_model_warns_of_no_deprecation_of_another_library(tiny_qwen2):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    def wrapping_warnings(quiet: bool) -> list[str]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if quiet:
                quiet_library_noise()
            get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_qwen2), LoraConfig(target_modules="all-linear"))
        return [str(w.message) for w in caught if issubclass(w.category, FutureWarning)]

    assert any("is_gradient_checkpointing" in message for message in wrapping_warnings(quiet=False)), "the control"
    assert wrapping_warnings(quiet=True) == []


def test_the_rank_comes_from_the_launcher_and_is_0_without_one(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    assert process_rank() == 0
    monkeypatch.setenv("RANK", "3")
    assert process_rank() == 3


DOWNLOAD = """
import sys
{prelude}
import mlflow
mlflow.set_tracking_uri(sys.argv[1])
with mlflow.start_run() as run:
    mlflow.log_text("hello", "report/notes.txt")
mlflow.MlflowClient().download_artifacts(run.info.run_id, "report/notes.txt", sys.argv[2])
"""


def test_artifact_downloads_draw_no_progress_bar(tmp_path):
    """MLflow draws a bar per download (a study's report makes one per final run); shared's import turns it off."""

    def stderr_of(prelude: str, name: str) -> str:
        (tmp_path / name).mkdir()
        store = f"sqlite:///{tmp_path / name / 'mlflow.db'}"
        code = DOWNLOAD.format(prelude=prelude)
        result = subprocess.run(
            [sys.executable, "-c", code, store, str(tmp_path / name)],
            capture_output=True, text=True, cwd=REPO, env=script_env(), timeout=120,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-2000:]
        return result.stderr

    assert "Downloading artifacts" in stderr_of("", "plain"), "MLflow's bar: what the setting removes"
    assert "Downloading artifacts" not in stderr_of("import shared", "quiet")
