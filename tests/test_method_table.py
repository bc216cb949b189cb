"""The README's method table comes from measured runs: the script trains, reads MLflow, and fills the block."""

import re

import click
import pytest

from conftest import load_command, run_script


@pytest.mark.slow
def test_table_is_measured_and_written_into_the_readme(tmp_path, tiny_qwen2, synthetic_dataset):
    readme = tmp_path / "README.md"
    readme.write_text("# Title\n\n<!-- method-table:start -->\nold\n<!-- method-table:end -->\n\nAfter.\n")
    result = run_script(
        "scripts/method_table.py", "--methods", "lora,bitfit", "--base-model", tiny_qwen2,
        "--dataset", synthetic_dataset, "--steps", 4, "--hardware", "a test CPU", "--update-readme", readme,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    text = readme.read_text()
    assert "old" not in text and text.startswith("# Title") and text.endswith("After.\n")
    rows = re.findall(r"^\| (lora|bitfit) \| ([\d.]+) \| ([\d,]+) \| ([\d,]+) \| (.+) \|$", text, flags=re.MULTILINE)
    assert [row[0] for row in rows] == ["lora", "bitfit"]
    lora, bitfit = rows
    assert float(bitfit[1]) < float(lora[1]) < 100, "BitFit trains fewer parameters than LoRA here"
    assert all(int(row[2].replace(",", "")) > 0 and int(row[3].replace(",", "")) > 0 for row in rows)
    assert (lora[4], bitfit[4]) == ("yes", "no")
    assert "on a test CPU" in text


def test_a_readme_without_the_block_is_refused(tmp_path, tiny_qwen2, synthetic_dataset):
    readme = tmp_path / "README.md"
    readme.write_text("# No block here\n")
    result = run_script(
        "scripts/method_table.py", "--methods", "bitfit", "--base-model", tiny_qwen2,
        "--dataset", synthetic_dataset, "--steps", 2, "--update-readme", readme,
    )  # fmt: skip
    assert result.returncode == 1 and "method-table:start" in result.stderr
    assert readme.read_text() == "# No block here\n"


def test_a_named_block_is_filled_and_the_others_kept():
    replace_block = load_command("scripts/method_table.py").callback.__globals__["replace_block"]
    text = "<!-- method-table:start -->\ntiny\n<!-- method-table:end -->\n<!-- real:start -->\nold\n<!-- real:end -->\n"
    assert replace_block(text, "new", "real") == text.replace("old", "new")


def test_per_method_flags_are_read_and_a_bad_one_refused():
    parse = load_command("scripts/method_table.py").callback.__globals__["parse_method_flags"]
    assert parse(("bitfit=--trainable-pattern 'norm|embed'",)) == {"bitfit": ["--trainable-pattern", "norm|embed"]}
    with pytest.raises(click.BadParameter, match="'adalora=--x': expected METHOD=FLAGS"):
        parse(("adalora=--x",))
