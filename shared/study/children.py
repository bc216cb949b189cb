"""A study's children: one training of a method at a learning rate and a seed, identified by those three.

What a child has done is read back, never remembered: its MLflow run (a nested run of the study's parent, tagged
with its identity) and its output folder (the completion marker). A sweep child whose method, rate and seed a final
child needs is the same child, reused.
"""

from dataclasses import dataclass
from pathlib import Path

from shared.outputs import COMPLETION_MARKER

OUTCOME_TAG = "study_outcome"  # "failed": a training that ended badly is a result, never retried
REFUSED_TAG = "study_refused"  # "true": failed because its inputs were refused before it trained; a rerun retries
ERROR_TAG = "study_error"
EVAL_OUTCOME_TAG = "study_eval_outcome"
ENDED = ("done", "failed")


@dataclass(frozen=True)
class Child:
    method: str
    learning_rate: float
    seed: int

    @property
    def rate(self) -> str:
        return f"{self.learning_rate:g}"

    @property
    def name(self) -> str:
        return f"{self.method}-lr{self.rate}-seed{self.seed}"

    def output_dir(self, study_dir: Path) -> Path:
        return study_dir / "runs" / self.method / f"lr-{self.rate}" / f"seed-{self.seed}"

    def evaluation_dir(self, study_dir: Path) -> Path:
        return study_dir / "evaluations" / self.method / f"lr-{self.rate}" / f"seed-{self.seed}"

    def log_file(self, study_dir: Path, job: str = "train") -> Path:
        return study_dir / "logs" / f"{self.name}.{job}.log"

    def tags(self) -> dict[str, str]:
        return {"method": self.method, "learning_rate": self.rate, "seed": str(self.seed)}

    @classmethod
    def from_tags(cls, tags: dict[str, str]) -> "Child":
        return cls(tags["method"], float(tags["learning_rate"]), int(tags["seed"]))


def state(child: Child, run, study_dir: Path) -> str:
    """pending (not started), done, failed, running, or interrupted (a run that stopped short: it resumes)."""
    if run is not None and run.data.tags.get(OUTCOME_TAG) == "failed":
        return "failed"
    if run is None or run.info.status == "SCHEDULED":
        return "pending"
    status = run.info.status
    if status == "FINISHED" and (child.output_dir(study_dir) / COMPLETION_MARKER).is_file():
        return "done"
    if status == "RUNNING":
        return "running"
    return "interrupted"


def refused(run) -> bool:
    """Whether the child failed before it trained because its inputs were refused: a rerun tries it again."""
    return run is not None and run.data.tags.get(REFUSED_TAG) == "true"


def best_dev_loss(run) -> float:
    """The child's best dev loss; a child that failed or never finished counts as the worst."""
    if run is None or run.data.tags.get(OUTCOME_TAG) == "failed" or run.info.status != "FINISHED":
        return float("inf")
    return run.data.metrics.get("best_eval_loss", float("inf"))
