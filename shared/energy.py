"""GPU energy of a job from NVML's total-energy counter, read at start and end on every visible GPU.

Where no figure can be had (no nvidia-ml-py, no driver, no GPU, a GPU without the counter) the report says
why and carries `joules: None`, never a made-up 0; training goes on regardless.
"""

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

SOURCE = "nvml_total_energy_counter"


@dataclass
class EnergyReport:
    available: bool
    source: str | None
    joules: float | None
    seconds: float
    devices: list[dict] = field(default_factory=list)
    reason: str | None = None

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


class EnergyMeter:
    """Reads each visible GPU's cumulative energy counter (millijoules) at `start()` and `stop()`."""

    def __init__(self) -> None:
        self._nvml = None
        self._devices: list[tuple[str, object, int]] = []
        self._reason: str | None = "the meter was never started"
        self._started = time.monotonic()

    def start(self) -> None:
        self._started = time.monotonic()
        self._reason = None
        try:
            self._nvml = self._init_nvml()
            for handle in _visible_handles(self._nvml):
                name = self._nvml.nvmlDeviceGetName(handle)
                self._devices.append((name, handle, self._read_counter(handle, name)))
            if not self._devices:
                raise EnergyUnavailable("no GPU is visible to this process")
        except EnergyUnavailable as err:
            self._reason = str(err)
            log.info("GPU energy will not be measured: %s", self._reason)
        except Exception as err:  # any NVML error: energy is optional, training is not
            self._reason = f"NVML error: {err}"
            log.info("GPU energy will not be measured: %s", self._reason)

    def stop(self) -> EnergyReport:
        seconds = time.monotonic() - self._started
        report = None
        if self._reason is None:
            try:
                devices = [
                    {"index": i, "name": name, "joules": (self._read_counter(handle, name) - start_mj) / 1000}
                    for i, (name, handle, start_mj) in enumerate(self._devices)
                ]
                report = EnergyReport(True, SOURCE, sum(d["joules"] for d in devices), seconds, devices)
            except Exception as err:
                self._reason = f"NVML error at the final reading: {err}"
        if self._nvml is not None:
            self._shutdown()
        return report or EnergyReport(False, None, None, seconds, reason=self._reason)

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

    def _read_counter(self, handle, name: str) -> int:
        try:
            return self._nvml.nvmlDeviceGetTotalEnergyConsumption(handle)
        except self._nvml.NVMLError_NotSupported:
            raise EnergyUnavailable(f"{name} has no total-energy counter") from None

    def _shutdown(self) -> None:
        try:
            self._nvml.nvmlShutdown()
        except Exception:
            log.debug("NVML shutdown failed", exc_info=True)
