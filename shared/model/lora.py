"""LoRA adapters as the LoRA and QLoRA methods attach them: PEFT's, with a dropout whose mask is cheaper to draw on
a CPU."""

import torch


def lora_config(flags: dict):
    """The LoRA adapter settings from the --lora-* flags (shared by LoRA and QLoRA)."""
    from peft import LoraConfig

    targets = flags["target_modules"]
    return LoraConfig(
        r=flags["lora_r"],
        lora_alpha=flags["lora_alpha"],
        lora_dropout=flags["lora_dropout"],
        target_modules=targets if targets == "all-linear" else [t.strip() for t in targets.split(",")],
        task_type="CAUSAL_LM",
    )


def add_lora_adapters(model: torch.nn.Module, flags: dict):
    """MODEL wrapped by PEFT with the --lora-* adapters, each adapter's dropout a `FastDropout`."""
    from peft import get_peft_model

    model = get_peft_model(model, lora_config(flags))
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if isinstance(dropouts, torch.nn.ModuleDict):
            for name, dropout in dropouts.items():
                if isinstance(dropout, torch.nn.Dropout):
                    dropouts[name] = FastDropout(dropout.p)
    return model


class FastDropout(torch.nn.Dropout):
    """torch's Dropout, its mask drawn on a CPU from 16 random bits per element, taken as 64-bit words.

    torch samples a CPU dropout mask one Bernoulli draw per element: with a dropout on every adapted layer's input
    that took 17% of a LoRA step on SmolLM2-135M. Four lanes of one random word cost about a fifth of that. An
    element is dropped when its lane falls below round(p x 65536) of the 65536 values, so p is kept to 1/65536.
    Elsewhere (a GPU's fused kernel), under torch.compile (which generates its own dropout, and would break its
    graph at this one) and outside training, torch's own.
    """

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if not self.training or not 0 < self.p < 1 or inputs.device.type != "cpu" or torch.compiler.is_compiling():
            return super().forward(inputs)
        words = torch.empty((inputs.numel() + 3) // 4, dtype=torch.int64).random_(-(2**63), 2**63 - 1)
        lanes = words.view(torch.int16)[: inputs.numel()].view(inputs.shape)
        dropped = lanes < round(self.p * 65536) - 32768
        return inputs.masked_fill(dropped, 0).mul_(1 / (1 - self.p))
