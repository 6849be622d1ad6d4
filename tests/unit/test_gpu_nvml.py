"""`gpu/nvml.py` against the scripted fake binding (`tests/fakenvml/pynvml.py`): which GPUs
CUDA_VISIBLE_DEVICES names, the memory and processes read, and every NVML failure as one
line naming the fix."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from niodoo_supervisor.gpu.nvml import (
    GpuDevice,
    GpuReader,
    GpuUnavailable,
    describe_nvml_error,
    open_nvml,
    visible_indexes,
)
from niodoo_supervisor.supervise.gpu_source import ThreadedNvml

FAKE = Path(__file__).resolve().parents[1] / "fakenvml"
MIB = 1 << 20
UUIDS = ["GPU-aaaa1111-0000", "GPU-bbbb2222-0000", "GPU-aaaa3333-0000"]


@pytest.fixture
def script(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Write the fake's script; the fake `pynvml` is the one imported."""
    monkeypatch.syspath_prepend(str(FAKE))
    monkeypatch.delitem(sys.modules, "pynvml", raising=False)
    path = tmp_path / "nvml.json"
    monkeypatch.setenv("FAKE_NVML_SCRIPT", str(path))

    def write(**content: Any) -> Path:
        path.write_text(json.dumps(content))
        return tmp_path

    yield write
    sys.modules.pop("pynvml", None)


def _opened(script: Any, **content: Any) -> GpuReader:
    script(**content)
    return open_nvml()


@pytest.mark.parametrize(
    ("visible", "expected"),
    [
        (None, [0, 1, 2]),
        ("1,0", [1, 0]),
        ("", []),
        ("-1", []),
        ("0,7,1", [0]),  # CUDA stops at the first entry naming no device
        ("2, 2 ,1", [2, 1]),
        ("GPU-bbbb", [1]),  # a unique UUID prefix
        ("GPU-aaaa,1", []),  # ambiguous: names no device
        ("GPU-aaaa3333-0000,0", [2, 0]),
    ],
)
def test_cuda_visible_devices_maps_like_vllm(visible: str | None, expected: list[int]) -> None:
    assert visible_indexes(visible, UUIDS) == expected


def test_without_the_binding_one_line_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml raises ImportError
    with pytest.raises(GpuUnavailable) as caught:
        open_nvml()
    assert "niodoo-supervisor[gpu]" in str(caught.value)
    assert "gpu.nvml: off" in str(caught.value)


@pytest.mark.parametrize(
    ("code", "says"),
    [(12, "install the NVIDIA driver"), (9, "kernel driver is not loaded"), (4, "no permission")],
)
def test_a_failed_init_is_one_line_with_the_fix(script: Any, code: int, says: str) -> None:
    with pytest.raises(GpuUnavailable) as caught:
        _opened(script, init_error=code)
    text = str(caught.value)
    assert says in text and f"code {code}" in text and "\n" not in text


def test_an_unknown_code_still_reads_as_one_line() -> None:
    assert describe_nvml_error(4242, "Weird") == (
        "NVML: NVML failed; check `nvidia-smi` and dmesg (NVML says 'Weird', code 4242)"
    )


def test_devices_report_memory_and_holders_with_names(script: Any) -> None:
    reader = _opened(
        script,
        devices=[
            {"name": "NVIDIA A10", "uuid": UUIDS[0], "total_mib": 24576, "reserved_mib": 300},
            {"name": "NVIDIA A10", "uuid": UUIDS[1], "total_mib": 24576},
        ],
        foreign=[{"pid": 4242, "name": "python", "mib": 20000, "device": 1}],
    )
    first, second = reader.devices(None)
    assert first == GpuDevice(0, UUIDS[0], "NVIDIA A10", 24576 * MIB, 24276 * MIB, 300 * MIB, ())
    assert (second.index, second.free_bytes, second.used_bytes) == (1, 4576 * MIB, 20000 * MIB)
    assert [(p.pid, p.used_bytes, p.name) for p in second.processes] == [
        (4242, 20000 * MIB, "python")
    ]
    assert [d.index for d in reader.devices("GPU-bbbb")] == [1]
    reader.close()


@pytest.mark.parametrize("visible", ["MIG-4f2f4a3c-1b1e", "0,MIG-GPU-aaaa1111-0000/1/0"])
def test_a_mig_device_is_said_not_read_never_an_empty_list(script: Any, visible: str) -> None:
    reader = _opened(script, devices=[{"uuid": UUIDS[0], "total_mib": 81920}])
    with pytest.raises(GpuUnavailable) as caught:
        reader.devices(visible)
    assert str(caught.value).startswith("CUDA_VISIBLE_DEVICES names MIG device(s) MIG-")
    assert "not checked" in str(caught.value)
    reader.close()


def test_a_process_size_nvml_cannot_tell_is_none(script: Any) -> None:
    reader = _opened(script, unknown_sizes=True, foreign=[{"pid": 4242, "mib": 100}])
    assert reader.devices(None)[0].processes[0].used_bytes is None


def test_a_lost_gpu_is_one_line(script: Any) -> None:
    tmp = script()
    reader = _opened(script, lost_file=str(tmp / "lost"))
    assert reader.devices(None)
    (tmp / "lost").touch()
    with pytest.raises(GpuUnavailable) as caught:
        reader.devices(None)
    assert "a GPU is lost" in str(caught.value) and "code 15" in str(caught.value)
    reader.close()  # nvmlShutdown failing too is not an error


def test_the_fake_holds_memory_for_live_matches_and_frees_it_late(script: Any) -> None:
    tmp = script()
    marker = f"{tmp}/holder-marker"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", marker])
    try:
        reader = _opened(script, holders=[{"cmdline": marker, "mib": 1000, "release_s": 3600}])
        assert [p.pid for p in reader.devices(None)[0].processes] == [holder.pid]
    finally:
        holder.kill()
        holder.wait()
    # Dead, but its memory is not back yet (the driver tears its context down late).
    assert [p.pid for p in reader.devices(None)[0].processes] == [holder.pid]
    script(holders=[{"cmdline": marker, "mib": 1000, "release_s": 0}])
    assert reader.devices(None)[0].processes == ()


async def test_a_hung_nvml_call_gives_up_at_its_deadline() -> None:
    release = threading.Event()

    def hangs() -> GpuReader:
        release.wait(30)
        raise GpuUnavailable("NVML: released")

    source = ThreadedNvml(hangs, timeout=0.05)
    try:
        with pytest.raises(GpuUnavailable, match=r"no answer within 0\.05 s"):
            await source.open()
        with pytest.raises(GpuUnavailable, match="earlier call has not returned"):
            await source.open()
    finally:
        release.set()


async def test_a_binding_bug_is_a_gpu_unavailable_not_a_crash() -> None:
    def broken() -> GpuReader:
        raise AttributeError("module 'pynvml' has no attribute 'nvmlInit'")

    with pytest.raises(GpuUnavailable, match="the binding failed: AttributeError"):
        await ThreadedNvml(broken).open()
