"""The README's install path, tried as a new operator would: after scripts/install-service.sh
(the script the README shows; the `installed` fixture runs it), the command is on PATH, the
unit's Documentation= exists, and `niodoo-supervisor-check` runs `check` as the service would:
as its user, with the key from the root-only environment file, behind ProtectHome=."""

from __future__ import annotations

from harness import REPO
from installed_service import (
    API_KEY,
    CONFIG,
    UNIT,
    service_config,
    write_fake_model,
)
from niodoo_supervisor import exitcodes
from nspawn import Container

# A model in a home folder the service user cannot enter (root can).
PRIVATE_HOME = "/home/operator"
PRIVATE_MODEL = f"{PRIVATE_HOME}/models/tiny"


def test_install_puts_the_command_on_path(installed: Container) -> None:
    found = installed.run("sh", "-c", "command -v niodoo-supervisor").stdout.strip()
    assert found == "/usr/local/bin/niodoo-supervisor"
    assert "render" in installed.run("niodoo-supervisor", "--help").stdout


def test_documentation_names_an_installed_file(installed: Container) -> None:
    documentation = installed.show(UNIT, "Documentation")["Documentation"]
    assert documentation.startswith("file://"), documentation
    readme = installed.path(documentation.removeprefix("file://"))
    assert readme.read_text() == (REPO / "README.md").read_text()


def test_check_as_the_service_reads_the_key_from_the_environment_file(
    service: Container,
) -> None:
    # As root, without the service's environment file, the key is missing...
    plain = service.run("niodoo-supervisor", "check", "-c", CONFIG, check=False)
    assert plain.returncode != 0 and "NIODOO_API_KEY" in plain.stdout + plain.stderr
    # ...while the check the README documents sees what the service sees.
    as_service = service.run("niodoo-supervisor-check", check=False, timeout=120)
    assert as_service.returncode == 0, as_service.stdout + as_service.stderr


def test_check_as_the_service_fails_on_a_folder_the_service_user_cannot_enter(
    service: Container,
) -> None:
    write_fake_model(service, PRIVATE_MODEL)
    service.run("chmod", "0700", PRIVATE_HOME)  # root's; an operator's own home is alike
    service.write(CONFIG, service_config(model__path=PRIVATE_MODEL))
    # Root can read it, so a check run as root passes...
    as_root = service.run(
        "niodoo-supervisor", "check", "-c", CONFIG, env={"NIODOO_API_KEY": API_KEY}, check=False
    )
    assert as_root.returncode == 0, as_root.stdout + as_root.stderr
    # ...and only the check run as the service finds what the service would.
    as_service = service.run("niodoo-supervisor-check", check=False, timeout=120)
    output = as_service.stdout + as_service.stderr
    assert as_service.returncode == exitcodes.CONFIG, output
    assert f"cannot enter {PRIVATE_HOME}" in output, output
    # The service itself says the same and stays down (78 is not restarted).
    assert service.run("systemctl", "start", UNIT, check=False).returncode != 0
    state = service.show(UNIT, "ExecMainStatus", "SubState")
    assert state == {"ExecMainStatus": str(exitcodes.CONFIG), "SubState": "failed"}, state
    assert f"cannot enter {PRIVATE_HOME}" in service.journal(UNIT)
