"""A real systemd booted in a container (systemd-nspawn) and driven from the test process.

The root file systems come from scripts/setup-systemd-env.sh (cached under ~/.cache). Each
container boots a cached root read-only with throw-away writes (--volatile=overlay), in a
cgroup of its own, as a child of the test process, and is powered off (or killed) and its
cgroups removed on close, whatever the test did. Facts this relies on: see the setup script
and the comments below; each setting was checked by leaving it out.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from harness import REPO, wait_for

SETUP_SCRIPT = REPO / "scripts" / "setup-systemd-env.sh"
CGROUP_ROOT = Path("/sys/fs/cgroup")
# Inside the container: a plain root shell's PATH, and no host environment leaking in.
CONTAINER_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "SYSTEMD_PAGER": "",
    "SYSTEMD_COLORS": "0",
}


@dataclass(frozen=True)
class Roots:
    """Unpacked root file systems and the wheels the documented install needs offline."""

    bookworm: Path
    bullseye: Path
    wheels: Path


def why_not_runnable() -> str | None:
    """Why this machine cannot run the tier, or None."""
    if os.geteuid() != 0:
        return "needs root: boots systemd in a container with systemd-nspawn"
    if not (CGROUP_ROOT / "unified").is_dir() and not (CGROUP_ROOT / "cgroup.procs").exists():
        return f"needs a cgroup2 hierarchy at {CGROUP_ROOT} or {CGROUP_ROOT}/unified"
    return None


def prepare_roots() -> Roots:
    """Run the setup script (installs tools, builds or reuses the cached roots)."""
    result = subprocess.run(
        ["bash", str(SETUP_SCRIPT)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"{SETUP_SCRIPT.name} failed:\n{result.stderr[-4000:]}")
    paths = dict(line.split(" ", 1) for line in result.stdout.splitlines() if " " in line)
    return Roots(Path(paths["bookworm"]), Path(paths["bullseye"]), Path(paths["wheels"]))


def _hierarchies() -> list[Path]:
    """The cgroup trees nspawn uses: cgroup2 first (it holds the container's init.scope)."""
    if (CGROUP_ROOT / "unified").is_dir():
        # Hybrid: systemd inside puts its cgroup2 tree under unified/ and also needs the
        # named v1 'systemd' tree; nspawn would otherwise create payload/ at both roots.
        return [CGROUP_ROOT / "unified", CGROUP_ROOT / "systemd"]
    return [CGROUP_ROOT]


def _remove_cgroup(path: Path) -> None:
    """Remove a cgroup and everything under it, deepest first."""
    if not path.is_dir():
        return
    for child in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        with contextlib.suppress(FileNotFoundError):
            child.rmdir()
    with contextlib.suppress(FileNotFoundError):
        path.rmdir()


def _pids_in(path: Path) -> list[int]:
    pids: list[int] = []
    for procs in path.rglob("cgroup.procs"):
        with contextlib.suppress(OSError):
            pids.extend(int(pid) for pid in procs.read_text().split())
    return pids


class Container:
    """One container: `with Container(...).running() as container:` boots it."""

    def __init__(
        self,
        root: Path,
        name: str,
        workdir: Path,
        *,
        bind: Sequence[tuple[Path, str]] = (),
        bind_ro: Sequence[tuple[Path, str]] = (),
    ) -> None:
        self.root = root
        self.name = name
        self.console_log = workdir / f"{name}.console.log"
        self.bind = list(bind)
        self.bind_ro = list(bind_ro)
        self.cgroups = [tree / name for tree in _hierarchies()]
        self.process: subprocess.Popen[bytes] | None = None
        self.pid1 = 0

    @contextlib.contextmanager
    def running(self, timeout: float = 60) -> Iterator[Container]:
        """Boot; on leaving, power off and clean up, whatever happened inside."""
        try:
            self._start(timeout)
            yield self
        finally:
            self.close()

    def _start(self, timeout: float) -> None:
        for cgroup in self.cgroups:
            _remove_cgroup(cgroup)
            cgroup.mkdir()
        nspawn = shutil.which("systemd-nspawn")
        assert nspawn is not None, "systemd-nspawn is missing: run scripts/setup-systemd-env.sh"
        argv = [
            nspawn, "--boot", f"--directory={self.root}", "--volatile=overlay",
            f"--machine={self.name}", "--register=no", "--keep-unit", "--console=pipe",
            "--quiet", "--private-network",
            # Without bpf() systemd inside skips device filtering without a word, and
            # DevicePolicy= would not be enforced.
            "--system-call-filter=bpf",
        ]  # fmt: skip
        argv += [f"--bind={host}:{inside}" for host, inside in self.bind]
        argv += [f"--bind-ro={host}:{inside}" for host, inside in self.bind_ro]
        # The launching shell joins the run's own cgroups, then becomes nspawn (a child of
        # the test, waited on in close()).
        joins = " ".join(f'echo $$ > "{cgroup}/cgroup.procs";' for cgroup in self.cgroups)
        env = dict(os.environ)
        # The host's cgroups are hybrid: without this the container inherits them and
        # DevicePolicy= is not enforced.
        env["SYSTEMD_NSPAWN_UNIFIED_HIERARCHY"] = "1"
        with self.console_log.open("wb") as console:
            self.process = subprocess.Popen(
                ["sh", "-c", f'{joins} exec "$@"', "sh", *argv],
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                env=env,
            )
        init_procs = self.cgroups[0] / "payload" / "init.scope" / "cgroup.procs"
        self.pid1 = wait_for(lambda: self._first_pid(init_procs), timeout, "the container's PID 1")
        wait_for(self._booted, timeout, f"{self.name} to finish booting; see {self.console_log}")

    def _first_pid(self, procs: Path) -> int:
        self._assert_alive()
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int(procs.read_text().split()[0])
        return 0

    def _booted(self) -> bool:
        self._assert_alive()
        state = self.run("systemctl", "is-system-running", check=False).stdout.strip()
        return state in ("running", "degraded")

    def _assert_alive(self) -> None:
        assert self.process is not None
        code = self.process.poll()
        if code is not None:
            console = self.console_log.read_text(errors="replace")[-3000:]
            raise AssertionError(f"systemd-nspawn exited with {code}:\n{console}")

    def run(
        self,
        *argv: str,
        check: bool = True,
        timeout: float = 60,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the container as root (all its namespaces)."""
        result = subprocess.run(
            ["nsenter", "-t", str(self.pid1), "-a", *argv],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**CONTAINER_ENV, **(env or {})},
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(argv)} exited {result.returncode}:\n{result.stdout}{result.stderr}"
            )
        return result

    def path(self, inside: str) -> Path:
        """A path inside the container, as the host sees it (through PID 1's root)."""
        return Path(f"/proc/{self.pid1}/root") / inside.lstrip("/")

    def write(self, inside: str, text: str, mode: int = 0o644) -> None:
        target = self.path(inside)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        target.chmod(mode)

    def show(self, unit: str, *properties: str) -> dict[str, str]:
        output = self.run("systemctl", "show", unit, "-p", ",".join(properties)).stdout
        return dict(line.split("=", 1) for line in output.splitlines() if "=" in line)

    def journal(self, unit: str) -> str:
        return self.run("journalctl", "--no-pager", "-o", "cat", "-u", unit, check=False).stdout

    def close(self) -> None:
        """Power off (or kill) the container, wait for nspawn, and remove the cgroups."""
        if self.process is not None and self.process.poll() is None:
            if self.pid1:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.run("systemctl", "poweroff", check=False, timeout=10)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.send_signal(signal.SIGKILL)
                self.process.wait()
        # Whatever survived nspawn (a wedged container) dies with its cgroup.
        deadline = time.monotonic() + 10
        while any(_pids_in(cgroup) for cgroup in self.cgroups) and time.monotonic() < deadline:
            for pid in {pid for cgroup in self.cgroups for pid in _pids_in(cgroup)}:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)
        for cgroup in self.cgroups:
            _remove_cgroup(cgroup)
