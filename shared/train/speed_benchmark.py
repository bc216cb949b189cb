"""Measuring one training configuration in its own process: a method's real script, or a library's own training of
the same LoRA (the seed-style baseline, transformers' flattening collator, TRL).

Every side is timed by the same `StepMeter`: the seconds from one optimizer step's end to the next (data loading
included, evaluation and checkpoint saving left out, as the tracking callback counts them), and per step the real
(non-pad), padding and trained (label != -100) tokens of the batches it collated. The first steps are warm-up and
stay out of the summary. Run as `python -m shared.train.speed_benchmark REPORT.json lora|baseline TRAIN_FLAGS...`.
"""

import importlib.util
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import click
import torch
from transformers import Trainer, TrainerCallback

from shared.data.batching import IGNORE_INDEX
from shared.options import common_options, lora_options
from shared.precision import bf16_enabled
from shared.track.costs import peak_memory_mb
from shared.track.energy import EnergyMeter

REPO = Path(__file__).resolve().parents[2]
LIBRARIES = ("baseline", "flattening", "trl")  # a library's own training, see run_library
DEFAULT_EPOCHS = 3  # --epochs' default: the default schedule evaluates at step 0 and after each epoch
# Dense bf16 peak of the GPUs whose data sheet an MFU is measured against; any other device's peak is measured.
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


class StepMeter(TrainerCallback):
    """Per optimizer step: seconds (collating and the optimizer's share too) and the real, padding and trained
    tokens of its batches; the evaluation passes' seconds; energy over train()."""

    def __init__(self) -> None:
        self.steps: list[dict] = []
        self.pending = {"real": 0, "padding": 0, "trained": 0, "collate_seconds": 0.0, "optimizer_seconds": 0.0}
        self.mark = self.optimizer_mark = time.perf_counter()
        self.eval_seconds: list[float] = []
        self.steps_per_epoch = 0
        self.energy = EnergyMeter()
        self.energy_report = None
        self.memory = TrainingMemory()
        self.params = {"trainable": 0, "total": 0}
        self.compute_dtype = "float32"
        self.losses: list[tuple[int, float]] = []  # (step, training loss) as the Trainer logs it

    def counting(self, collate: Callable[[list[dict]], dict]) -> Callable[[list[dict]], dict]:
        """COLLATE, counting what each batch it builds holds."""

        def collate_and_count(features: list[dict]) -> dict:
            begin = time.perf_counter()
            batch = collate(features)
            self.pending["collate_seconds"] += time.perf_counter() - begin
            real = sum(len(feature["input_ids"]) for feature in features)
            self.pending["real"] += real
            self.pending["padding"] += batch["input_ids"].numel() - real
            self.pending["trained"] += int((batch["labels"] != IGNORE_INDEX).sum())
            return batch

        return collate_and_count

    def _restart(self) -> None:
        self.mark = time.perf_counter()
        self.pending = dict.fromkeys(self.pending, 0)

    def on_train_begin(self, args, state, control, model=None, train_dataloader=None, **kwargs):
        from shared.model.loading import count_parameters

        self.steps_per_epoch = -(-len(train_dataloader) // args.gradient_accumulation_steps)
        self.compute_dtype = compute_dtype(args.bf16, args.fp16)

        counts = count_parameters(model)
        self.params = {"trainable": counts["trainable_params"], "total": counts["total_params"]}
        self.energy.start()
        self.memory.start()
        self._restart()

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        self.steps.append({"seconds": now - self.mark, **self.pending})
        self._restart()

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.optimizer_mark = time.perf_counter()

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.pending["optimizer_seconds"] += time.perf_counter() - self.optimizer_mark

    def on_evaluate(self, args, state, control, **kwargs):
        self.eval_seconds.append(time.perf_counter() - self.mark)
        self._restart()  # evaluation batches went through the collator too

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses.append((state.global_step, logs["loss"]))

    def on_save(self, args, state, control, **kwargs):
        self._restart()

    def on_train_end(self, args, state, control, **kwargs):
        self.energy_report = self.energy.stop()

    def summary(self, warmup: int) -> dict:
        """The measured steps (after WARMUP) summed up; energy spans the whole train(), warm-up included."""
        measured = self.steps[warmup:]
        if not measured:
            raise RuntimeError(f"only {len(self.steps)} steps ran, none left after {warmup} warm-up steps")
        seconds = sum(s["seconds"] for s in measured)
        real, padding, trained = (sum(s[k] for s in measured) for k in ("real", "padding", "trained"))
        report = self.energy_report
        joules = report.joules if report.joules is not None else report.cpu_joules
        all_real = sum(s["real"] for s in self.steps)
        median_step = statistics.median(s["seconds"] for s in measured)
        eval_pass = statistics.median(self.eval_seconds) if self.eval_seconds else None
        epoch_seconds = self.steps_per_epoch * median_step
        return {
            "device": "cuda" if torch.cuda.is_available() else "cpu",
            "steps_measured": len(measured),
            "warmup_steps": warmup,
            "real_tokens_per_second": real / seconds,
            "trained_tokens_per_second": trained / seconds,
            "padding_fraction": padding / (real + padding),
            "median_step_seconds": median_step,
            "collate_share": sum(s["collate_seconds"] for s in measured) / seconds,
            "optimizer_share": sum(s["optimizer_seconds"] for s in measured) / seconds,
            "eval_pass_seconds": eval_pass,
            "eval_share_default_schedule": None
            if eval_pass is None
            else eval_pass * (DEFAULT_EPOCHS + 1) / (DEFAULT_EPOCHS * epoch_seconds),
            "peak_memory_mb": peak_memory_mb(),
            "training_memory_mb": self.memory.added_mb(),
            "energy_joules_per_1k_tokens": None if joules is None else joules * 1000 / all_real,
            "energy_note": None if joules is not None else f"GPU: {report.reason}; CPU: {report.cpu_reason}",
            "trainable_params": self.params["trainable"],
            "total_params": self.params["total"],
            "model_flops_per_token": flops_per_token(
                self.params["total"], full=self.params["trainable"] == self.params["total"]
            ),
            "compute_dtype": self.compute_dtype,
            "loss_curve": self.losses,
        }


class TrainingMemory:
    """What training adds to memory: the peak since train() began minus what was resident then (activations,
    gradients, optimizer state), apart from the weights and the imports, which differ between configurations by
    the modules they load (MLflow's client alone is ~40 MB of RSS). CUDA allocated memory on a GPU; RSS on a CPU,
    whose high-water mark Linux resets through /proc/self/clear_refs (None where it cannot)."""

    def __init__(self) -> None:
        self.resident_mb: float | None = None

    def start(self) -> None:
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
            self.resident_mb = torch.cuda.memory_allocated() / 2**20
            return
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.resident_mb = _proc_status_mb("VmRSS")
        except OSError:
            self.resident_mb = None

    def added_mb(self) -> float | None:
        if self.resident_mb is None:
            return None
        if torch.cuda.is_available():
            return torch.cuda.max_memory_allocated() / 2**20 - self.resident_mb
        return _proc_status_mb("VmHWM") - self.resident_mb


def _proc_status_mb(field: str) -> float:
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(f"{field}:"))
    return int(line.split()[1]) / 1024


def flops_per_token(params: int, full: bool) -> float:
    """Training FLOPs per token: 6N for full fine-tuning (forward 2N, backward 4N); 4N with a frozen base,
    whose weight gradients are skipped while the activation gradients still flow through it. Attention ignored."""
    return (6 if full else 4) * params


def compute_dtype(bf16: bool, fp16: bool) -> str:
    """The dtype a configuration's matrix products run in: what its MFU is measured against."""
    return "bfloat16" if bf16 else "float16" if fp16 else "float32"


def matmul_peak_flops(dtype: str, size: int = 2048, repeats: int = 10) -> float:
    """This device's dense matrix-product peak in DTYPE, measured: the best of REPEATS products of two SIZE x SIZE
    matrices (2 x SIZE^3 FLOPs each), at torch's current thread count, after one untimed product."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    a, b = (torch.randn(size, size, device=device).to(getattr(torch, dtype)) for _ in range(2))
    best = float("inf")
    for _ in range(repeats + 1):
        if device == "cuda":
            torch.cuda.synchronize()
        begin = time.perf_counter()
        torch.mm(a, b)
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - begin)
    return 2 * size**3 / best


def device_peak_flops(dtype: str) -> tuple[float, str]:
    """The peak an MFU divides by, and where it comes from: a listed GPU's data-sheet dense bf16 peak, else the
    matrix-product peak measured here in DTYPE."""
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        peak = next((flops for model, flops in PEAK_BF16_FLOPS.items() if model in name), None)
        if peak is not None:
            return peak, f"{name} data sheet, dense bf16"
    return matmul_peak_flops(dtype), f"measured {dtype} matrix product"


def run_method(method: str, train_args: list[str], meter: StepMeter) -> None:
    """Run methods/METHOD/train.py's command in this process, its Trainer carrying METER; nothing else changes."""
    import shared.train.loop
    from shared.train.completion_loss import CompletionLossTrainer

    class MeteredTrainer(CompletionLossTrainer):
        def __init__(self, *args, callbacks=None, data_collator=None, **kwargs):
            callbacks = [*(callbacks or []), meter]
            super().__init__(*args, callbacks=callbacks, data_collator=meter.counting(data_collator), **kwargs)

    shared.train.loop.CompletionLossTrainer = MeteredTrainer
    spec = importlib.util.spec_from_file_location(f"{method}_train", REPO / "methods" / method / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main.main(train_args, prog_name=f"{method}/train.py", standalone_mode=False)


def run_library(configuration: str, flags: dict, meter: StepMeter) -> None:
    """A library's own training of the same LoRA (the methods' settings and sequences per step) on the same records
    and dev split, flags as the LoRA script takes them:
    - `baseline`, the seed-style training the source projects run: plain Trainer, DataCollatorForLanguageModeling
      (each batch padded to its longest row, loss on every token, no packing);
    - `flattening`: plain Trainer, transformers' DataCollatorWithFlattening (a batch in one row, positions
      restarting per sequence), loss on the completion tokens;
    - `trl`: TRL's SFTTrainer, padding-free, loss on the completion tokens."""
    from peft import get_peft_model
    from transformers import TrainingArguments, set_seed

    from shared.data.records import read_records, split_off_dev
    from shared.model.loading import load_base_model, load_tokenizer
    from shared.model.lora import lora_config

    records = read_records(flags["dataset"])
    if flags["dev_dataset"] is None:
        records, _ = split_off_dev(records, flags["dev_fraction"], flags["seed"])
    tokenizer = load_tokenizer(flags)
    set_seed(flags["seed"])
    model = get_peft_model(load_base_model(flags), lora_config(flags))
    settings = {
        "output_dir": str(flags["output_dir"]),
        "max_steps": flags["max_steps"],
        "learning_rate": flags["learning_rate"],
        "per_device_train_batch_size": flags["batch_size"],
        "gradient_accumulation_steps": flags["gradient_accumulation"],
        "bf16": bf16_enabled(flags),
        "seed": flags["seed"],
        "logging_steps": flags["logging_steps"],
        "save_strategy": "no",
        "report_to": "none",
        "use_cpu": not torch.cuda.is_available(),
    }
    if configuration == "trl":
        trainer = trl_trainer(model, tokenizer, records, flags, settings)
    else:
        data, collator = library_batches(configuration, tokenizer, records, flags["max_length"])
        args = TrainingArguments(**settings)
        trainer = Trainer(model=model, args=args, train_dataset=data, data_collator=collator)
    trainer.data_collator = meter.counting(trainer.data_collator)
    trainer.add_callback(meter)
    trainer.train()


def library_batches(configuration: str, tokenizer, records: list[dict], max_length: int):
    """The training data and collator of the `baseline` or `flattening` configuration."""
    from datasets import Dataset
    from transformers import DataCollatorForLanguageModeling, DataCollatorWithFlattening

    from shared.data.batching import render, tokenize_records

    if configuration == "flattening":
        return tokenize_records(records, tokenizer, max_length, "training data").dataset, DataCollatorWithFlattening()
    texts = ["".join(render(tokenizer, r["input"], r["output"])) for r in records]
    data = Dataset.from_dict({"text": texts}).map(
        lambda batch: tokenizer(batch["text"], truncation=True, max_length=max_length),
        batched=True,
        remove_columns=["text"],
    )
    return data, DataCollatorForLanguageModeling(tokenizer, mlm=False)


def trl_trainer(model, tokenizer, records: list[dict], flags: dict, settings: dict):
    """TRL's SFTTrainer, padding-free, on the sequences the methods train on (tokenized and truncated as they are),
    their completion marked by TRL's own `completion_mask`."""
    from trl import SFTConfig, SFTTrainer

    from shared.data.batching import tokenize_records

    data = tokenize_records(records, tokenizer, flags["max_length"], "training data").dataset.map(
        lambda record: {"completion_mask": [int(label != IGNORE_INDEX) for label in record["labels"]]},
        remove_columns=["labels", "attention_mask"],
    )
    # max_length None: TRL truncates only when it packs; the sequences are truncated already.
    config = SFTConfig(**settings, max_length=None, padding_free=True, completion_only_loss=True)
    return SFTTrainer(model=model, args=config, train_dataset=data, processing_class=tokenizer)


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("report", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("configuration")
@click.option("--warmup-steps", type=click.IntRange(min=0), default=3, show_default=True)
@click.argument("train_args", nargs=-1, type=click.UNPROCESSED)
def main(report: Path, configuration: str, warmup_steps: int, train_args: tuple[str, ...]) -> None:
    """Train CONFIGURATION (a method, or one of LIBRARIES) with TRAIN_ARGS and write its measured numbers to REPORT."""
    meter = StepMeter()
    if configuration in LIBRARIES:
        train = click.command()(lambda **flags: run_library(configuration, flags, meter))
        library = lora_options(common_options(train))
        library.main(list(train_args), prog_name=configuration, standalone_mode=False)
    else:
        run_method(configuration, list(train_args), meter)
    report.write_text(json.dumps(meter.summary(warmup_steps), indent=2) + "\n")


if __name__ == "__main__":
    main()
