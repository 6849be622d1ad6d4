"""The unit's device settings let the service user open NVIDIA's nodes, and only those, on
systemd 252 (bookworm) and on systemd 247 (bullseye), where ProtectClock=yes used to turn the
device policy into an allow-list of the clock alone.

The nodes are fake (no driver): an open that the device policy allows fails with ENXIO, one
it blocks with EPERM. Bullseye's Python (3.9) cannot run the supervisor, so the check runs the
unit's own [Service] settings with the supervisor swapped for a small opener, on both roots.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import REPO, wait_for
from nspawn import Container, Roots

# Path -> (major, minor). The last is no NVIDIA node: it must stay blocked.
NODES = {
    "/dev/nvidiactl": (195, 255),
    "/dev/nvidia0": (195, 0),
    "/dev/nvidia1": (195, 1),
    "/dev/niodoo-not-a-gpu": (240, 0),
}
EXPECTED = {
    "/dev/nvidiactl": "ENXIO",
    "/dev/nvidia0": "ENXIO",
    "/dev/nvidia1": "ENXIO",
    "/dev/niodoo-not-a-gpu": "EPERM",
}
REPORT = "/var/lib/niodoo-supervisor/devices.json"
OPENER = "/usr/local/lib/niodoo-open-devices.py"
PROBE_UNIT = "niodoo-device-probe.service"


def probe_unit(unit_text: str) -> str:
    """The service's unit with its program swapped for the opener (a oneshot)."""
    command = " ".join(["/usr/bin/python3", OPENER, REPORT, *NODES])
    lines = []
    for line in unit_text.splitlines():
        if line.startswith("Type="):
            lines.append("Type=oneshot")
        elif line.startswith("ExecStart="):
            lines.append(f"ExecStart={command}")
        elif not line.startswith(("ExecReload=", "WatchdogSec=", "Restart")):
            lines.append(line)  # a oneshot neither reloads, pings nor restarts
    return "\n".join(lines) + "\n"


def open_as_service(container: Container) -> dict[str, str]:
    for node, (major, minor) in NODES.items():
        container.run("rm", "-f", node)
        container.run("mknod", "-m", "0666", node, "c", str(major), str(minor))
    if container.run("id", "niodoo", check=False).returncode != 0:
        container.run("useradd", "--system", "--no-create-home", "niodoo")
    container.write(OPENER, (Path(__file__).parent / "open_devices.py").read_text())
    unit_text = (REPO / "systemd" / "niodoo-supervisor.service").read_text()
    container.write(f"/etc/systemd/system/{PROBE_UNIT}", probe_unit(unit_text))
    container.run("systemctl", "daemon-reload")
    container.run("rm", "-f", REPORT)
    container.run("systemctl", "start", PROBE_UNIT, timeout=60)
    report = container.path(REPORT)
    wait_for(report.exists, 10, f"{REPORT} from {PROBE_UNIT}")
    return dict(json.loads(report.read_text()))


@pytest.fixture(scope="module")
def bullseye(roots: Roots, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Container]:
    work = tmp_path_factory.mktemp("bullseye")
    with Container(roots.bullseye, f"niodoo-test-247-{os.getpid()}", work).running() as container:
        yield container


@pytest.mark.parametrize(
    ("container_fixture", "systemd_version"), [("bullseye", "247"), ("installed", "252")]
)
def test_service_user_opens_nvidia_nodes_and_nothing_else(
    request: pytest.FixtureRequest, container_fixture: str, systemd_version: str
) -> None:
    container: Container = request.getfixturevalue(container_fixture)
    assert container.run("systemctl", "--version").stdout.split()[1] == systemd_version
    assert open_as_service(container) == EXPECTED
