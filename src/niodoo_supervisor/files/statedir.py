"""The state folder: checked before anything in it is trusted, and locked for the daemon's life.

What lies there steers the supervisor and vLLM: `vllm-processes.json` names processes to end,
`vllm-logging.json` is run by vLLM (a dictConfig names classes to instantiate), `status.json`
holds the last log lines. So the folder must be the supervisor's own: owned by its user and
writable by nobody else (created 0750 when absent); otherwise `run` refuses to start, naming
the fix. A lock (`flock` on `supervisor.lock`, held for the daemon's life and dropped by the
kernel when it dies, however it dies) makes "one supervisor per state folder" true.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from pathlib import Path

from niodoo_supervisor import exitcodes
from niodoo_supervisor.files.atomic import TRANSIENT_ERRNOS, describe_os_error, exit_code_for
from niodoo_supervisor.files.inputs import user_name

__all__ = ["LOCK_FILE", "StateDirError", "StateLock", "prepare"]

LOCK_FILE = "supervisor.lock"


class StateDirError(Exception):
    """The state folder cannot be used; the message names the fix, `exit_code` says whether
    retrying may help (75) or not (78)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def prepare(state_dir: Path, log_path: Path) -> None:
    """Create the state folder when absent, then refuse one that others could write to and a
    log file that is a symbolic link. Raises StateDirError."""
    try:
        state_dir.mkdir(parents=True, mode=0o750)
        state_dir.chmod(0o750)  # mkdir's mode is cut by the umask
    except FileExistsError:
        pass
    except OSError as exc:
        raise _error(
            f"cannot create {state_dir}",
            exc,
            "create it owned by the service user (systemd's StateDirectory= does)",
        ) from None
    try:
        info = state_dir.stat()
    except OSError as exc:
        raise _error(f"cannot read {state_dir}", exc, "let the service user enter it") from None
    if not stat.S_ISDIR(info.st_mode):
        raise _refuse(f"{state_dir} is not a folder; fix: name a folder in supervisor.state_dir")
    me = os.geteuid()
    if info.st_uid != me:
        raise _refuse(
            f"{state_dir} is owned by {user_name(info.st_uid)}, not by {user_name(me)} that runs the "
            f"supervisor; fix: chown {user_name(me)} {state_dir}"
        )
    loose = info.st_mode & 0o022
    if loose:
        who = {0o020: "its group", 0o002: "every user"}.get(loose, "its group and every user")
        raise _refuse(
            f"{state_dir} is writable by {who} (mode {stat.S_IMODE(info.st_mode):04o}), who "
            f"could steer what the supervisor ends and what vLLM runs; fix: chmod go-w {state_dir}"
        )
    try:
        is_link = stat.S_ISLNK(log_path.lstat().st_mode)
    except FileNotFoundError:
        is_link = False
    except OSError as exc:  # a folder on the way the service user cannot enter
        raise _error(
            f"cannot reach supervisor.log.path {log_path}", exc, "let the service user enter it"
        ) from None
    if is_link:
        raise StateDirError(
            f"supervisor.log.path: {log_path} is a symbolic link and the supervisor does not "
            "write through links; fix: remove it (or name the real file in supervisor.log.path)",
            exitcodes.CONFIG,
        )


class StateLock:
    """An exclusive `flock` on `supervisor.lock` in the state folder; the file holds the
    holder's pid (for the refusal message only)."""

    def __init__(self, fd: int, path: Path) -> None:
        self._fd = fd
        self.path = path

    @classmethod
    def acquire(cls, state_dir: Path) -> StateLock:
        path = state_dir / LOCK_FILE
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(path, flags, 0o640)
        except OSError as exc:
            raise _error(f"cannot open the lock file {path}", exc, "remove it") from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise _refuse(f"{path} is not a regular file; fix: remove it")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise _refuse(
                    f"supervisor {_holder(fd)} already runs vLLM for {state_dir} (it holds "
                    f"{path}); stop it first"
                ) from None
            except OSError as exc:
                raise _error(f"cannot lock {path}", exc, "remove it") from None
        except BaseException:
            os.close(fd)
            raise
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass  # a full disk: the lock holds all the same, only the message loses the pid
        return cls(fd, path)

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode().strip()
    except (OSError, UnicodeDecodeError):
        text = ""
    return f"pid {text}" if text.isdigit() else "(pid unknown)"


def _refuse(text: str) -> StateDirError:
    return StateDirError(f"supervisor.state_dir: {text}", exitcodes.CONFIG)


def _error(what: str, exc: OSError, fix: str) -> StateDirError:
    reason = describe_os_error(exc)
    if exc.errno in TRANSIENT_ERRNOS:
        fix = "this may clear by itself (free space, for one); systemd starts the service again"
    elif exc.errno == errno.ELOOP:
        fix = "it is a symbolic link, which the supervisor does not follow: remove it"
    return StateDirError(f"supervisor.state_dir: {what}: {reason}; {fix}", exit_code_for(exc))
