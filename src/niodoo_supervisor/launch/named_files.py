"""The files a config names, as preflight reads them: the API key, the model folder, the
operator's logging config. Each check reports through `relations.Report` and never raises:
a file that is missing, unreadable for the service user, a FIFO, a device or too large is a
config problem (exit 78), not a crash.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from niodoo_supervisor.config.loader import Config
from niodoo_supervisor.config.relations import Report
from niodoo_supervisor.files.inputs import (
    InputFileError,
    access_problem,
    is_dir,
    is_file,
    protect_home_hint,
    read_text_file,
)

__all__ = [
    "MAX_JSON_BYTES",
    "MAX_KEY_FILE_BYTES",
    "api_key_problem",
    "check_model_path",
    "reachable",
    "read_api_key",
    "read_logging_loggers",
]

MAX_KEY_FILE_BYTES = 64 * 1024
MAX_JSON_BYTES = 1024 * 1024


def reachable(key: str, path: str | os.PathLike[str], report: Report, want: int = os.R_OK) -> bool:
    """Whether this user can reach `path` (every folder on the way, then `want` on it);
    reports the first obstacle under `key`. A missing path counts as reachable: the caller
    words that itself."""
    problem = access_problem(path, want)
    if problem is None:
        return True
    report(key, problem.message, problem.fix)
    return False


def read_api_key(config: Config, environ: Mapping[str, str], report: Report) -> str | None:
    """The key from `server.api_key_env` or the first line of `server.api_key_file`, without
    surrounding whitespace (`echo KEY > file` and `KEY=abc ` are what operators write)."""
    key_env, key_file = config.server.api_key_env, config.server.api_key_file
    if key_env:
        key = environ.get(key_env, "").strip()
        if not key:
            report(
                "server.api_key_env",
                f"environment variable {key_env} is not set or empty",
                "set it (systemd: EnvironmentFile=) or use api_key_file",
            )
            return None
        return _checked_key(key, "server.api_key_env", f"variable {key_env}", report)
    if not key_file:
        return None
    try:
        text = read_text_file(key_file, MAX_KEY_FILE_BYTES)
    except InputFileError as exc:
        report(
            "server.api_key_file",
            f"cannot read the API key from {exc.path}: {exc.reason}",
            exc.fix or "create it (mode 0600) with the key on its first line",
        )
        return None
    lines = text.strip().splitlines()
    key = lines[0].strip() if lines else ""
    if not key:
        report("server.api_key_file", f"{key_file} is empty", "write the key on its first line")
        return None
    return _checked_key(key, "server.api_key_file", str(key_file), report)


def _checked_key(key: str, path: str, source: str, report: Report) -> str | None:
    problem = api_key_problem(key)
    if problem is None:
        return key
    # The key itself is never quoted: problems reach the journal and status.json.
    report(
        path,
        f"the API key in {source} {problem}: it travels in an HTTP header",
        "use printable ASCII without spaces (surrounding whitespace and the final newline are fine)",
    )
    return None


def api_key_problem(key: str) -> str | None:
    """Why `key` cannot be sent as `Authorization: Bearer <key>`, or None. Printable ASCII
    only: a control character breaks the header, a space or a non-ASCII character makes the
    key differ between the supervisor, vLLM and clients."""
    for position, char in enumerate(key, start=1):
        if "!" <= char <= "~":
            continue
        if char.isspace():
            what = "whitespace"
        elif not char.isascii():
            what = "a non-ASCII character"
        else:
            what = "a control character"
        return f"contains {what} at position {position} of {len(key)}"
    return None


def check_model_path(config: Config, report: Report) -> None:
    model = str(config.model.path)
    path = Path(model)
    if not path.is_absolute():
        report(
            "model.path",
            f"{model!r} is not a local path: vLLM will look it up in the hub cache or download it",
            "use an absolute path for a local model",
            warning=True,
        )
        return
    if not reachable("model.path", path, report):
        return
    if not path.exists():  # reachable: every folder on the way may be entered
        report(
            "model.path",
            f"{model} does not exist",
            "fix the path, or give a hub id" + protect_home_hint(path),
        )
    elif is_dir(path) and not is_file(path / "config.json"):
        report(
            "model.path",
            f"{model} has no config.json: not a Hugging Face model folder",
            "point at the folder holding config.json",
        )
    elif is_dir(path):
        reachable("model.path", path / "config.json", report)


def read_logging_loggers(config: Config, report: Report) -> dict[str, Any] | None:
    """The `loggers` of the operator's logging config (`server.logging_config`), None when
    there is none or it cannot be read (reported)."""
    path = config.server.logging_config
    if not path:
        return None
    fix = "fix it, or remove the key to use the supervisor's own"
    try:
        data = json.loads(read_text_file(path, MAX_JSON_BYTES))
    except InputFileError as exc:
        report("server.logging_config", str(exc), exc.fix or fix)
        return None
    except (ValueError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        report("server.logging_config", f"{path} is not valid JSON: {reason}", fix)
        return None
    loggers = data.get("loggers", {}) if isinstance(data, dict) else {}
    return loggers if isinstance(loggers, dict) else {}
