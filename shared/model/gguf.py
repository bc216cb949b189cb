"""A GGUF file as a base model: dequantized once into an ordinary model folder (float32 safetensors, its tokenizer
and chat template), which every later load reads in a second or two instead of dequantizing again.

transformers loads a GGUF file as a "gguf-quantized" model that it will neither train nor save; a copy of its
weights into a plain model of the same config is both.
"""

import fcntl
import json
import logging
import os
import shutil
from pathlib import Path

from shared.model_source import SOURCE_FILE, check_model_source, is_gguf

log = logging.getLogger(__name__)

CACHE_ENV = "PEFT_WORKBENCH_CACHE"  # where converted GGUF models are kept; default ~/.cache/fine-tuning-workbench


def cache_root(cache_dir: str | Path | None = None) -> Path:
    if cache_dir:
        return Path(cache_dir) / "gguf"
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fine-tuning-workbench"
    return Path(os.environ.get(CACHE_ENV, default)) / "gguf"


def model_folder(name: str, cache_dir: str | Path | None = None) -> str:
    """The folder (or hub id) to load for `name`: a GGUF file's converted folder, made on first use; else `name`."""
    if not is_gguf(name):
        return name
    source = check_model_source(name)
    folder = cache_root(cache_dir) / f"{Path(name).stem}-{source['gguf_sha256'][:16]}"
    if (folder / "config.json").is_file():
        return str(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with (folder.parent / f"{folder.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel study children: one converts, the others wait and reuse
        if not (folder / "config.json").is_file():
            convert_gguf(Path(name), folder, source)
    return str(folder)


def convert_gguf(gguf_file: Path, output_dir: Path, source: dict[str, str] | None = None) -> None:
    """Dequantize `gguf_file` to float32 and save it, with its tokenizer, as an ordinary model folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = source or check_model_source(str(gguf_file))
    log.info("Converting %s (%s) to a model folder at %s", gguf_file, source["gguf_quant_type"], output_dir)
    where = {"pretrained_model_name_or_path": gguf_file.parent, "gguf_file": gguf_file.name}
    tokenizer = AutoTokenizer.from_pretrained(**where)
    loaded = AutoModelForCausalLM.from_pretrained(**where, dtype=torch.float32)
    config = loaded.config
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    partial = output_dir.with_name(f"{output_dir.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    (partial / SOURCE_FILE).write_text(json.dumps(source, indent=2) + "\n")
    partial.rename(output_dir)  # a folder with config.json in it is always whole
