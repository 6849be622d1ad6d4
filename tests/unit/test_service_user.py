"""`check` and `run` as the unprivileged service user, on the production config, when the
model lives in a home folder that user cannot enter (Ubuntu makes homes 0750, some 0700):
exit 78 with one line naming the folder and the fix, not a PermissionError (exit 70).

The tests run as root, so the CLI runs in a subprocess as `nobody`.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import niodoo_supervisor
from niodoo_supervisor import exitcodes
from niodoo_supervisor.files.inputs import protect_home_hint

REPO = Path(__file__).resolve().parents[2]
FAKE_VLLM = REPO / "tests" / "fakevllm"
MODEL = "home/beelink/models/Qwen2.5-7B-Instruct-AWQ"


# The supervisor's code and dependencies, for an interpreter outside the virtual environment.
IMPORT_PATH = os.pathsep.join(
    [str(Path(niodoo_supervisor.__file__).resolve().parents[1]), sysconfig.get_paths()["purelib"]]
)


def _nobody() -> pwd.struct_passwd:
    if os.geteuid() != 0:
        pytest.skip("needs root to run the CLI as another user")
    try:
        return pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user nobody")


def _interpreter(nobody: pwd.struct_passwd) -> str:
    """This Python if nobody may run it; else the system's of the same version (a virtual
    environment made from a Python under /root links to a file nobody can reach)."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (sys.executable, shutil.which(version, path="/usr/local/bin:/usr/bin")):
        if candidate is None:
            continue
        try:
            probe = subprocess.run(
                [
                    candidate,
                    "-c",
                    "import niodoo_supervisor.cli.main, yaml, httpx, structlog, psutil",
                ],
                env={"PYTHONPATH": IMPORT_PATH},
                user=nobody.pw_uid,
                group=nobody.pw_gid,
                extra_groups=[],
                capture_output=True,
                check=False,
            )
        except PermissionError:
            continue
        if probe.returncode == 0:
            return candidate
    pytest.skip(f"no {version} that nobody may run with the supervisor's dependencies")


@pytest.fixture
def world(tmp_path: Path) -> Iterator[Path]:
    """A folder every user may enter (pytest's tmp_path is 0700)."""
    root = Path(tempfile.mkdtemp(prefix="niodoo-service-user-"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _production_config(root: Path, nobody: pwd.struct_passwd, python: str) -> Path:
    """config/niodoo.yaml with its machine paths moved under `root`; the model's home folder
    is root's and 0700."""
    model = root / MODEL
    model.mkdir(parents=True)
    (model / "config.json").write_text('{"model_type": "qwen2"}')
    for folder in (root / "home", root / "home/beelink/models", model):
        folder.chmod(0o755)
    (root / "home/beelink").chmod(0o700)
    writable = root / "var"
    for name in ("state", "log", "cache"):
        (writable / name).mkdir(parents=True)
        os.chown(writable / name, nobody.pw_uid, nobody.pw_gid)
        (writable / name).chmod(0o750)
    writable.chmod(0o755)
    document: dict[str, Any] = yaml.safe_load((REPO / "config/niodoo.yaml").read_text())
    document["server"].update(python=python, port=_free_port(), env={"PYTHONPATH": str(FAKE_VLLM)})
    document["model"]["path"] = str(model)
    document["supervisor"]["state_dir"] = str(writable / "state")
    document["supervisor"]["log"]["path"] = str(writable / "log" / "vllm.log")
    config = root / "niodoo.yaml"
    config.write_text(yaml.safe_dump(document, sort_keys=False))
    config.chmod(0o644)
    return config


def _as(
    nobody: pwd.struct_passwd, python: str, root: Path, *argv: str
) -> subprocess.CompletedProcess[str]:
    environ = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": IMPORT_PATH,
        "HOME": nobody.pw_dir,
        "XDG_CACHE_HOME": str(root / "var" / "cache"),
        "NIODOO_API_KEY": "sk-service-user-test",
    }
    return subprocess.run(
        [python, "-m", "niodoo_supervisor", *argv],
        env=environ,
        user=nobody.pw_uid,
        group=nobody.pw_gid,
        extra_groups=[],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_check_and_run_name_the_folder_the_service_user_cannot_enter(world: Path) -> None:
    nobody = _nobody()
    python = _interpreter(nobody)
    config = _production_config(world, nobody, python)
    home = world / "home/beelink"
    model_line = next(
        number
        for number, text in enumerate(config.read_text().splitlines(), start=1)
        if text.strip() == f"path: {world / MODEL}"
    )
    line = (
        f"{config}:{model_line}: error: model.path: user {nobody.pw_name} cannot enter {home} "
        f"(owner root, mode 0700); give {nobody.pw_name} access (e.g. chmod o+x {home}, or "
        f"setfacl -m u:{nobody.pw_name}:x {home}) or move the files"
    )

    check = _as(nobody, python, world, "check", "--no-port", "-c", str(config))
    assert check.returncode == exitcodes.CONFIG, check.stdout + check.stderr
    assert [text for text in check.stdout.splitlines() if ": error: " in text] == [line]
    assert check.stderr == ""

    run = _as(nobody, python, world, "run", "-c", str(config))
    assert run.returncode == exitcodes.CONFIG, run.stdout + run.stderr
    # Not under the journal: console lines, `HH:MM:SS level event ...`, the problem whole.
    errors = [text.split(None, 2)[2] for text in run.stderr.splitlines() if " error " in text]
    assert len(errors) == 2, run.stderr
    assert errors[0].startswith("config_problem ") and line in errors[0]
    assert errors[1].startswith("preflight_refused ")

    home.chmod(0o750)
    os.chown(home, 0, nobody.pw_gid)  # the usual fix: the service user in the home's group
    check = _as(nobody, python, world, "check", "--no-port", "-c", str(config))
    assert check.returncode == exitcodes.OK, check.stdout + check.stderr


def test_paths_under_home_mention_protect_home() -> None:
    hint = protect_home_hint(Path("/home/beelink/models/m"))
    assert "ProtectHome=read-only" in hint
    assert protect_home_hint(Path("/srv/models/m")) == ""


def test_run_names_a_log_folder_the_service_user_cannot_enter(world: Path) -> None:
    nobody = _nobody()
    python = _interpreter(nobody)
    config = _production_config(world, nobody, python)
    (world / "home/beelink").chmod(0o755)  # the model is readable: only the log path is not
    secret = world / "secret"
    secret.mkdir(mode=0o700)
    document = yaml.safe_load(config.read_text())
    document["supervisor"]["log"]["path"] = str(secret / "vllm.log")
    config.write_text(yaml.safe_dump(document, sort_keys=False))

    run = _as(nobody, python, world, "run", "-c", str(config))
    assert run.returncode == exitcodes.CONFIG, run.stdout + run.stderr
    assert "internal error" not in run.stderr and "Traceback" not in run.stderr
    assert f"supervisor.log.path {secret / 'vllm.log'}" in run.stderr
    assert "Permission denied" in run.stderr
