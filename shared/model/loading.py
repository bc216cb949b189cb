"""Loading the base model and tokenizer, and counting what a method trains."""

import logging

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from shared.model.gguf import model_folder
from shared.precision import bf16_enabled

log = logging.getLogger(__name__)


def weights_dtype(flags: dict) -> torch.dtype:
    """The dtype the base weights load in: the mixed-precision dtype when one is asked for, else float32."""
    if bf16_enabled(flags):
        return torch.bfloat16
    if flags["fp16"]:
        return torch.float16
    return torch.float32


def base_model_folder(flags: dict) -> str:
    """What --base-model loads from: the folder or hub id itself, or a GGUF file's converted folder."""
    return model_folder(flags["base_model"], flags["cache_dir"])


def load_config(flags: dict):
    return AutoConfig.from_pretrained(
        base_model_folder(flags), cache_dir=flags["cache_dir"], trust_remote_code=flags["trust_remote_code"]
    )


def load_tokenizer(flags: dict):
    tokenizer = AutoTokenizer.from_pretrained(
        base_model_folder(flags), cache_dir=flags["cache_dir"], trust_remote_code=flags["trust_remote_code"]
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def load_base_model(flags: dict, **kwargs) -> PreTrainedModel:
    """Load the base causal LM named by --base-model; `kwargs` go to `from_pretrained` (e.g. a quantization config)."""
    log.info("Loading base model %s", flags["base_model"])
    kwargs.setdefault("dtype", weights_dtype(flags))
    model = AutoModelForCausalLM.from_pretrained(
        base_model_folder(flags),
        cache_dir=flags["cache_dir"],
        trust_remote_code=flags["trust_remote_code"],
        attn_implementation=flags["attention"],
        use_safetensors=None if flags["allow_pickle_weights"] else True,  # None: safetensors first, pickle allowed
        **kwargs,
    )
    model.config.use_cache = False  # a KV cache is useless in training and costs memory
    return model


def count_parameters(model: torch.nn.Module) -> dict[str, float]:
    """Trainable and total parameter counts, and the trainable share in percent."""
    if hasattr(model, "get_nb_trainable_parameters"):  # PEFT's count unpacks 4-bit weights (two per byte)
        trainable, total = model.get_nb_trainable_parameters()
    else:
        sizes = [(getattr(p, "ds_numel", p.numel()), p.requires_grad) for p in model.parameters()]  # ZeRO-3: shards
        trainable = sum(size for size, requires_grad in sizes if requires_grad)
        total = sum(size for size, _ in sizes)
    return {"trainable_params": trainable, "total_params": total, "trainable_percent": 100 * trainable / total}
