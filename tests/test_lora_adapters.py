"""The adapters LoRA and QLoRA attach: PEFT's, each dropout a FastDropout that keeps torch's dropout semantics (the
drop rate in every lane of its random words, independent neighbours, the scaling, the gradient, evaluation)."""

import math

import torch
from transformers import AutoModelForCausalLM

from shared.model.lora import FastDropout, add_lora_adapters

FLAGS = {"lora_r": 4, "lora_alpha": 8, "target_modules": "all-linear"}


def within(rate: float, expected: float, trials: int, sigmas: float = 5.0) -> bool:
    return abs(rate - expected) <= sigmas * math.sqrt(expected * (1 - expected) / trials)


def test_each_lane_drops_at_rate_p_independently_of_its_neighbour():
    torch.manual_seed(0)
    elements = 2_000_000
    for p in (0.05, 0.1, 0.5):
        out = FastDropout(p).train()(torch.ones(elements))
        dropped = out == 0
        expected = round(p * 65536) / 65536
        # The four 16-bit lanes of each 64-bit word are four elements: each must drop at rate p.
        for rate in dropped.view(-1, 4).float().mean(dim=0).tolist():
            assert within(rate, expected, elements // 4), (p, rate)
        # Neighbours in one word and across words are dropped together at rate p^2, as independent draws are.
        both = (dropped[:-1] & dropped[1:]).float().mean().item()
        assert within(both, expected**2, elements - 1), (p, both)
        assert torch.equal(out[~dropped], torch.full_like(out[~dropped], 1 / (1 - p)))


def test_the_gradient_flows_through_the_kept_elements_scaled_and_evaluation_is_the_identity():
    torch.manual_seed(1)
    inputs = torch.randn(64, 48, requires_grad=True)
    dropout = FastDropout(0.2).train()
    out = dropout(inputs)
    out.sum().backward()
    kept = out != 0
    assert kept.float().mean().item() < 0.95
    torch.testing.assert_close(out[kept], inputs[kept] / 0.8)
    torch.testing.assert_close(inputs.grad, kept.float() / 0.8)
    assert dropout.eval()(inputs) is inputs
    assert FastDropout(0.0).train()(inputs) is inputs


def test_under_torch_compile_the_dropout_is_compiled_without_breaking_the_graph():
    dropout = FastDropout(0.5).train()
    explanation = torch._dynamo.explain(dropout)(torch.ones(4096))
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1
    torch.manual_seed(0)
    out = torch.compile(dropout)(torch.ones(4096))
    assert set(out.unique().tolist()) == {0.0, 2.0} and within((out == 0).float().mean().item(), 0.5, 4096)


def test_the_same_seed_draws_the_same_mask():
    masks = []
    for _ in range(2):
        torch.manual_seed(7)
        masks.append(FastDropout(0.3).train()(torch.ones(1000)) == 0)
    assert torch.equal(*masks) and masks[0].any()


def test_every_adapters_dropout_is_a_fast_one(tiny_qwen2):
    model = add_lora_adapters(AutoModelForCausalLM.from_pretrained(tiny_qwen2), {**FLAGS, "lora_dropout": 0.1})
    adapted = [m for m in model.modules() if hasattr(m, "lora_A")]
    dropouts = [m.lora_dropout["default"] for m in adapted]
    assert adapted and all(type(d) is FastDropout and d.p == 0.1 for d in dropouts)
    # Without dropout PEFT puts an identity there, which stays.
    model = add_lora_adapters(AutoModelForCausalLM.from_pretrained(tiny_qwen2), {**FLAGS, "lora_dropout": 0.0})
    adapted = [m for m in model.modules() if hasattr(m, "lora_A")]
    assert adapted and all(isinstance(m.lora_dropout["default"], torch.nn.Identity) for m in adapted)
