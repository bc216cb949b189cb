"""Runs left RUNNING by a job that was killed outright (SIGKILL: out of memory, a node failure), and what finds them.

Every training run records where its process runs (tags `host`, `pid`, `pid_start_ticks`, `boot_id`) and, while
it trains, refreshes the tag `heartbeat` (unix time) from a daemon thread. `reap_runs` marks FAILED each RUNNING
run whose process is gone: on this machine (same host and boot), its pid no longer runs the same process;
elsewhere, its heartbeat is older than a threshold. `scripts/runs.py reap` is its command line.
"""

import logging
import os
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import click
from mlflow.entities import Run, RunTag
from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

HEARTBEAT_ENV = "PEFT_WORKBENCH_HEARTBEAT_SECONDS"
DEFAULT_HEARTBEAT_SECONDS = 30.0
DEFAULT_STALE_AFTER_SECONDS = 15 * 60  # a run from another host without a heartbeat this long is gone
BOOT_ID_FILE = Path("/proc/sys/kernel/random/boot_id")


class HeartbeatSettingError(click.ClickException):
    """The heartbeat interval in the environment is not a positive number of seconds."""


@dataclass(frozen=True)
class Verdict:
    """What the reaper decided about one RUNNING run, and why."""

    run_id: str
    run_name: str
    reap: bool
    reason: str


def boot_id() -> str | None:
    """This boot of the machine (None off Linux): a pid recorded before a reboot names no process of this one."""
    return BOOT_ID_FILE.read_text().strip() if BOOT_ID_FILE.is_file() else None


def process_start_ticks(pid: int) -> str | None:
    """When process PID started (clock ticks since boot), or None when no live process has that pid.

    With the pid it names one process: a pid reused by a later process comes with another start time.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # the name in parentheses may hold spaces
    state, start = fields[0], fields[19]  # fields 3 and 22 of proc(5)
    return None if state in ("Z", "X") else start  # a zombie has stopped running, only its exit status is left


def process_tags() -> dict[str, str]:
    """Tags naming this process, for `reap_runs` on this machine: pid, its start time, the boot id."""
    pid = os.getpid()
    tags = {"pid": str(pid), "pid_start_ticks": process_start_ticks(pid), "boot_id": boot_id()}
    return {key: value for key, value in tags.items() if value is not None}


def heartbeat_seconds() -> float:
    """Seconds between heartbeats: HEARTBEAT_ENV, else DEFAULT_HEARTBEAT_SECONDS."""
    value = os.environ.get(HEARTBEAT_ENV, str(DEFAULT_HEARTBEAT_SECONDS))
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if seconds <= 0:
        raise HeartbeatSettingError(f"{HEARTBEAT_ENV}={value!r}: set it to a positive number of seconds, or unset it")
    return seconds


@contextmanager
def heartbeat(run_id: str) -> Iterator[None]:
    """Refresh the run's `heartbeat` tag every HEARTBEAT_ENV seconds from a daemon thread while the block runs."""
    seconds = heartbeat_seconds()
    client = MlflowClient()
    stopped = threading.Event()

    def beat() -> None:
        while True:
            try:
                client.set_tag(run_id, "heartbeat", str(int(time.time())))
            except Exception as err:  # whatever the store raises, training goes on: a beat is only a hint
                log.debug("Heartbeat of run %s not recorded: %s", run_id, err)
            if stopped.wait(seconds):
                return

    thread = threading.Thread(target=beat, name="mlflow-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stopped.set()
        thread.join(timeout=1)  # a beat stuck on a dead server must not hold up the job's end


def judge(run: Run, stale_after: float, now: float) -> tuple[bool, str]:
    """Whether a RUNNING run's process is gone, and why it is or is not."""
    tags = run.data.tags
    host = tags.get("host", "an unknown host")
    if _on_this_machine(tags):
        pid = tags["pid"]
        if process_start_ticks(int(pid)) == tags["pid_start_ticks"]:
            return False, f"process {pid} on host {host} still runs"
        return True, f"process {pid} on host {host} no longer runs"
    if "heartbeat" not in tags:
        return False, "no heartbeat tag (a run from before heartbeats, or one no trainer has attached to yet)"
    age = now - float(tags["heartbeat"])
    if age > stale_after:
        return True, f"no heartbeat for {age:.0f} s (process {tags.get('pid', '?')} on host {host})"
    return False, f"heartbeat {age:.0f} s ago (process {tags.get('pid', '?')} on host {host})"


def _on_this_machine(tags: dict[str, str]) -> bool:
    if not all(tags.get(key) for key in ("pid", "pid_start_ticks", "boot_id")):
        return False
    return tags.get("host") == socket.gethostname() and tags["boot_id"] == boot_id()


def reap_runs(client: MlflowClient, runs: Iterable[Run], stale_after: float, dry_run: bool = False) -> list[Verdict]:
    """Mark FAILED every RUNNING run among RUNS whose process is gone; a verdict for each RUNNING run."""
    now = time.time()
    verdicts = []
    for run in runs:
        if run.info.status != "RUNNING":
            continue
        reap, reason = judge(run, stale_after, now)
        if reap and not dry_run and not mark_failed(client, run.info.run_id, reason):
            reap, reason = False, "it ended while being judged"
        verdicts.append(Verdict(run.info.run_id, run.info.run_name or "", reap, reason))
    return verdicts


def mark_failed(client: MlflowClient, run_id: str, reason: str) -> bool:
    """End a RUNNING run FAILED with tags `reaped=true` and `reaped_reason`; False when it was not RUNNING."""
    if client.get_run(run_id).info.status != "RUNNING":
        return False
    client.log_batch(run_id, tags=[RunTag("reaped", "true"), RunTag("reaped_reason", reason)])
    client.set_terminated(run_id, "FAILED")
    return True
