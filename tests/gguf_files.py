"""Writing small GGUF files from a tiny Llama model folder, the way llama.cpp's converter lays them out, so the GGUF
route is tested without downloading one."""

import json
from pathlib import Path

import gguf
import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

QUANTIZED = gguf.GGMLQuantizationType.Q8_0


def permute_for_rope(weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp stores q and k with each head's two rotary halves interleaved."""
    return (
        weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)
    )


def gguf_tensors(model) -> dict[str, np.ndarray]:
    config, state = model.config, {k: v.float().numpy() for k, v in model.state_dict().items()}
    tensors = {
        "token_embd.weight": state["model.embed_tokens.weight"],
        "output_norm.weight": state["model.norm.weight"],
        "output.weight": state["lm_head.weight"],
    }
    names = {"self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate"}
    names |= {"mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for i in range(config.num_hidden_layers):
        layer = f"model.layers.{i}."
        tensors[f"blk.{i}.attn_norm.weight"] = state[layer + "input_layernorm.weight"]
        tensors[f"blk.{i}.ffn_norm.weight"] = state[layer + "post_attention_layernorm.weight"]
        tensors[f"blk.{i}.attn_q.weight"] = permute_for_rope(
            state[layer + "self_attn.q_proj.weight"], config.num_attention_heads
        )
        tensors[f"blk.{i}.attn_k.weight"] = permute_for_rope(
            state[layer + "self_attn.k_proj.weight"], config.num_key_value_heads
        )
        for ours, theirs in names.items():
            tensors[f"blk.{i}.{theirs}.weight"] = state[f"{layer}{ours}.weight"]
    return tensors


def write_gguf(
    model_dir: Path, path: Path, *, architecture: str = "llama", raw_type: gguf.GGMLQuantizationType | None = None
) -> Path:
    """Write the tiny Llama in `model_dir` to `path`: 2-D weights as Q8_0 (or `raw_type`, stored unconverted), norms
    as F32, and its byte-level BPE tokenizer and chat template."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    config = model.config
    writer = gguf.GGUFWriter(path, architecture)
    writer.add_name("tiny-llama")
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    vocab = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    tokens = sorted(vocab["vocab"], key=vocab["vocab"].get)
    special = set(tokenizer.all_special_tokens)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in tokens])
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in vocab["merges"]])
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_chat_template(tokenizer.chat_template)
    for name, weight in gguf_tensors(model).items():
        if weight.ndim == 1:
            writer.add_tensor(name, weight)
        elif raw_type is not None:
            writer.add_tensor(name, weight.astype(np.int8), raw_dtype=raw_type)
        else:
            writer.add_tensor(name, gguf.quants.quantize(weight, QUANTIZED), raw_dtype=QUANTIZED)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def dequantized_reference(model_dir: Path):
    """The tiny Llama with every 2-D weight replaced by what Q8_0 keeps of it, unpacked by the gguf package itself:
    what a correct load of the file must compute."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.ndim == 2:
                packed = gguf.quants.quantize(parameter.numpy(), QUANTIZED)
                parameter.copy_(torch.from_numpy(gguf.quants.dequantize(packed, QUANTIZED)))
    return model
