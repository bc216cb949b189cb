"""Energy of a job: GPU energy from NVML on every visible GPU, CPU package energy from Intel RAPL.

Per GPU, NVML's total-energy counter is read at start and end where the GPU has one; otherwise its power draw is
sampled by a background thread and integrated over time (trapezoid). The same thread records the total GPU power
of every tick as a time series, and follows the RAPL counters so that their wraparound is not missed.

Where no figure can be had (no nvidia-ml-py, no driver, no GPU, a GPU with neither counter nor power reading, no
readable RAPL) the report says why and carries `None`, never a made-up 0; training goes on regardless.
"""

import bisect
import json
import logging
import math
import os
import re
import threading
import time
from dataclasses import asdict, dataclass, field
from itertools import pairwise
from pathlib import Path

log = logging.getLogger(__name__)

SOURCE = "nvml_total_energy_counter"
POWER_SOURCE = "nvml_power_sampling"
MIXED = "mixed"
DEFAULT_INTERVAL = 0.5
POWERCAP_ROOT = Path("/sys/class/powercap")
_RAPL_PACKAGE = re.compile(r"intel-rapl:\d+")  # top-level package domains; subzones are intel-rapl:N:M
_JOIN_TIMEOUT = 2.0


@dataclass
class EnergyReport:
    """`available`, `source`, `joules` and `avg_power_watts` are about the GPUs; `cpu_*` about CPU packages."""

    available: bool
    source: str | None
    joules: float | None
    seconds: float
    devices: list[dict] = field(default_factory=list)
    reason: str | None = None
    avg_power_watts: float | None = None
    cpu_joules: float | None = None
    cpu_reason: str | None = None
    power_samples: list[list[float]] = field(default_factory=list)  # [seconds since start, total GPU watts]
    nodes: list[dict] = field(default_factory=list)  # per-node totals, filled by sum_reports only

    def __post_init__(self) -> None:
        if self.avg_power_watts is None and self.joules is not None and self.seconds > 0:
            self.avg_power_watts = self.joules / self.seconds

    def write(self, path: Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(asdict(self), indent=2) + "\n")


class EnergyUnavailable(Exception):
    """Why this machine cannot report GPU energy."""


def _visible_handles(nvml) -> list:
    """NVML handles of the GPUs this process may use, honouring CUDA_VISIBLE_DEVICES (indices or UUIDs)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]
    handles = []
    for item in (part.strip() for part in visible.split(",")):
        if not item:
            continue
        if item.startswith("-"):  # CUDA stops at the first invalid entry; "-1" is the usual "no GPU"
            break
        if item.isdigit():
            handles.append(nvml.nvmlDeviceGetHandleByIndex(int(item)))
        else:
            handles.append(nvml.nvmlDeviceGetHandleByUUID(item))
    return handles


def _trapezoid(samples: list[tuple[float, float]]) -> float:
    """Integral of (seconds, watts) samples, in joules."""
    return sum((t1 - t0) * (w0 + w1) / 2 for (t0, w0), (t1, w1) in pairwise(samples))


@dataclass
class _Gpu:
    name: str
    handle: object
    start_mj: int | None  # None: no total-energy counter, energy comes from `samples`
    has_power: bool
    samples: list[tuple[float, float]] = field(default_factory=list)


class _Rapl:
    """Sum of the CPU package energy counters (microjoules), accumulated read by read so wraparound is caught."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.domains: list[tuple[Path, int]] = []  # (energy_uj file, max_energy_range_uj)
        self.last: list[int] = []
        self.total_uj = 0
        self.reason: str | None = "the meter was never started"

    def start(self) -> None:
        self.total_uj, self.reason = 0, None
        try:
            self.domains = [(d / "energy_uj", int((d / "max_energy_range_uj").read_text())) for d in self._packages()]
            self.last = [int(path.read_text()) for path, _ in self.domains]
            if not self.domains:
                self.reason = f"no Intel RAPL package domain under {self.root}"
        except (OSError, ValueError) as err:
            self._fail(err)

    def _packages(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        dirs = sorted(d for d in self.root.iterdir() if _RAPL_PACKAGE.fullmatch(d.name))
        # On laptops a top-level domain may be "psys" (the whole platform); adding it would count packages twice.
        return [d for d in dirs if not (d / "name").exists() or (d / "name").read_text().startswith("package")]

    def poll(self) -> None:
        if self.reason is not None:
            return
        try:
            for i, (path, max_range) in enumerate(self.domains):
                now = int(path.read_text())
                self.total_uj += now - self.last[i] if now >= self.last[i] else now + max_range - self.last[i]
                self.last[i] = now
        except (OSError, ValueError) as err:
            self._fail(err)

    def _fail(self, err: Exception) -> None:
        self.domains = []
        if isinstance(err, PermissionError):
            self.reason = f"permission denied reading RAPL ({err.filename}); energy_uj is root-only on most kernels"
        else:
            self.reason = f"RAPL could not be read: {err}"

    def joules(self) -> float | None:
        return None if self.reason is not None else self.total_uj / 1e6


class EnergyMeter:
    """Measures GPU and CPU energy between `start()` and `stop()`; see the module docstring."""

    def __init__(self, interval: float = DEFAULT_INTERVAL, powercap_root: Path | str = POWERCAP_ROOT) -> None:
        self.interval = interval
        self._nvml = None
        self._gpus: list[_Gpu] = []
        self._reason: str | None = "the meter was never started"
        self._rapl = _Rapl(Path(powercap_root))
        self._power: list[list[float]] = []
        self._lock = threading.Lock()
        self._halt = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._started = time.monotonic()

    def start(self) -> None:
        self._started = time.monotonic()
        self._reason = None
        self._power, self._closed = [], False
        self._halt.clear()
        self._rapl.start()
        try:
            self._nvml = self._init_nvml()
            self._gpus = [self._probe(handle) for handle in _visible_handles(self._nvml)]
            if not self._gpus:
                raise EnergyUnavailable("no GPU is visible to this process")
        except EnergyUnavailable as err:
            self._give_up(str(err))
        except Exception as err:  # any NVML error: energy is optional, training is not
            self._give_up(f"NVML error: {err}")
        self._record_total(self._now(), [g.samples[-1][1] for g in self._gpus if g.samples])
        if self._gpus or self._rapl.reason is None:
            self._thread = threading.Thread(target=self._run, name="energy-sampler", daemon=True)
            self._thread.start()

    def stop(self) -> EnergyReport:
        self._stop_sampler()
        report = self._report()
        if report.reason and self._reason is None:
            self._reason = report.reason = f"NVML error at the final reading: {report.reason}"
        if self._nvml is not None:
            self._shutdown()
        report.power_samples = self._power
        return report

    def reading(self) -> EnergyReport:
        """The energy since start(), the meter running on (what a checkpoint records), without the power series; a
        failed reading leaves the meter as it was."""
        with self._lock:
            self._rapl.poll()
            return self._report()

    def _report(self) -> EnergyReport:
        seconds = self._now()
        reason = self._reason
        if reason is None:
            try:
                devices = [self._device_entry(i, gpu) for i, gpu in enumerate(self._gpus)]
                sources = {d["source"] for d in devices}
                source = sources.pop() if len(sources) == 1 else MIXED
                report = EnergyReport(True, source, sum(d["joules"] for d in devices), seconds, devices)
            except Exception as err:
                reason = str(err)
        if reason is not None:
            report = EnergyReport(False, None, None, seconds, reason=reason)
        report.cpu_joules, report.cpu_reason = self._rapl.joules(), self._rapl.reason
        return report

    def _give_up(self, reason: str) -> None:
        self._reason = reason
        self._gpus = []
        log.info("GPU energy will not be measured: %s", reason)

    def _now(self) -> float:
        return time.monotonic() - self._started

    def _probe(self, handle) -> _Gpu:
        name = self._nvml.nvmlDeviceGetName(handle)
        counter = self._unless_unsupported(self._nvml.nvmlDeviceGetTotalEnergyConsumption, handle)
        power_mw = self._unless_unsupported(self._nvml.nvmlDeviceGetPowerUsage, handle)
        if counter is None and power_mw is None:
            raise EnergyUnavailable(f"{name} has neither a total-energy counter nor a power reading")
        gpu = _Gpu(name, handle, counter, power_mw is not None)
        if power_mw is not None:
            gpu.samples.append((self._now(), power_mw / 1000))
        return gpu

    def _unless_unsupported(self, read, handle) -> int | None:
        try:
            return read(handle)
        except self._nvml.NVMLError_NotSupported:
            return None

    def _device_entry(self, index: int, gpu: _Gpu) -> dict:
        if gpu.start_mj is not None:
            joules = (self._nvml.nvmlDeviceGetTotalEnergyConsumption(gpu.handle) - gpu.start_mj) / 1000
            return {"index": index, "name": gpu.name, "source": SOURCE, "joules": joules}
        if len(gpu.samples) < 2:
            raise EnergyUnavailable(f"too few power readings from {gpu.name} to integrate")
        return {"index": index, "name": gpu.name, "source": POWER_SOURCE, "joules": _trapezoid(gpu.samples)}

    def _run(self) -> None:
        while not self._halt.wait(self.interval):
            self._tick()

    def _tick(self) -> None:
        """One sample: a power reading per GPU, then the RAPL counters. Never raises."""
        try:
            t = self._now()
            watts = [(gpu, self._read_watts(gpu)) for gpu in self._gpus if gpu.has_power]
            with self._lock:
                if self._closed:  # a tick that outlived stop()'s join must not touch the finished figures
                    return
                for gpu, w in watts:
                    if w is not None:
                        gpu.samples.append((t, w))
                self._record_total(t, [w for _, w in watts])
                self._rapl.poll()
        except Exception:
            log.debug("energy sampling tick failed", exc_info=True)

    def _read_watts(self, gpu: _Gpu) -> float | None:
        try:
            return self._nvml.nvmlDeviceGetPowerUsage(gpu.handle) / 1000
        except Exception:
            return None

    def _record_total(self, t: float, watts: list[float | None]) -> None:
        # A sum that misses a GPU would understate the power, so such ticks are left out of the series.
        if watts and len(watts) == len(self._gpus) and None not in watts:
            # Cut to 0.1 ms, never rounded up: a sample must not land after the window the report covers.
            self._power.append([math.floor(t * 10_000) / 10_000, round(sum(watts), 3)])

    def _stop_sampler(self) -> None:
        if self._thread is None:
            return
        self._halt.set()
        self._thread.join(timeout=_JOIN_TIMEOUT)
        if self._thread.is_alive():
            log.warning("energy sampler did not stop within %s s; final readings go on without it", _JOIN_TIMEOUT)
        self._tick()  # the final sample, so that integration and RAPL run up to the end
        with self._lock:
            self._closed = True
        self._thread = None

    @staticmethod
    def _init_nvml():
        try:
            import pynvml
        except ImportError:
            raise EnergyUnavailable("nvidia-ml-py is not installed") from None
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as err:
            raise EnergyUnavailable(f"NVML could not start (no NVIDIA driver?): {err}") from None
        return pynvml

    def _shutdown(self) -> None:
        try:
            self._nvml.nvmlShutdown()
        except Exception:
            log.debug("NVML shutdown failed", exc_info=True)


def sum_reports(reports: list[EnergyReport]) -> EnergyReport:
    """One report for a multi-node job from each node's report, given in node (rank) order.

    Joules and CPU joules are summed (None if any node lacks them, with the nodes' reasons); seconds is the
    longest node's; devices are concatenated, each tagged with `node`; `nodes` keeps each node's totals. The power
    series is the sum of every node's series, each linearly interpolated at the first node's ticks, over the span
    all series cover; ticks count from each node's own start, which launchers make near-simultaneous.
    """
    if not reports:
        raise ValueError("sum_reports needs at least one report")
    joules, reason = _sum_field(reports, "joules", "reason")
    cpu_joules, cpu_reason = _sum_field(reports, "cpu_joules", "cpu_reason")
    sources = {r.source for r in reports}
    source = None if joules is None else sources.pop() if len(sources) == 1 else MIXED
    return EnergyReport(
        available=joules is not None,
        source=source,
        joules=joules,
        seconds=max(r.seconds for r in reports),
        devices=[{**d, "node": node} for node, r in enumerate(reports) for d in r.devices],
        reason=reason,
        cpu_joules=cpu_joules,
        cpu_reason=cpu_reason,
        power_samples=_sum_series([r.power_samples for r in reports]),
        nodes=[_node_totals(node, r) for node, r in enumerate(reports)],
    )


def _sum_field(reports: list[EnergyReport], value: str, why: str) -> tuple[float | None, str | None]:
    missing = [(node, r) for node, r in enumerate(reports) if getattr(r, value) is None]
    if missing:
        return None, "; ".join(f"node {node}: {getattr(r, why)}" for node, r in missing)
    return sum(getattr(r, value) for r in reports), None


def _node_totals(node: int, report: EnergyReport) -> dict:
    keys = ("available", "source", "joules", "seconds", "reason", "cpu_joules", "cpu_reason", "avg_power_watts")
    return {"node": node, **{key: getattr(report, key) for key in keys}}


def _sum_series(series: list[list[list[float]]]) -> list[list[float]]:
    if not all(series):  # a node without a series would make any sum an understatement
        return []
    start, end = max(s[0][0] for s in series), min(s[-1][0] for s in series)
    times = [[sample[0] for sample in s] for s in series]
    return [
        [t, round(sum(_interpolate(s, ts, t) for s, ts in zip(series, times, strict=True)), 3)]
        for t, _ in series[0]
        if start <= t <= end
    ]


def _interpolate(samples: list[list[float]], times: list[float], t: float) -> float:
    """Watts at `t`, which lies within `times`, the samples' own ticks."""
    i = bisect.bisect_left(times, t)
    if times[i] == t:
        return samples[i][1]
    (t0, w0), (t1, w1) = samples[i - 1], samples[i]
    return w0 + (w1 - w0) * (t - t0) / (t1 - t0)
