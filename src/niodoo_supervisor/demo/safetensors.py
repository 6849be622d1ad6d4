"""Write float32 numpy arrays as a BF16 safetensors file, by hand.

numpy has no bfloat16, and the demo model generator (`demo_model`) must not need torch or the
`safetensors` library to write its weights, so the rounding and the file format are done here
with numpy and the standard library. The output is byte-for-byte deterministic.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["encode_safetensors", "float32_to_bf16_bits"]


def float32_to_bf16_bits(values: npt.NDArray[np.float32]) -> npt.NDArray[np.uint16]:
    """Round float32 to bfloat16 (nearest, ties to even), as torch does; return the bits.

    bfloat16 is the upper half of a float32, so rounding is integer arithmetic on the bits.
    NaN is not handled: the generator never produces it.
    """
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return rounded.astype(np.uint16)


def encode_safetensors(tensors: Mapping[str, npt.NDArray[np.float32]]) -> bytes:
    """Serialise float32 arrays as a BF16 safetensors file (sorted by name, as safetensors does).

    Format: u64 little-endian header length, JSON header (padded with spaces to 8 bytes so the
    data is aligned), then the raw little-endian tensor bytes back to back.
    """
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    chunks: list[bytes] = []
    offset = 0
    for name in sorted(tensors):
        array = tensors[name]
        data = float32_to_bf16_bits(array).astype("<u2").tobytes()
        header[name] = {
            "dtype": "BF16",
            "shape": list(array.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        chunks.append(data)
        offset += len(data)
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + b"".join(chunks)
