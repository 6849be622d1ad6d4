"""systemd/niodoo-supervisor.service: valid for systemd, and set up the way the daemon needs."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from niodoo_supervisor import exitcodes
from niodoo_supervisor.config.loader import load_config

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
    health = config.supervisor.health
    assert int(watchdog[0]) > health.failure_threshold * (health.interval + 2 * health.timeout)
    # `reload` waits for the outcome over the control socket: a refused config fails it.
    assert service["ExecReload"] == [
        "/opt/niodoo-supervisor/venv/bin/niodoo-supervisor reload -c /etc/niodoo-supervisor/niodoo.yaml"
    ]
    assert any(
        value.lstrip("-").startswith("/etc/niodoo-supervisor/")
        for value in service["EnvironmentFile"]
    )
    exec_start = service["ExecStart"]
    assert exec_start == [f"{INSTALLED_EXEC} run -c /etc/niodoo-supervisor/niodoo.yaml"]
    assert service["User"] == ["niodoo"] and service["Group"] == ["niodoo"]


def test_security_exposure_is_at_most_2(repo: Path, tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (package systemd); cannot score the unit")
    result = subprocess.run(
        [analyze, "security", "--offline=yes", str(_local_copy(repo, tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if "--offline" in result.stderr and "unrecognized option" in result.stderr:
        pytest.skip("systemd-analyze older than 252 has no --offline; cannot score the unit")
    score = re.search(r"Overall exposure level for \S+: ([0-9.]+)", result.stdout)
    assert score is not None, result.stdout + result.stderr
    failing = [line for line in result.stdout.splitlines() if line.startswith("✗")]
    assert float(score.group(1)) <= 2.0, f"exposure {score.group(1)}:\n" + "\n".join(failing)


def test_devices_are_closed_but_nvidia_by_name_and_by_path(repo: Path) -> None:
    service = _service(repo)
    assert service["DevicePolicy"] == ["closed"]
    allowed = service["DeviceAllow"]
    assert "char-nvidia* rw" in allowed
    for node in ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/char/195:0"):
        assert f"{node} rw" in allowed
    # systemd takes globs in device group names only; a path with one matches nothing.
    paths = [entry.split()[0] for entry in allowed if entry.startswith("/")]
    assert not [path for path in paths if set(path) & set("*?[")]


def test_unit_names_no_group_a_host_may_lack(repo: Path) -> None:
    # A missing group fails the unit (216/GROUP) before the supervisor runs.
    assert _service(repo).get("SupplementaryGroups", []) in ([], [""])


def test_readme_installs_with_the_script_the_systemd_tier_runs(repo: Path) -> None:
    # tests/systemd installs with scripts/install-service.sh and checks what it installed, so
    # the README must show that script, not steps of its own that could drift from it.
    readme = (repo / "README.md").read_text()
    section = readme.split("## Installing the service", 1)[1].split("\n## ", 1)[0]
    assert "scripts/install-service.sh" in section
    assert "niodoo-supervisor-check" in section
    assert "pip install" not in section
