"""What a training spent (time, energy, peak memory), over every segment of a run that was stopped and resumed.

A killed or preempted job never logs its end-of-run figures, and it may have trained past its last checkpoint. So
each checkpoint carries what the training had spent up to it (COSTS_FILE), and a job resumed from that checkpoint
adds its own spending: the run ends with the figures an uninterrupted training would log, the work lost after the
checkpoint left out. Tokens need none of this: the Trainer keeps num_input_tokens_seen in its checkpointed state.
"""

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from transformers import TrainerCallback

from shared.track.energy import EnergyReport

log = logging.getLogger(__name__)

COSTS_FILE = "run_costs.json"


@dataclass
class Costs:
    """Totals over the segments of a training, up to a checkpoint or to its end."""

    train_runtime: float = 0.0  # seconds inside Trainer.train(): steps, evaluations and checkpoints
    step_seconds: float = 0.0  # seconds in training steps alone, the time of train_tokens_per_second
    energy_joules: float | None = 0.0  # GPU energy of the jobs; None once a segment could not measure it
    cpu_energy_joules: float | None = 0.0
    energy_seconds: float = 0.0  # how long the energy meters ran, the time of avg_power_watts
    peak_memory_mb: float = 0.0  # the highest of the segments' peaks
    segments: int = 0

    def plus(self, segment: "Costs") -> "Costs":
        """These costs followed by a segment's."""
        total = {f.name: _add(getattr(self, f.name), getattr(segment, f.name)) for f in fields(self)}
        return Costs(**{**total, "peak_memory_mb": max(self.peak_memory_mb, segment.peak_memory_mb)})

    def metrics(self, tokens: int) -> dict[str, float]:
        """The run's end-of-run cost metrics, `tokens` being every token it trained on; what was not measured is left
        out. Peak memory is not among them: each value of the step series is already the run's peak so far."""
        joules, seconds = self.energy_joules, self.step_seconds
        metrics = {
            "train_runtime": self.train_runtime,
            "train_tokens_per_second": tokens / seconds if seconds > 0 else None,
            "energy_joules": joules,
            "avg_power_watts": joules / self.energy_seconds if joules is not None and self.energy_seconds else None,
            "joules_per_1k_tokens": joules * 1000 / tokens if joules is not None and tokens else None,
            "cpu_energy_joules": self.cpu_energy_joules,
        }
        return {key: value for key, value in metrics.items() if value is not None}

    def write(self, folder: Path) -> None:
        (Path(folder) / COSTS_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n")


def _add(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a + b


def earlier_costs(checkpoint: str | None) -> Costs:
    """What the training spent before the checkpoint a job resumes from (nothing for a job from step 0)."""
    if checkpoint is None:
        return Costs()
    path = Path(checkpoint) / COSTS_FILE
    try:
        return Costs(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        log.warning("%s holds no readable %s: the run's costs cover only the training from here on", checkpoint,
                    COSTS_FILE)  # fmt: skip
        return Costs(segments=1, energy_joules=None, cpu_energy_joules=None)


class RunCosts(TrainerCallback):
    """Clocks this job's training steps, and writes the costs so far into each checkpoint it saves.

    `energy_so_far()` is this job's energy since its meter started (every node's, so it runs on every rank); `earlier`
    is what the segments before this job spent. Step time leaves out evaluations and checkpoint saving.
    """

    def __init__(self, energy_so_far: Callable[[], EnergyReport | None], earlier: Costs | None = None) -> None:
        self.energy_so_far = energy_so_far
        self.earlier = earlier or Costs()
        self.step_seconds = 0.0
        self.started = self.mark = time.monotonic()

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = self.mark = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        now = time.monotonic()
        self.step_seconds += now - self.mark
        self.mark = now

    def on_evaluate(self, args, state, control, **kwargs):
        self.mark = time.monotonic()

    def on_save(self, args, state, control, **kwargs):
        costs = self.total(time.monotonic() - self.started, self.energy_so_far())
        if args.should_save:
            costs.write(Path(args.output_dir) / f"checkpoint-{state.global_step}")
        self.mark = time.monotonic()

    def peak_memory_mb(self) -> float:
        """The run's peak memory so far: this job's, or an earlier segment's where that was higher."""
        return max(self.earlier.peak_memory_mb, peak_memory_mb())

    def total(self, runtime: float, energy: EnergyReport | None) -> Costs:
        """The run's costs: the earlier segments' plus this job's, its time in Trainer.train() being `runtime`."""
        this_job = Costs(
            train_runtime=runtime,
            step_seconds=self.step_seconds,
            energy_joules=energy.joules if energy else None,
            cpu_energy_joules=energy.cpu_joules if energy else None,
            energy_seconds=energy.seconds if energy else 0.0,
            peak_memory_mb=peak_memory_mb(),
            segments=1,
        )
        return self.earlier.plus(this_job)


def peak_memory_mb() -> float:
    """Peak memory of this job: CUDA memory allocated when training on a GPU, else the process's peak RSS."""
    import resource

    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
