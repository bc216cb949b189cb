"""Tests of shared.energy.EnergyMeter against a fake `pynvml`.

NVML is faked because no GPU exists on CI: every test injects a small stand-in module with
`monkeypatch.setitem(sys.modules, "pynvml", fake)`, so the real EnergyMeter code imports and drives it exactly as
it would the real nvidia-ml-py. The fake models GPUs whose total-energy counters advance through scripted
millijoule readings, a GPU without the counter, handles by index and by UUID, and nvmlInit failing.
"""

import json
import sys
import types

import pytest

from shared.energy import SOURCE, EnergyMeter, EnergyReport


class FakeGpu:
    def __init__(self, name: str, uuid: str, readings_mj: list[int] | None) -> None:
        """`readings_mj` is what successive counter reads return; None means the GPU has no counter."""
        self.name = name
        self.uuid = uuid
        self.readings_mj = None if readings_mj is None else list(readings_mj)
        self.reads = 0


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

    for fn in (
        nvmlInit,
        nvmlShutdown,
        nvmlDeviceGetCount,
        nvmlDeviceGetHandleByIndex,
        nvmlDeviceGetHandleByUUID,
        nvmlDeviceGetName,
        nvmlDeviceGetTotalEnergyConsumption,
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


def measure() -> EnergyReport:
    meter = EnergyMeter()
    meter.start()
    return meter.stop()


def two_gpus() -> list[FakeGpu]:
    return [
        FakeGpu("NVIDIA H100", "GPU-aaa", [1_000_000, 1_250_500]),
        FakeGpu("NVIDIA A100", "GPU-xyz", [5_000, 7_000]),
    ]


def test_two_counter_gpus_sum_their_energy(install):
    fake = install(two_gpus())

    report = measure()

    assert report.available is True
    assert report.source == SOURCE == "nvml_total_energy_counter"
    assert report.reason is None
    assert report.devices == [
        {"index": 0, "name": "NVIDIA H100", "joules": pytest.approx(250.5)},
        {"index": 1, "name": "NVIDIA A100", "joules": pytest.approx(2.0)},
    ]
    assert report.joules == pytest.approx(252.5)
    assert report.seconds >= 0
    assert fake.calls[0] == "init"
    assert fake.calls[-1] == "shutdown"


def test_counter_is_read_once_at_start_and_once_at_stop(install):
    gpus = two_gpus()
    install(gpus)

    meter = EnergyMeter()
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


def test_gpu_without_counter_is_unavailable_and_named(install):
    fake = install(
        [
            FakeGpu("NVIDIA H100", "GPU-aaa", [1_000, 2_000]),
            FakeGpu("Tesla T4", "GPU-bbb", None),
        ]
    )

    report = measure()

    assert report.available is False
    assert report.joules is None
    assert report.devices == []
    assert "Tesla T4" in report.reason
    assert "total-energy counter" in report.reason
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


def test_shutdown_called_once_after_stop(install):
    fake = install(two_gpus())

    meter = EnergyMeter()
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
    assert set(data) == {"available", "source", "joules", "seconds", "devices", "reason"}
    assert '"joules": null' in text
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


def test_minus_one_hides_every_gpu(install, monkeypatch):
    install(two_gpus())
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    report = measure()
    assert not report.available and report.joules is None
    assert report.reason == "no GPU is visible to this process"


def test_a_meter_never_started_reports_nothing(install):
    install(two_gpus())
    report = EnergyMeter().stop()
    assert not report.available and report.joules is None
    assert "never started" in report.reason
