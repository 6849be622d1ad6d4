"""The real-systemd tier: the unit installed the way the README documents, in a container
booting a real systemd (systemd-nspawn), running the supervisor with the fake vLLM.

scripts/setup-systemd-env.sh provides the root file systems (cached; a few minutes the
first time, see README.md "Tests"). One bookworm container (systemd 252) serves the whole session; each test starts
from the installed unit with the default test config and leaves it stopped. Skipped only where
the tier cannot run at all (not root, no cgroup2); CI runs as root.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from installed_service import (
    API_KEY,
    CONFIG,
    DROP_IN_DIR,
    FAKE_MODEL,
    SOURCE,
    UNIT,
    WHEELS,
    checkout_copy,
    service_config,
    write_adapter,
    write_fake_model,
)
from nspawn import Container, Roots, prepare_roots, why_not_runnable


@pytest.fixture(scope="session")
def roots() -> Roots:
    reason = why_not_runnable()
    if reason:
        pytest.skip(reason)
    return prepare_roots()


@pytest.fixture(scope="session")
def installed(roots: Roots, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Container]:
    """A bookworm container with the service installed by scripts/install-service.sh, the
    script the README shows, run offline against the prepared wheels."""
    work = tmp_path_factory.mktemp("systemd")
    source = checkout_copy(work / "source")
    name = f"niodoo-test-{os.getpid()}"
    bookworm = Container(
        roots.bookworm, name, work, bind=[(source, SOURCE)], bind_ro=[(roots.wheels, WHEELS)]
    )
    with bookworm.running() as container:
        # A host with no render or video group (a minbase root has neither anyway): the unit
        # must not depend on them.
        for group in ("render", "video"):
            container.run("groupdel", group, check=False)
        container.run(
            f"{SOURCE}/scripts/install-service.sh",
            timeout=300,
            env={"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": WHEELS},
        )
        container.write("/etc/niodoo-supervisor/env", f"NIODOO_API_KEY={API_KEY}\n", 0o600)
        write_fake_model(container, FAKE_MODEL)
        write_adapter(container, "/srv/niodoo/adapters/alpha", 8, FAKE_MODEL)
        yield container


@pytest.fixture
def service(installed: Container) -> Iterator[Container]:
    """The installed unit with the default test config; stopped, reset and its test drop-ins
    removed afterwards, whatever the test did."""
    installed.write(CONFIG, service_config())
    yield installed
    installed.run("systemctl", "stop", UNIT, check=False, timeout=90)
    installed.run("rm", "-rf", DROP_IN_DIR)
    installed.run("systemctl", "daemon-reload")
    installed.run("systemctl", "reset-failed", UNIT, check=False)
