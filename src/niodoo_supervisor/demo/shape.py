"""The demo model's shape and its seeded randomness, shared by the base model's weights
(`model`) and the adapters' (`adapters`)."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["SHAPE", "ModelShape", "normal", "seeded_rng"]


@dataclass(frozen=True)
class ModelShape:
    """Hyper-parameters of the base model."""

    vocab_size: int = 512
    hidden_size: int = 128
    num_layers: int = 2
    # head_dim = 128 / 2 = 64: the CPU build's attention kernel rejects head_dim 16 at the
    # first request ("Unsupported CPU attention configuration"), and 64 is known to work.
    num_heads: int = 2
    num_kv_heads: int = 1
    intermediate_size: int = 256
    max_position_embeddings: int = 512
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    init_std: float = 0.02

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def q_out(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_out(self) -> int:
        return self.num_kv_heads * self.head_dim


SHAPE = ModelShape()


def seeded_rng(seed: int, stream: str) -> np.random.Generator:
    # One independent stream per artefact, so adding an adapter leaves the others unchanged.
    return np.random.default_rng([seed, zlib.crc32(stream.encode("utf-8"))])


def normal(rng: np.random.Generator, shape: tuple[int, ...], std: float) -> npt.NDArray[np.float32]:
    values: npt.NDArray[np.float32] = rng.standard_normal(shape, dtype=np.float32)
    values *= np.float32(std)
    return values
