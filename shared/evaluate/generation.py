"""Generating answers from any trained output: tell what a folder holds, load it, and sample completions in batches.

Prompts are rendered as training rendered them by default (shared.data.batching.render: the chat template, or the
Alpaca prompt without one), or in the style asked for (a plain continuation of the task's text, say), and generation
stops at the end-of-turn token. vLLM serves full models and LoRA adapters when it is installed;
prefix adapters always use the Hugging Face backend (vLLM cannot serve prefixes).
"""

import importlib.util
import inspect
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import click

from shared.data.batching import ALPACA_PROMPT, render
from shared.model.gguf import model_folder
from shared.model_source import check_model_source, is_gguf

log = logging.getLogger(__name__)

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")  # never pickles: loading one can run code
# auto: as training rendered records; chat: the tokenizer's template; alpaca: the Alpaca prompt; completion: the
# task's own text, for the model to continue.
PROMPT_STYLES = ("auto", "chat", "alpaca", "completion")


class ModelFolderError(click.ClickException):
    """A --model folder that is not a training output this script can load."""


@dataclass(frozen=True)
class TrainedOutput:
    path: Path
    kind: str  # "lora adapter", "prefix adapter", "adapter" (another PEFT type) or "full model"
    base_model: str | None  # adapters only: the base they were trained on

    @property
    def is_adapter(self) -> bool:
        return self.kind != "full model"


def detect_output(path: Path, base_model: str | None = None) -> TrainedOutput:
    """What a folder holds: a PEFT adapter (LoRA/QLoRA, prefix) or a full model (BitFit, FFT, merged); a GGUF file
    is read as the model folder it converts to."""
    if is_gguf(path):
        check_model_source(str(path), "--model")
        path = Path(model_folder(str(path)))
    if not path.is_dir():
        raise ModelFolderError(f"{path}: no such folder")
    adapter_config = path / "adapter_config.json"
    if adapter_config.is_file():
        try:
            config = json.loads(adapter_config.read_text())
        except json.JSONDecodeError as err:
            raise ModelFolderError(f"{adapter_config}: not valid JSON ({err.msg} at line {err.lineno})") from None
        peft_type = config.get("peft_type", "")
        kind = {"LORA": "lora adapter", "PREFIX_TUNING": "prefix adapter"}.get(peft_type, "adapter")
        base = base_model or config.get("base_model_name_or_path")
        if not base:
            raise ModelFolderError(f"{adapter_config} names no base model: pass --base-model")
        check_model_source(base, "--base-model" if base_model else f"{adapter_config}: base_model_name_or_path")
        return TrainedOutput(path, kind, model_folder(base))
    if (path / "config.json").is_file() and any((path / name).is_file() for name in WEIGHT_FILES):
        return TrainedOutput(path, "full model", None)
    raise ModelFolderError(
        f"{path} holds neither an adapter (adapter_config.json) nor a model (config.json and safetensors weights): "
        "pass a training output directory or a merged model folder"
    )


def load_tokenizer(output: TrainedOutput):
    """The tokenizer saved beside the trained output (trainers save it there), else the base model's."""
    from transformers import AutoTokenizer

    has_own = (output.path / "tokenizer_config.json").is_file()
    tokenizer = AutoTokenizer.from_pretrained(output.path if has_own or not output.is_adapter else output.base_model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"  # generation continues each prompt from its last token
    return tokenizer


def prompt_style(tokenizer, asked: str) -> str:
    """The style prompts are rendered in: `auto` is training's (the chat template where the tokenizer has one,
    else the Alpaca prompt); `chat` needs a template."""
    if asked == "auto":
        return "chat" if tokenizer.chat_template else "alpaca"
    if asked == "chat" and not tokenizer.chat_template:
        raise click.UsageError(
            f"--prompt-style chat: the tokenizer of {tokenizer.name_or_path} has no chat template; pass "
            "--prompt-style completion (the task's text, continued) or alpaca"
        )
    return asked


def prompt_texts(tokenizer, inputs: list[str], style: str = "auto") -> list[str]:
    """Each input rendered in `style` (PROMPT_STYLES); `auto` renders it as the prompt part of a training record."""
    style = prompt_style(tokenizer, style)
    if style == "chat":
        return [render(tokenizer, text, "")[0] for text in inputs]
    if style == "alpaca":
        return [ALPACA_PROMPT.format(input=text) for text in inputs]
    return list(inputs)


def special_tokens(style: str) -> bool:
    """Whether the tokenizer adds its special tokens (BOS) to a prompt of `style`: the chat template writes them."""
    return style != "chat"


def load_model(output: TrainedOutput, dtype: str):
    """The model in eval mode: the base with the adapter applied, or the full model folder."""
    import torch
    from transformers import AutoModelForCausalLM

    log.info("Loading %s from %s", output.kind, output.path)
    model_path = output.base_model if output.is_adapter else output.path
    model = AutoModelForCausalLM.from_pretrained(
        model_path,
        dtype=getattr(torch, dtype),
        use_safetensors=True,
        device_map="auto" if torch.cuda.is_available() else None,  # spread over the GPUs when there are any
    )
    if output.is_adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, output.path)
    return model.eval()


def use_vllm(output: TrainedOutput, backend: str) -> bool:
    """Whether to generate with vLLM: asked for, or `auto` with vLLM installed, a GPU and no prefix adapter."""
    servable = output.kind in ("full model", "lora adapter")
    installed = importlib.util.find_spec("vllm") is not None
    if backend == "vllm":
        if not servable:
            raise click.UsageError(f"--backend vllm cannot serve a {output.kind}: use --backend hf")
        if not installed:
            raise click.UsageError("--backend vllm: vllm is not installed")
        return True
    if backend == "hf" or not installed or not servable:
        return False
    import torch

    return torch.cuda.is_available()


@dataclass(frozen=True)
class Sampling:
    n_samples: int = 1
    temperature: float = 0.0  # 0: greedy
    top_p: float = 0.95
    max_new_tokens: int = 512
    batch_size: int = 8


def encode(tokenizer, prompts: list[str], device, add_special_tokens: bool) -> dict:
    """Token ids and attention mask of left-padded prompts (`add_special_tokens`: special_tokens(style))."""
    return tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=add_special_tokens).to(device)


def generate_batch(model, batch: dict, **settings):
    """`generate()` on one encoded batch; the output's `sequences` hold the new tokens only.

    A prefix adapter's trained prefix goes to the base model as a prefilled cache, with as many placeholder
    positions in front of the prompt as the prefix is long: PEFT's own route reaches into `generate()` internals
    that transformers 5.24 renamed (`past_key_values` became `cache`) and there silently dropped the prefix.
    The prompt's positions then start after the prefix, as they did in training.
    """
    import torch

    settings = {**settings, "return_dict_in_generate": True}
    if not is_prefix_adapter(model):
        output = model.generate(**batch, **settings)
    else:
        base = model.get_base_model()
        rows, length = batch["input_ids"].shape[0], model.active_peft_config.num_virtual_tokens
        placeholders = torch.full((rows, length), settings["pad_token_id"], device=batch["input_ids"].device)
        batch = {
            "input_ids": torch.cat([placeholders, batch["input_ids"]], dim=1),
            "attention_mask": torch.cat([torch.ones_like(placeholders), batch["attention_mask"]], dim=1),
        }
        cache = model.get_prompt(batch_size=rows)
        output = base.generate(**batch, **{cache_keyword(base): cache}, **settings)
    output.sequences = output.sequences[:, batch["input_ids"].shape[1] :]
    return output


def is_prefix_adapter(model) -> bool:
    config = getattr(model, "active_peft_config", None)
    return config is not None and config.peft_type == "PREFIX_TUNING"


def cache_keyword(model) -> str:
    """The name `generate()` and the model's forward take the KV cache under: `cache` from transformers 5.24 on."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


class UnappliedAdapterError(click.ClickException):
    """An adapter that changes nothing the model generates: scoring it would score the base model."""


def check_adapter_applied(model, tokenizer, output: TrainedOutput, prompt: str, add_special_tokens: bool) -> None:
    """Refuse an adapter whose effect does not reach generation.

    The first generated token's logits for `prompt` must lie nearer the adapted model's forward pass (the route
    training took) than the base model's. A route that drops the adapter fails, and so does an adapter that changes
    nothing at all (never trained). Nearer, not equal: two routes to the same numbers differ by float noise.
    """
    import torch

    batch = encode(tokenizer, [prompt], model.device, add_special_tokens)
    settings = {"max_new_tokens": 1, "do_sample": False, "output_logits": True, "pad_token_id": tokenizer.pad_token_id}
    with torch.no_grad():
        generated = generate_batch(model, batch, **settings).logits[0][0].float()
        adapted = model(**batch).logits[0, -1].float()
        with model.disable_adapter():
            base = model.get_base_model()(**batch).logits[0, -1].float()
    from_adapted, from_base = (generated - adapted).abs().max().item(), (generated - base).abs().max().item()
    log.info(
        "The %s moves the first token's logits by up to %.3g from the base model's; generation reproduces them "
        "within %.3g",
        output.kind,
        from_base,
        from_adapted,
    )
    if from_base <= from_adapted:
        raise UnappliedAdapterError(
            f"{output.path}: the {output.kind} leaves the model's output unchanged: the first generated token's "
            f"logits lie within {from_base:.3g} of {output.base_model}'s and {from_adapted:.3g} from the adapted "
            "model's, so the adapter was not applied during generation or was never trained. No score is reported: "
            "it would be the base model's."
        )


def generate_hf(model, tokenizer, prompts: list[str], sampling: Sampling, add_special_tokens: bool) -> list[list[str]]:
    """`sampling.n_samples` completions per prompt, in batches; each stops at the end-of-turn token."""
    import torch
    from tqdm import tqdm

    settings = {"do_sample": False}
    if sampling.temperature > 0:
        settings = {"do_sample": True, "temperature": sampling.temperature, "top_p": sampling.top_p}
    settings.update(
        max_new_tokens=sampling.max_new_tokens, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    jobs = [prompt for prompt in prompts for _ in range(sampling.n_samples)]
    texts = []
    with tqdm(total=len(jobs), desc="Generating", unit="completion") as bar:
        for start in range(0, len(jobs), sampling.batch_size):
            batch = encode(tokenizer, jobs[start : start + sampling.batch_size], model.device, add_special_tokens)
            with torch.no_grad():
                new_tokens = generate_batch(model, batch, **settings).sequences
            texts += tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
            bar.update(len(new_tokens))
    return [texts[i : i + sampling.n_samples] for i in range(0, len(texts), sampling.n_samples)]


def generate_vllm(
    output: TrainedOutput,
    tokenizer,
    prompts: list[str],
    sampling: Sampling,
    add_special_tokens: bool,
    dtype: str,
    seed: int,
):
    """The same with vLLM, fed the token ids our tokenizer makes so the prompts match the HF backend's exactly."""
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    lora = output.kind == "lora adapter"
    rank = json.loads((output.path / "adapter_config.json").read_text())["r"] if lora else None
    llm = LLM(
        model=str(output.base_model if lora else output.path),
        tokenizer=str(output.path),
        dtype=dtype,
        seed=seed,
        enable_lora=lora,
        **({"max_lora_rank": rank} if lora else {}),
    )
    params = SamplingParams(
        n=sampling.n_samples,
        temperature=sampling.temperature,
        top_p=sampling.top_p if sampling.temperature > 0 else 1.0,
        max_tokens=sampling.max_new_tokens,
        stop_token_ids=[tokenizer.eos_token_id],
    )
    ids = tokenizer(prompts, add_special_tokens=add_special_tokens)["input_ids"]
    request = LoRARequest("adapter", 1, str(output.path)) if lora else None
    results = llm.generate([{"prompt_token_ids": i} for i in ids], params, lora_request=request)
    return [[choice.text for choice in result.outputs] for result in results]
