"""The tensor names and shapes of a safetensors checkpoint, read from its headers alone.

A safetensors file starts with an 8-byte little-endian length and that many bytes of JSON
naming every tensor (dtype, shape, data offsets); the tensor data follows. Reading only the
headers costs a few reads per shard, so a 7B checkpoint is inspected in milliseconds without
touching its gigabytes. The files are hostile input: the length is capped and checked against
the file's size, the JSON's shape is checked, and each problem is one `CheckpointError` line.
"""

from __future__ import annotations

import os
import stat
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from niodoo_supervisor.files.inputs import (
    InputFileError,
    access_problem,
    is_file,
    json_object,
    read_text_file,
)

__all__ = [
    "BaseCheckpoint",
    "CheckpointError",
    "TensorHeader",
    "read_base_checkpoint",
    "read_safetensors_header",
]

# The largest published checkpoints' shard headers are a few MB (safetensors itself refuses
# headers above 100 MB); anything above this is a broken or hostile file.
MAX_HEADER_BYTES = 64 * 1024 * 1024
MAX_CONFIG_BYTES = 4 * 1024 * 1024
MAX_INDEX_BYTES = 64 * 1024 * 1024
_LENGTH = struct.Struct("<Q")


class CheckpointError(Exception):
    """A checkpoint file cannot be read; the message names the file and what is wrong."""


@dataclass(frozen=True)
class TensorHeader:
    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class BaseCheckpoint:
    """The base model as its files describe it: `config.json` and every tensor's header."""

    path: Path
    config: Mapping[str, Any] = field(repr=False)
    tensors: Mapping[str, TensorHeader] = field(repr=False)

    @property
    def text_config(self) -> Mapping[str, Any]:
        """The language model's settings (wrapper models nest them under `text_config`)."""
        nested = self.config.get("text_config")
        return nested if isinstance(nested, dict) else self.config

    @property
    def quant_method(self) -> str | None:
        quant = self.config.get("quantization_config")
        method = quant.get("quant_method") if isinstance(quant, dict) else None
        return str(method).lower() if method else None

    @property
    def architecture(self) -> str:
        names = self.config.get("architectures")
        return str(names[0]) if isinstance(names, list) and names else ""


def read_safetensors_header(path: Path) -> dict[str, TensorHeader]:
    """Every tensor's dtype and shape, from the header of the safetensors file at `path`."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise CheckpointError(_open_failure(path, exc)) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise CheckpointError(f"{path} is not a regular file")
        prefix = _read_exactly(fd, _LENGTH.size)
        if len(prefix) < _LENGTH.size:
            raise CheckpointError(f"{path} is truncated: {info.st_size} bytes, no header length")
        (length,) = _LENGTH.unpack(prefix)
        if length > MAX_HEADER_BYTES:
            raise CheckpointError(
                f"{path}: header length {length} is above the {MAX_HEADER_BYTES // 2**20} MiB "
                "a safetensors header can have: not a safetensors file, or corrupt"
            )
        if length > info.st_size - _LENGTH.size:
            raise CheckpointError(
                f"{path} is truncated: its header needs {length} bytes, the file has "
                f"{info.st_size - _LENGTH.size} after the length"
            )
        raw = _read_exactly(fd, length)
    except OSError as exc:
        raise CheckpointError(f"{path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if len(raw) < length:
        raise CheckpointError(f"{path} is truncated: the header ends early")
    return _parse_header(path, raw, info.st_size - _LENGTH.size - length)


def read_base_checkpoint(model_dir: Path) -> BaseCheckpoint | None:
    """The base model folder's config and tensor headers; None when it holds no safetensors
    weights to compare with (`.bin` or GGUF checkpoints)."""
    config = _read_json(model_dir / "config.json", MAX_CONFIG_BYTES)
    index_file = model_dir / "model.safetensors.index.json"
    if is_file(index_file):
        shards = _shard_names(index_file, _read_json(index_file, MAX_INDEX_BYTES))
    elif is_file(model_dir / "model.safetensors"):
        shards = ["model.safetensors"]
    else:
        return None
    tensors: dict[str, TensorHeader] = {}
    for shard in shards:
        tensors.update(read_safetensors_header(model_dir / shard))
    return BaseCheckpoint(model_dir, config, tensors)


def _read_exactly(fd: int, size: int) -> bytes:
    chunks: list[bytes] = []
    remaining = size
    while remaining:
        chunk = os.read(fd, min(remaining, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def _parse_header(path: Path, raw: bytes, data_size: int) -> dict[str, TensorHeader]:
    try:
        header = json_object(raw, f"{path}: the header")
    except ValueError as exc:
        raise CheckpointError(str(exc)) from None
    tensors: dict[str, TensorHeader] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        tensors[name] = _tensor_entry(path, name, entry, data_size)
    return tensors


def _tensor_entry(path: Path, name: str, entry: object, data_size: int) -> TensorHeader:
    where = f"{path}: tensor {name[:200]!r}"
    if not isinstance(entry, dict):
        raise CheckpointError(f"{where} must be an object with dtype, shape and data_offsets")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or not dtype:
        raise CheckpointError(f"{where} has no dtype")
    if not isinstance(shape, list) or not all(_natural(size) for size in shape):
        raise CheckpointError(f"{where}: shape must be a list of whole numbers, got {shape!r:.80}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_natural(offset) for offset in offsets)
        or not offsets[0] <= offsets[1] <= data_size
    ):
        raise CheckpointError(
            f"{where}: data_offsets must be [begin, end] within the file's {data_size} data "
            f"bytes, got {offsets!r:.80}"
        )
    return TensorHeader(dtype, tuple(shape))


def _natural(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _read_json(path: Path, limit: int) -> dict[str, Any]:
    try:
        return json_object(read_text_file(path, limit), str(path))
    except InputFileError as exc:
        raise CheckpointError(f"{exc}; {exc.fix}" if exc.fix else str(exc)) from None
    except ValueError as exc:
        raise CheckpointError(str(exc)) from None


def _shard_names(index_file: Path, index: Mapping[str, Any]) -> list[str]:
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index_file}: weight_map must be an object naming the shards")
    shards = sorted({str(shard) for shard in weight_map.values()})
    for shard in shards:
        # A shard is a file beside the index: a path out of the folder is not a checkpoint.
        if not shard or "/" in shard or "\\" in shard or shard in {".", ".."}:
            raise CheckpointError(f"{index_file}: shard {shard[:200]!r} is not a file name")
    return shards


def _open_failure(path: Path, exc: OSError) -> str:
    if isinstance(exc, PermissionError):
        problem = access_problem(path)
        if problem is not None:
            return f"cannot read {path}: {problem.message}; {problem.fix}"
    if isinstance(exc, FileNotFoundError):
        return f"{path} is missing"
    return f"cannot read {path}: {exc.strerror or exc}"
