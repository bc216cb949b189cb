"""What a training job sends to MLflow after its run starts, kept in the output directory when the server is gone.

A tracking server that dies mid-run must not stop training nor lose its numbers: the first failed call turns
the outbox offline, and from then on every metric, tag, artifact upload and the final status are appended to
OUTBOX_FILE in order. `scripts/send_unsent.py OUTPUT_DIR` replays them once the server is back.
"""

import json
import logging
import time
from pathlib import Path

from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

OUTBOX_FILE = "mlflow_unsent.jsonl"
UNREACHABLE = (MlflowException, OSError)  # requests' connection errors are OSErrors


class MlflowOutbox:
    """Sends one run's metrics, tags, artifacts and status to MLflow, or keeps them on disk when it cannot."""

    def __init__(self, run_id: str, output_dir: Path) -> None:
        self.run_id = run_id
        self.client = MlflowClient()
        self.output_dir = Path(output_dir)
        self.path = self.output_dir / OUTBOX_FILE
        self.offline = False

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        self.log_points([(key, value, now, step) for key, value in metrics.items()])

    def log_points(self, points: list[tuple[str, float, int, int]]) -> None:
        """Metric points as (key, value, timestamp in ms, step)."""
        self._deliver({"points": [list(point) for point in points]})

    def set_tag(self, key: str, value: str) -> None:
        self._deliver({"tag": [key, value]})

    def upload(self, path: Path, artifact_path: str | None = None) -> None:
        self._deliver({"upload": str(Path(path).resolve()), "artifact_path": artifact_path})

    def set_status(self, status: str) -> None:
        self._deliver({"status": status, "end_time_ms": int(time.time() * 1000)})

    def _deliver(self, action: dict) -> None:
        if not self.offline:
            try:
                send(self.client, self.run_id, action)
                return
            except UNREACHABLE as err:
                self.offline = True
                log.warning(
                    "MLflow is unreachable (%s): training goes on, and what it logs is kept in %s; "
                    "send it with `python scripts/send_unsent.py %s` once the server is back",
                    str(err).splitlines()[0][:200],
                    self.path,
                    self.output_dir,
                )
        with self.path.open("a") as handle:
            handle.write(json.dumps(action) + "\n")


def send(client: MlflowClient, run_id: str, action: dict) -> None:
    """Perform one outbox action against the tracking server."""
    if "points" in action:
        metrics = [Metric(*point) for point in action["points"]]
        for start in range(0, len(metrics), 1000):  # the tracking API takes at most 1000 metrics per call
            client.log_batch(run_id, metrics=metrics[start : start + 1000])
    elif "tag" in action:
        client.set_tag(run_id, *action["tag"])
    elif "upload" in action:
        client.log_artifact(run_id, action["upload"], artifact_path=action["artifact_path"])
    elif "status" in action:
        client.set_terminated(run_id, action["status"], end_time=action["end_time_ms"])
    else:
        raise ValueError(f"unknown outbox action {sorted(action)}")


def send_unsent(output_dir: Path, run_id: str) -> int:
    """Replay the kept actions of OUTPUT_DIR in order; what is sent leaves the file. Returns how many were sent."""
    path = Path(output_dir) / OUTBOX_FILE
    actions = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    client = MlflowClient()
    for sent, action in enumerate(actions):
        try:
            send(client, run_id, action)
        except UNREACHABLE:
            path.write_text("".join(json.dumps(a) + "\n" for a in actions[sent:]))
            raise
    path.unlink()
    return len(actions)
