"""Tests of shared.track.energy: EnergyMeter against a fake `pynvml` and a fake powercap folder, and sum_reports.

NVML is faked because no GPU exists on CI: every test injects a small stand-in module with
`monkeypatch.setitem(sys.modules, "pynvml", fake)`, so the real EnergyMeter code imports and drives it exactly as
it would the real nvidia-ml-py. The fake models GPUs whose total-energy counters advance through scripted
millijoule readings, GPUs without the counter whose power readings (milliwatts) are scripted instead, a GPU with
neither, handles by index and by UUID, and nvmlInit failing. Intel RAPL is faked by a powercap folder in tmp_path.
"""

import json
import sys
import threading
import time
import types
from pathlib import Path

import pytest

from shared.track import energy
from shared.track.energy import (
    POWER_SOURCE,
    SOURCE,
    EnergyMeter,
    EnergyReport,
    sum_reports,
)

NO_RAPL = "/nonexistent/powercap"  # keeps the tests off a developer machine's real RAPL counters


class FakeGpu:
    def __init__(
        self, name: str, uuid: str, readings_mj: list[int] | None, power_mw: int | list[int] | None = 50_000
    ) -> None:
        """`readings_mj`: successive counter reads, None for no counter. `power_mw`: a constant power reading,
        successive readings (the last one repeats), or None for no power reading."""
        self.name = name
        self.uuid = uuid
        self.readings_mj = None if readings_mj is None else list(readings_mj)
        self.power_mw = power_mw
        self.reads = 0
        self.power_reads = 0


def make_fake_nvml(gpus: list[FakeGpu], *, init_error: str | None = None) -> types.ModuleType:
    fake = types.ModuleType("pynvml")
    fake.calls = []

    class NVMLError(Exception):
        pass

    class NVMLError_NotSupported(NVMLError):  # pynvml's own name
        pass

    fake.NVMLError = NVMLError
    fake.NVMLError_NotSupported = NVMLError_NotSupported

    def nvmlInit():
        fake.calls.append("init")
        if init_error is not None:
            raise NVMLError(init_error)

    def nvmlShutdown():
        fake.calls.append("shutdown")

    def nvmlDeviceGetCount():
        return len(gpus)

    def nvmlDeviceGetHandleByIndex(index):
        fake.calls.append(f"by_index:{index}")
        if not 0 <= index < len(gpus):
            raise NVMLError("Invalid Argument")
        return gpus[index]

    def nvmlDeviceGetHandleByUUID(uuid):
        fake.calls.append(f"by_uuid:{uuid}")
        for gpu in gpus:
            if gpu.uuid == uuid:
                return gpu
        raise NVMLError("Not Found")

    def nvmlDeviceGetName(handle):
        return handle.name

    def nvmlDeviceGetTotalEnergyConsumption(handle):
        if handle.readings_mj is None:
            raise NVMLError_NotSupported("Not Supported")
        value = handle.readings_mj[handle.reads]
        handle.reads += 1
        return value

    def nvmlDeviceGetPowerUsage(handle):
        if handle.power_mw is None:
            raise NVMLError_NotSupported("Not Supported")
        readings = handle.power_mw if isinstance(handle.power_mw, list) else [handle.power_mw]
        value = readings[min(handle.power_reads, len(readings) - 1)]
        handle.power_reads += 1
        return value

    for fn in (
        nvmlInit,
        nvmlShutdown,
        nvmlDeviceGetCount,
        nvmlDeviceGetHandleByIndex,
        nvmlDeviceGetHandleByUUID,
        nvmlDeviceGetName,
        nvmlDeviceGetTotalEnergyConsumption,
        nvmlDeviceGetPowerUsage,
    ):
        setattr(fake, fn.__name__, fn)
    return fake


@pytest.fixture
def install(monkeypatch):
    """Installs a fake pynvml for this test; CUDA_VISIBLE_DEVICES starts unset."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)

    def _install(gpus: list[FakeGpu], **kwargs) -> types.ModuleType:
        fake = make_fake_nvml(gpus, **kwargs)
        monkeypatch.setitem(sys.modules, "pynvml", fake)
        return fake

    return _install


def measure(seconds: float = 0.0, interval: float = 0.5, powercap_root: str | Path = NO_RAPL) -> EnergyReport:
    meter = EnergyMeter(interval=interval, powercap_root=powercap_root)
    meter.start()
    time.sleep(seconds)
    return meter.stop()


def two_gpus() -> list[FakeGpu]:
    return [
        FakeGpu("NVIDIA H100", "GPU-aaa", [1_000_000, 1_250_500], power_mw=50_000),
        FakeGpu("NVIDIA A100", "GPU-xyz", [5_000, 7_000], power_mw=20_000),
    ]


def test_two_counter_gpus_sum_their_energy(install):
    fake = install(two_gpus())

    report = measure()

    assert report.available is True
    assert report.source == SOURCE == "nvml_total_energy_counter"
    assert report.reason is None
    assert report.devices == [
        {"index": 0, "name": "NVIDIA H100", "source": SOURCE, "joules": pytest.approx(250.5)},
        {"index": 1, "name": "NVIDIA A100", "source": SOURCE, "joules": pytest.approx(2.0)},
    ]
    assert report.joules == pytest.approx(252.5)
    assert report.seconds >= 0
    assert fake.calls[0] == "init"
    assert fake.calls[-1] == "shutdown"


def test_counter_is_read_once_at_start_and_once_at_stop(install):
    gpus = two_gpus()
    install(gpus)

    meter = EnergyMeter(powercap_root=NO_RAPL)
    meter.start()
    assert [gpu.reads for gpu in gpus] == [1, 1]
    meter.stop()

    assert [gpu.reads for gpu in gpus] == [2, 2]


def test_only_the_visible_index_is_measured(install, monkeypatch):
    gpus = two_gpus()
    fake = install(gpus)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")

    report = measure()

    assert report.available is True
    assert [d["name"] for d in report.devices] == ["NVIDIA A100"]
    assert report.joules == pytest.approx(2.0)
    assert gpus[0].reads == 0
    assert "by_index:1" in fake.calls and "by_index:0" not in fake.calls


def test_visible_device_given_by_uuid(install, monkeypatch):
    gpus = two_gpus()
    fake = install(gpus)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-xyz")

    report = measure()

    assert report.available is True
    assert [d["name"] for d in report.devices] == ["NVIDIA A100"]
    assert report.joules == pytest.approx(2.0)
    assert gpus[0].reads == 0
    assert "by_uuid:GPU-xyz" in fake.calls


def test_mixed_index_and_uuid_list_with_spaces(install, monkeypatch):
    install(two_gpus())
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-xyz, 0")

    report = measure()

    assert [d["name"] for d in report.devices] == ["NVIDIA A100", "NVIDIA H100"]
    assert report.joules == pytest.approx(252.5)


def test_no_visible_gpu_is_unavailable(install, monkeypatch):
    fake = install(two_gpus())
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")

    report = measure()

    assert report.available is False
    assert report.joules is None
    assert report.source is None
    assert report.devices == []
    assert "no GPU is visible" in report.reason
    assert fake.calls[-1] == "shutdown"


def test_machine_without_gpus_is_unavailable(install):
    install([])

    report = measure()

    assert report.available is False
    assert report.joules is None
    assert "no GPU is visible" in report.reason


def test_gpu_with_neither_counter_nor_power_is_unavailable_and_named(install):
    fake = install(
        [
            FakeGpu("NVIDIA H100", "GPU-aaa", [1_000, 2_000]),
            FakeGpu("Tesla T4", "GPU-bbb", None, power_mw=None),
        ]
    )

    report = measure()

    assert report.available is False
    assert report.joules is None
    assert report.devices == []
    assert "Tesla T4" in report.reason
    assert "total-energy counter" in report.reason and "power reading" in report.reason
    assert report.power_samples == []
    assert fake.calls[-1] == "shutdown"


def test_unknown_uuid_is_reported_as_nvml_error(install, monkeypatch):
    install(two_gpus())
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-missing")

    report = measure()

    assert report.available is False
    assert report.joules is None
    assert report.reason.startswith("NVML error")
    assert "Not Found" in report.reason


def test_nvml_init_failure_is_unavailable(install):
    fake = install(two_gpus(), init_error="Driver Not Loaded")

    report = measure()

    assert report.available is False
    assert report.joules is None
    assert "NVML" in report.reason
    assert "Driver Not Loaded" in report.reason
    assert "shutdown" not in fake.calls


def test_pynvml_not_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` raise ImportError

    report = measure()

    assert report.available is False
    assert report.joules is None
    assert report.reason == "nvidia-ml-py is not installed"


def test_failure_at_final_reading_is_unavailable(install):
    fake = install([FakeGpu("NVIDIA H100", "GPU-aaa", [1_000])])  # only one reading scripted: stop() fails

    report = measure()

    assert report.available is False
    assert report.joules is None
    assert "final reading" in report.reason
    assert fake.calls[-1] == "shutdown"


def test_a_reading_mid_run_is_the_energy_so_far_and_the_meter_runs_on(install):
    counter = [1_000_000, 1_020_000, 1_040_000, 1_100_000]  # start, two readings, stop
    install([FakeGpu("NVIDIA H100", "GPU-aaa", counter), FakeGpu("Tesla T4", "GPU-bbb", None)])
    meter = EnergyMeter(interval=60, powercap_root=NO_RAPL)  # no tick of its own: the test drives them
    meter.start()
    failed = meter.reading()
    assert failed.available is False and "too few power readings from Tesla T4" in failed.reason
    meter._tick()
    so_far = meter.reading()
    assert so_far.available is True and so_far.devices[0]["joules"] == pytest.approx(40.0)
    assert so_far.power_samples == [], "the series is the final report's"
    final = meter.stop()
    assert final.available is True, "a failed reading leaves the meter as it was"
    assert final.devices[0]["joules"] == pytest.approx(100.0) and final.power_samples


def test_shutdown_called_once_after_stop(install):
    fake = install(two_gpus())

    meter = EnergyMeter(powercap_root=NO_RAPL)
    meter.start()
    assert "shutdown" not in fake.calls
    meter.stop()

    assert fake.calls.count("shutdown") == 1
    assert fake.calls[-1] == "shutdown"


def test_shutdown_error_does_not_break_the_report(install):
    fake = install(two_gpus())

    def broken_shutdown():
        raise fake.NVMLError("Uninitialized")

    fake.nvmlShutdown = broken_shutdown

    report = measure()

    assert report.available is True
    assert report.joules == pytest.approx(252.5)


def test_write_unavailable_report_has_null_joules(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)
    path = tmp_path / "nested" / "energy.json"

    measure().write(path)

    text = path.read_text()
    data = json.loads(text)
    assert set(data) == {
        "available", "source", "joules", "seconds", "devices", "reason",
        "avg_power_watts", "cpu_joules", "cpu_reason", "power_samples", "nodes",
    }  # fmt: skip
    assert '"joules": null' in text
    assert data["avg_power_watts"] is None and data["cpu_joules"] is None
    assert "no Intel RAPL" in data["cpu_reason"]
    assert data["joules"] is None
    assert data["available"] is False
    assert data["source"] is None
    assert data["devices"] == []
    assert data["reason"] == "nvidia-ml-py is not installed"
    assert isinstance(data["seconds"], float)
    assert text.endswith("\n")


def test_write_available_report_round_trips(install, tmp_path):
    install(two_gpus())
    path = tmp_path / "energy.json"

    measure().write(path)

    data = json.loads(path.read_text())
    assert data["available"] is True
    assert data["source"] == "nvml_total_energy_counter"
    assert data["joules"] == pytest.approx(252.5)
    assert [d["joules"] for d in data["devices"]] == pytest.approx([250.5, 2.0])
    assert data["reason"] is None
    assert data["avg_power_watts"] == pytest.approx(252.5 / data["seconds"])
    assert [w for _, w in data["power_samples"]] == pytest.approx([70.0] * len(data["power_samples"]))
    assert len(data["power_samples"]) >= 2


def test_minus_one_hides_every_gpu(install, monkeypatch):
    install(two_gpus())
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    report = measure()
    assert not report.available and report.joules is None
    assert report.reason == "no GPU is visible to this process"


def test_a_meter_never_started_reports_nothing(install):
    install(two_gpus())
    report = EnergyMeter(powercap_root=NO_RAPL).stop()
    assert not report.available and report.joules is None
    assert "never started" in report.reason


# --- power sampling -------------------------------------------------------------------------------------------


def test_trapezoid_of_a_known_ramp():
    # 0 -> 100 W over 1 s (50 J), then 100 W for 1 s (100 J), then 100 -> 0 W over 2 s (100 J)
    assert energy._trapezoid([(0.0, 0.0), (1.0, 100.0), (2.0, 100.0), (4.0, 0.0)]) == pytest.approx(250.0)
    assert energy._trapezoid([(0.0, 100.0)]) == 0


def test_constant_100_watts_integrates_to_about_30_joules(install):
    gpu = FakeGpu("Tesla T4", "GPU-bbb", None, power_mw=100_000)
    install([gpu])

    report = measure(seconds=0.3, interval=0.05)

    # The trapezoid of a constant curve is exact, so the only error is the span between the meter's own clock
    # readings and the first/last power sample: microseconds with the fake, well under 5 ms (0.5 J) on a slow CI.
    assert report.available is True
    assert report.source == POWER_SOURCE
    assert report.devices == [{"index": 0, "name": "Tesla T4", "source": POWER_SOURCE, "joules": report.joules}]
    assert report.joules == pytest.approx(100 * report.seconds, abs=0.5)
    assert 29.5 <= report.joules <= 45  # slept 0.3 s; the upper bound allows a busy shared CI core
    assert report.avg_power_watts == pytest.approx(100, abs=2)
    assert gpu.power_reads >= 4  # start, stop, and the thread's ticks in between (6 when nothing is late)


def test_scripted_power_readings_are_integrated_not_averaged(install):
    # First reading at start (0 W), every later one 200 W: the first interval is a ramp, so less than 200 W * s.
    gpu = FakeGpu("Tesla T4", "GPU-bbb", None, power_mw=[0, 200_000])
    install([gpu])

    report = measure(seconds=0.2, interval=0.05)

    samples = [w for _, w in report.power_samples]
    assert samples[0] == 0 and set(samples[1:]) == {200.0}
    t1 = report.power_samples[1][0]
    assert report.joules == pytest.approx(200 * (report.seconds - t1) + 100 * t1, abs=0.5)


def test_counter_and_power_only_gpus_give_a_mixed_source(install):
    install([FakeGpu("NVIDIA H100", "GPU-aaa", [1_000_000, 1_100_000]), FakeGpu("Tesla T4", "GPU-bbb", None)])

    report = measure(seconds=0.1, interval=0.02)

    assert report.available is True
    assert report.source == "mixed"
    assert [d["source"] for d in report.devices] == [SOURCE, POWER_SOURCE]
    assert report.devices[0]["joules"] == pytest.approx(100.0)
    assert report.devices[1]["joules"] == pytest.approx(50 * report.seconds, abs=0.5)
    assert report.joules == pytest.approx(sum(d["joules"] for d in report.devices))


def test_power_series_sums_every_visible_gpu_including_counter_gpus(install):
    gpus = two_gpus()
    install(gpus)

    report = measure(seconds=0.15, interval=0.02)

    times = [t for t, _ in report.power_samples]
    assert len(times) >= 4
    assert times == sorted(times) and times[0] >= 0 and times[-1] <= report.seconds
    assert {w for _, w in report.power_samples} == {70.0}
    assert [gpu.reads for gpu in gpus] == [2, 2]  # the thread reads power only, never the counters


def test_no_power_sample_lands_after_the_reported_window(install, monkeypatch):
    """The final sample is taken just before the window closes (0.15106 s, closing at 0.15109 s): its recorded time
    must not be rounded up past the window's end (0.1511 s did, now and then, with a real clock)."""
    install(two_gpus())
    meter = EnergyMeter(interval=60, powercap_root=NO_RAPL)  # no tick between start and stop
    meter.start()
    closing = iter([0.15106, 0.15109])  # the final tick's time, then the window's end
    monkeypatch.setattr(meter, "_now", lambda: next(closing))
    report = meter.stop()
    assert len(report.power_samples) == 2 and report.power_samples[-1][0] == 0.151
    assert report.seconds == pytest.approx(0.15109) and report.power_samples[-1][0] <= report.seconds


def test_power_series_respects_cuda_visible_devices(install, monkeypatch):
    gpus = two_gpus()
    install(gpus)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")

    report = measure(seconds=0.05, interval=0.01)

    assert {w for _, w in report.power_samples} == {20.0}
    assert gpus[0].power_reads == 0


def test_counter_gpu_without_power_reading_still_has_energy_but_no_series(install):
    install([FakeGpu("NVIDIA H100", "GPU-aaa", [1_000, 3_000], power_mw=None)])

    report = measure(seconds=0.05, interval=0.01)

    assert report.joules == pytest.approx(2.0)
    assert report.power_samples == []


def test_sampler_thread_stops_in_stop(install):
    gpu = FakeGpu("Tesla T4", "GPU-bbb", None)
    install([gpu])
    meter = EnergyMeter(interval=0.01, powercap_root=NO_RAPL)
    meter.start()
    time.sleep(0.05)
    assert any(t.name == "energy-sampler" for t in threading.enumerate())

    meter.stop()
    reads = gpu.power_reads
    time.sleep(0.05)

    assert not any(t.name == "energy-sampler" for t in threading.enumerate())
    assert gpu.power_reads == reads


def test_power_errors_in_the_thread_never_reach_training(install):
    fake = install([FakeGpu("NVIDIA H100", "GPU-aaa", [1_000, 5_000])])
    calls = {"n": 0}

    def flaky_power(handle):
        calls["n"] += 1
        if calls["n"] > 1:
            raise RuntimeError("GPU is lost")
        return 50_000

    fake.nvmlDeviceGetPowerUsage = flaky_power

    report = measure(seconds=0.05, interval=0.01)

    assert calls["n"] > 2  # the thread kept ticking through the errors
    assert report.available is True and report.joules == pytest.approx(4.0)
    assert report.power_samples == [[pytest.approx(report.power_samples[0][0]), 50.0]]  # only the start sample


# --- RAPL -----------------------------------------------------------------------------------------------------


def rapl_domain(root: Path, name: str, label: str, energy_uj: int, max_uj: int = 10_000_000) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "name").write_text(label + "\n")
    (folder / "energy_uj").write_text(f"{energy_uj}\n")
    (folder / "max_energy_range_uj").write_text(f"{max_uj}\n")
    return folder / "energy_uj"


@pytest.fixture
def powercap(tmp_path) -> dict[str, Path]:
    root = tmp_path / "powercap"
    return {
        "root": root,
        "pkg0": rapl_domain(root, "intel-rapl:0", "package-0", 1_000_000),
        "pkg1": rapl_domain(root, "intel-rapl:1", "package-1", 9_000_000),  # wraps during the test
        "core": rapl_domain(root, "intel-rapl:0:0", "core", 0),  # subzone of package 0: must be ignored
        "psys": rapl_domain(root, "intel-rapl:2", "psys", 0),  # whole platform: would double-count
        "mmio": rapl_domain(root, "intel-rapl-mmio:0", "package-0", 0),  # mirror of package 0
    }


def test_rapl_sums_packages_ignores_subzones_and_handles_wraparound(powercap, monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)
    meter = EnergyMeter(powercap_root=powercap["root"])
    meter.start()
    powercap["pkg0"].write_text("3500000\n")  # +2.5 J
    powercap["pkg1"].write_text("500000\n")  # wrapped: 10 J range - 9 J + 0.5 J = +1.5 J
    for other in ("core", "psys", "mmio"):
        powercap[other].write_text("999000000\n")

    report = meter.stop()

    assert report.cpu_joules == pytest.approx(4.0)
    assert report.cpu_reason is None
    assert report.joules is None and "nvidia-ml-py" in report.reason  # GPU side unaffected


def test_rapl_is_polled_by_the_thread_so_repeated_wraps_count(powercap):
    rapl = energy._Rapl(powercap["root"])
    rapl.start()
    for value in (6_000_000, 2_000_000, 8_000_000, 1_000_000):  # pkg0 wraps twice over four polls
        powercap["pkg0"].write_text(f"{value}\n")
        rapl.poll()

    # pkg0: +5 J, +6 J (wrap), +6 J, +3 J (wrap) = 20 J; pkg1 unchanged
    assert rapl.joules() == pytest.approx(20.0)


def test_rapl_permission_denied_is_reported(powercap, monkeypatch):
    real_read_text = Path.read_text

    def read_text(self, *args, **kwargs):
        if self == powercap["pkg1"]:
            raise PermissionError(13, "Permission denied", str(self))
        return real_read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", read_text)
    monkeypatch.setitem(sys.modules, "pynvml", None)

    report = measure(powercap_root=powercap["root"])

    assert report.cpu_joules is None
    assert "permission denied" in report.cpu_reason and "intel-rapl:1" in report.cpu_reason


def test_rapl_garbage_counter_is_reported(powercap, monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)
    powercap["pkg0"].write_text("not a number\n")

    report = measure(powercap_root=powercap["root"])

    assert report.cpu_joules is None
    assert report.cpu_reason.startswith("RAPL could not be read")


def test_no_rapl_folder(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)

    report = measure(powercap_root=tmp_path / "absent")

    assert report.cpu_joules is None
    assert "no Intel RAPL package domain" in report.cpu_reason


# --- derived figures and multi-node ---------------------------------------------------------------------------


def node_report(joules, cpu_joules, seconds, series, source=SOURCE, reason=None) -> EnergyReport:
    devices = [] if joules is None else [{"index": 0, "name": "GPU", "source": source, "joules": joules}]
    report = EnergyReport(joules is not None, source if joules else None, joules, seconds, devices, reason)
    report.cpu_joules, report.power_samples = cpu_joules, series
    return report


def test_avg_power_is_joules_over_seconds():
    assert node_report(300.0, None, 4.0, []).avg_power_watts == pytest.approx(75.0)
    assert node_report(None, None, 4.0, [], reason="no GPU").avg_power_watts is None


def test_sum_reports_adds_nodes_and_sums_power_on_the_first_nodes_ticks():
    a = node_report(100.0, 10.0, 10.0, [[0.0, 100.0], [1.0, 100.0], [2.0, 100.0]])
    b = node_report(50.0, 5.0, 12.0, [[0.5, 40.0], [1.5, 60.0], [2.5, 80.0]], source=POWER_SOURCE)

    total = sum_reports([a, b])

    assert total.available is True and total.reason is None
    assert total.joules == pytest.approx(150.0) and total.cpu_joules == pytest.approx(15.0)
    assert total.seconds == 12.0
    assert total.avg_power_watts == pytest.approx(12.5)
    assert total.source == "mixed"
    assert [(d["node"], d["source"]) for d in total.devices] == [(0, SOURCE), (1, POWER_SOURCE)]
    # the common span is 0.5..2.0 s; node 1 is interpolated at node 0's ticks 1.0 (50 W) and 2.0 (70 W)
    assert total.power_samples == [[1.0, 150.0], [2.0, 170.0]]
    assert [(n["node"], n["joules"], n["seconds"]) for n in total.nodes] == [(0, 100.0, 10.0), (1, 50.0, 12.0)]


def test_sum_reports_with_a_node_lacking_energy_is_unavailable():
    a = node_report(100.0, 10.0, 10.0, [[0.0, 100.0], [1.0, 100.0]])
    b = node_report(None, None, 10.0, [], reason="nvidia-ml-py is not installed")
    b.cpu_reason = "no Intel RAPL package domain under /x"

    total = sum_reports([a, b])

    assert total.available is False and total.joules is None and total.source is None
    assert total.reason == "node 1: nvidia-ml-py is not installed"
    assert total.cpu_joules is None and total.cpu_reason.startswith("node 1: no Intel RAPL")
    assert total.power_samples == []
    assert total.avg_power_watts is None


def test_sum_reports_of_one_report_keeps_its_figures_and_needs_at_least_one():
    a = node_report(100.0, 10.0, 10.0, [[0.0, 100.0], [1.0, 90.0]])
    total = sum_reports([a])
    assert (total.joules, total.cpu_joules, total.power_samples) == (100.0, 10.0, [[0.0, 100.0], [1.0, 90.0]])
    with pytest.raises(ValueError):
        sum_reports([])


def test_summed_report_writes_json(tmp_path):
    path = tmp_path / "energy.json"
    sum_reports([node_report(100.0, None, 10.0, []), node_report(50.0, None, 10.0, [])]).write(path)
    data = json.loads(path.read_text())
    assert data["joules"] == 150.0 and data["cpu_joules"] is None and len(data["nodes"]) == 2


def test_power_series_is_left_empty_when_one_gpu_cannot_report_power(install):
    # a total that silently missed the second GPU would understate the power
    install([FakeGpu("NVIDIA H100", "GPU-aaa", [0, 1_000]), FakeGpu("NVIDIA A100", "GPU-xyz", [0, 1_000], None)])

    report = measure(seconds=0.05, interval=0.01)

    assert report.joules == pytest.approx(2.0)
    assert report.power_samples == []
