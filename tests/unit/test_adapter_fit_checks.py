"""Where the adapter fit check runs: hostile safetensors headers and base folders give one
line each, `check` prints the broken demo adapters' errors (exit 78), and a live
`adapters load` of a broken adapter is refused before vLLM is asked."""

from __future__ import annotations

import asyncio
import json
import os
import struct
import sys
from pathlib import Path

import pytest
import yaml

from adapter_routes import FakeVllm, adapter_api
from niodoo_supervisor import exitcodes
from niodoo_supervisor.cli.main import main
from niodoo_supervisor.config.loader import load_config
from niodoo_supervisor.control.api import CommandResult
from niodoo_supervisor.demo.model import DemoModel, generate
from niodoo_supervisor.launch.checkpoint_headers import (
    MAX_HEADER_BYTES,
    CheckpointError,
    read_base_checkpoint,
    read_safetensors_header,
)
from niodoo_supervisor.launch.plan import plan_launch
from niodoo_supervisor.supervise.incidents import AdapterLoadAsked
from niodoo_supervisor.supervise.live_adapters import LiveAdapters
from niodoo_supervisor.supervise.states import State
from niodoo_supervisor.supervise.status_file import StatusBoard

FAKE_VLLM = Path(__file__).resolve().parents[1] / "fakevllm"


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoModel:
    return generate(tmp_path_factory.mktemp("demo"))


# --- hostile headers ----------------------------------------------------------------------------


def _framed(header: bytes, length: int | None = None, data: bytes = b"") -> bytes:
    return struct.pack("<Q", len(header) if length is None else length) + header + data


_GOOD_ENTRY = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}


@pytest.mark.parametrize(
    ("content", "said"),
    [
        (b"\x10\x00", "is truncated: 2 bytes, no header length"),
        (_framed(b"{not json"), "the header is not valid JSON"),
        (_framed(b"{}", length=4096), "is truncated: its header needs 4096 bytes"),
        (_framed(b"{}", length=2**63), f"above the {MAX_HEADER_BYTES // 2**20} MiB"),
        (_framed(b"[1, 2]"), "the header must hold a JSON object"),
        (_framed(b"[" * 100_000), "not valid JSON"),
        (_framed(json.dumps({"t": "x"}).encode()), "tensor 't' must be an object"),
        (
            _framed(json.dumps({"t": {**_GOOD_ENTRY, "shape": [2, -1]}}).encode(), data=b"0" * 8),
            "shape must be a list of whole numbers",
        ),
        (
            _framed(json.dumps({"t": {**_GOOD_ENTRY, "shape": "2"}}).encode(), data=b"0" * 8),
            "shape must be a list of whole numbers",
        ),
        (
            _framed(json.dumps({"t": _GOOD_ENTRY}).encode(), data=b"0" * 4),
            "data_offsets must be [begin, end] within the file's 4 data bytes",
        ),
        (
            _framed(json.dumps({"t": {"shape": [2], "data_offsets": [0, 8]}}).encode()),
            "tensor 't' has no dtype",
        ),
    ],
)
def test_a_hostile_header_is_one_line_naming_the_file(
    tmp_path: Path, content: bytes, said: str
) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as refused:
        read_safetensors_header(path)
    message = str(refused.value)
    assert message.startswith(str(path)) and said in message and "\n" not in message


def test_a_fifo_a_folder_and_a_symlink_loop_are_refused_without_blocking(
    tmp_path: Path,
) -> None:
    fifo, folder, loop = tmp_path / "fifo", tmp_path / "folder", tmp_path / "loop"
    os.mkfifo(fifo)
    folder.mkdir()
    loop.symlink_to(loop)
    for path, said in [
        (fifo, "is not a regular file"),
        (folder, "is not a regular file"),
        (loop, "symbolic links"),
        (tmp_path / "missing", "is missing"),
    ]:
        with pytest.raises(CheckpointError, match=said):
            read_safetensors_header(path)


def test_an_index_naming_a_shard_outside_the_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    index = {"weight_map": {"a.weight": "../../etc/passwd"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"shard '../../etc/passwd' is not a file name"):
        read_base_checkpoint(tmp_path)


def test_an_index_without_a_weight_map_and_a_bad_config_are_refused(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("[]")
    with pytest.raises(CheckpointError, match=r"config.json must hold a JSON object"):
        read_base_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors.index.json").write_text('{"weight_map": []}')
    with pytest.raises(CheckpointError, match=r"weight_map must be an object naming the shards"):
        read_base_checkpoint(tmp_path)


# --- check (and run: the same preflight) ---------------------------------------------------------


def _config_file(tmp_path: Path, model: Path, adapters: dict[str, Path]) -> Path:
    document = {
        "server": {"python": sys.executable, "env": {"PYTHONPATH": str(FAKE_VLLM)}},
        "model": {"path": str(model)},
        "lora": {
            "enabled": True,
            "max_lora_rank": 16,
            "max_loras": 5,
            "adapters": [{"name": name, "path": str(path)} for name, path in adapters.items()],
        },
        "supervisor": {"state_dir": str(tmp_path / "state")},
    }
    path = tmp_path / "niodoo.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False, width=1_000_000))
    return path


@pytest.fixture
def _flag_cache_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def _check(config: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    code = main(["check", "-c", str(config), "--no-port"])
    return code, capsys.readouterr().out.splitlines()


@pytest.mark.usefixtures("_flag_cache_in_tmp")
def test_check_prints_the_three_broken_adapters_errors_and_exits_78(
    demo: DemoModel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    names = ["prefixed", "misshapen", "stranger", "untrained"]
    adapters = {"alpha": demo.adapters["alpha"]} | {name: demo.broken[name] for name in names}
    code, out = _check(_config_file(tmp_path, demo.base, adapters), capsys)
    assert code == exitcodes.CONFIG == 78
    errors = [line for line in out if "error" in line and "lora.adapters" in line]
    assert len(errors) == 3, out
    prefixed, misshapen, stranger = errors
    assert "lora.adapters[1]" in prefixed and "adapter 'prefixed': 4 of its 4 modules" in prefixed
    assert "would silently serve base-model output" in prefixed
    assert "lora.adapters[2]" in misshapen and "is [8, 64], expected [8, 128]" in misshapen
    assert "lora.adapters[3]" in stranger and "w_proj" in stranger
    assert "after the whole model load" in stranger
    assert out[-1].endswith(": 3 error(s), 0 warning(s): vLLM would not start with this config")


@pytest.mark.usefixtures("_flag_cache_in_tmp")
def test_check_of_a_broken_base_checkpoint_is_one_problem_on_model_path(
    demo: DemoModel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text("{}")
    (base / "model.safetensors").write_bytes(_framed(b"{}", length=1 << 40))
    code, out = _check(_config_file(tmp_path, base, {"alpha": demo.adapters["alpha"]}), capsys)
    assert code == exitcodes.CONFIG
    [problem] = [line for line in out if "model.safetensors" in line]
    assert "model.path" in problem and "header length 1099511627776 is above" in problem


# --- a live load ----------------------------------------------------------------------------------


async def test_a_live_load_of_a_broken_adapter_is_refused_before_vllm_is_asked(
    demo: DemoModel, tmp_path: Path
) -> None:
    config_file = _config_file(tmp_path, demo.base, {"alpha": demo.adapters["alpha"]})
    document = yaml.safe_load(config_file.read_text())
    document["lora"]["runtime_updates"] = True
    config_file.write_text(yaml.safe_dump(document))
    config, problems = load_config(config_file, {})
    assert config is not None, problems
    vllm = FakeVllm(config.served_name, loaded={"alpha": str(demo.adapters["alpha"])})
    live = LiveAdapters(
        config, plan_launch(config, None, {}), StatusBoard(), adapter_api(vllm), asyncio.Event()
    )

    async def load(name: str, path: Path) -> CommandResult:
        reply: asyncio.Future[CommandResult] = asyncio.get_running_loop().create_future()
        await live.command(AdapterLoadAsked(name, str(path), reply), State.READY, _Prober())
        return reply.result()

    refused = await load("p", demo.broken["prefixed"])
    assert not refused.ok
    assert refused.message.startswith("adapter 'p' refused before loading: 4 of its 4 modules")
    assert ("load", "p") not in vllm.calls
    assert (await load("u", demo.broken["untrained"])).ok  # statically fine
    await live.aclose()


class _Prober:
    def expect_adapters(self, names: object) -> None:
        pass
