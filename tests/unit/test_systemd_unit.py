"""systemd/niodoo-supervisor.service: valid for systemd, and set up the way the daemon needs."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from niodoo_supervisor import exitcodes
from niodoo_supervisor.config import load_config

UNIT_NAME = "niodoo-supervisor.service"
INSTALLED_EXEC = "/opt/niodoo-supervisor/venv/bin/niodoo-supervisor"


def _unit_text(repo: Path) -> str:
    return (repo / "systemd" / UNIT_NAME).read_text()


def _service(repo: Path) -> dict[str, list[str]]:
    """The [Service] section's assignments, key -> every value in order."""
    values: dict[str, list[str]] = {}
    section = None
    for raw in _unit_text(repo).splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
            continue
        if section == "[Service]":
            key, _, value = line.partition("=")
            values.setdefault(key.strip(), []).append(value.strip())
    return values


def _verify(unit: Path) -> subprocess.CompletedProcess[str]:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (package systemd); cannot verify the unit")
    return subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )


def _local_copy(repo: Path, tmp_path: Path, text: str | None = None) -> Path:
    """The unit with ExecStart pointing at this checkout's console script (verify checks
    that the program exists); User= and Group= stay as they are."""
    script = Path(sys.executable).parent / "niodoo-supervisor"
    assert script.is_file(), f"{script} is missing: pip install -e . into the venv"
    source = _unit_text(repo) if text is None else text
    assert INSTALLED_EXEC in source
    unit = tmp_path / UNIT_NAME
    unit.write_text(source.replace(INSTALLED_EXEC, str(script)))
    return unit


def _complaints(result: subprocess.CompletedProcess[str]) -> list[str]:
    # Lines about other units (the host's own) are not this unit's problem.
    return [line for line in (result.stdout + result.stderr).splitlines() if UNIT_NAME in line]


def test_unit_passes_systemd_analyze_verify(repo: Path, tmp_path: Path) -> None:
    result = _verify(_local_copy(repo, tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert _complaints(result) == []


def test_verify_would_catch_a_broken_unit(repo: Path, tmp_path: Path) -> None:
    # Guards the test above against a verify that accepts anything.
    text = _unit_text(repo).replace("KillMode=mixed", "KilMode=mixed")
    result = _verify(_local_copy(repo, tmp_path, text))
    assert any("KilMode" in line for line in _complaints(result)), result


def test_unit_has_what_the_daemon_relies_on(repo: Path) -> None:
    service = _service(repo)
    assert service["Type"] == ["notify"]
    assert service["NotifyAccess"] == ["main"]
    assert service["KillMode"] == ["mixed"]
    assert service["RestartPreventExitStatus"] == [str(exitcodes.CONFIG)]
    assert service["Restart"] == ["on-failure"]
    watchdog = service["WatchdogSec"]
    assert len(watchdog) == 1 and int(watchdog[0]) > 0
    # WatchdogSec must outlast the longest run of failing checks of the production config,
    # each taking up to the interval plus two probe timeouts (/health, then /v1/models).
    config, _ = load_config(repo / "config" / "niodoo.yaml", {"NIODOO_API_KEY": "k"})
    assert config is not None
    health = {
        name: config[f"supervisor.health.{name}"]
        for name in ("interval", "timeout", "failure_threshold")
    }
    assert int(watchdog[0]) > health["failure_threshold"] * (
        health["interval"] + 2 * health["timeout"]
    )
    assert service["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert any(
        value.lstrip("-").startswith("/etc/niodoo-supervisor/")
        for value in service["EnvironmentFile"]
    )
    exec_start = service["ExecStart"]
    assert exec_start == [f"{INSTALLED_EXEC} run -c /etc/niodoo-supervisor/niodoo.yaml"]
    assert service["User"] == ["niodoo"] and service["Group"] == ["niodoo"]
