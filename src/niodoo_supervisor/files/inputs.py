"""Reading the files a config names (the config itself, the API key file, a logging config,
`adapter_config.json`): regular files only, with a size limit, and saying which folder on the
way this user cannot enter.

A FIFO would block `open` for ever and `/dev/zero` never ends; opening some devices acts (a
watchdog starts counting), so the type is checked with `stat` before opening, and again on the
open descriptor because the path may have been swapped in between.
"""

from __future__ import annotations

import json
import os
import pwd
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "AccessProblem",
    "InputFileError",
    "access_problem",
    "is_dir",
    "is_file",
    "is_script",
    "json_object",
    "protect_home_hint",
    "read_regular_file",
    "read_text_file",
    "service_user",
    "user_name",
]

_CHUNK = 64 * 1024
# systemd's ProtectHome= hides these folders from the service (yes: unreadable, tmpfs: empty).
_PROTECTED_HOMES = (Path("/home"), Path("/root"), Path("/run/user"))


class InputFileError(Exception):
    """The file at `path` cannot be used: `reason` says why (without the path), `fix` what to
    do when there is more to say than "fix the path" (empty then: the caller knows the file's
    role and says it)."""

    def __init__(self, path: str, reason: str, fix: str = "", *, missing: bool = False) -> None:
        self.path = path
        self.reason = reason
        self.fix = fix
        self.missing = missing
        super().__init__(f"cannot read {path}: {reason}")


@dataclass(frozen=True)
class AccessProblem:
    message: str
    fix: str


def read_regular_file(
    path: str | os.PathLike[str], limit: int, *, follow_links: bool = True
) -> bytes:
    """The whole content of a regular file of at most `limit` bytes. `follow_links=False`
    refuses a symbolic link at the final path (files in the state folder, where a planted link
    would point the supervisor at someone else's file)."""
    name = os.fspath(path)
    try:
        before = Path(name).stat() if follow_links else Path(name).lstat()
    except OSError as exc:
        raise _open_error(Path(name), exc) from None
    if not follow_links and stat.S_ISLNK(before.st_mode):
        raise InputFileError(name, "it is a symbolic link", "remove it")
    _require_regular(name, before, limit)
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    if not follow_links:
        flags |= os.O_NOFOLLOW
    try:
        fd = os.open(name, flags)
    except OSError as exc:
        raise _open_error(Path(name), exc) from None
    try:
        opened = os.fstat(fd)
        if (opened.st_dev, opened.st_ino) != (before.st_dev, before.st_ino):
            raise InputFileError(name, "it was replaced while being opened", "try again")
        _require_regular(name, opened, limit)
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, min(_CHUNK, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise InputFileError(name, exc.strerror or str(exc)) from None
    finally:
        os.close(fd)
    if size > limit:
        raise _too_large(name, limit)
    return b"".join(chunks)


def read_text_file(path: str | os.PathLike[str], limit: int) -> str:
    """`read_regular_file` decoded as UTF-8."""
    data = read_regular_file(path, limit)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputFileError(
            os.fspath(path), f"it is not UTF-8 text (byte {exc.start})", "save it as UTF-8"
        ) from None


def json_object(data: str | bytes, where: str) -> dict[str, Any]:
    """`data` parsed as a JSON object; ValueError says what is wrong, starting with `where`."""
    try:
        value = json.loads(data)
    except RecursionError:
        raise ValueError(f"{where} is not valid JSON: nested too deeply") from None
    except ValueError as exc:
        raise ValueError(f"{where} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{where} must hold a JSON object")
    return value


def _require_regular(name: str, info: os.stat_result, limit: int) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise InputFileError(
            name,
            f"it is {_kind(info.st_mode)}, not a regular file",
            "name a regular file (FIFOs and devices are refused: they can block or never end)",
        )
    if info.st_size > limit:
        raise _too_large(name, limit)


def _too_large(name: str, limit: int) -> InputFileError:
    return InputFileError(
        name, f"it is larger than {limit // 1024} KiB", "name the right file; it is far too big"
    )


def _kind(mode: int) -> str:
    kinds = (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    )
    return next((text for test, text in kinds if test(mode)), "not a plain file")


def _open_error(path: Path, exc: OSError) -> InputFileError:
    if isinstance(exc, PermissionError):
        problem = access_problem(path)
        if problem is not None:
            return InputFileError(str(path), problem.message, problem.fix)
    if isinstance(exc, FileNotFoundError):
        return InputFileError(
            str(path),
            exc.strerror or "no such file",
            protect_home_hint(path).lstrip("; "),
            missing=True,
        )
    return InputFileError(str(path), exc.strerror or str(exc))


def service_user() -> str:
    """The name of the user this process runs as (`niodoo` under the unit)."""
    return user_name(os.getuid())


def user_name(uid: int) -> str:
    """The user's name, or `uid N` for a uid without one."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def access_problem(path: str | os.PathLike[str], want: int = os.R_OK) -> AccessProblem | None:
    """Why this process cannot reach `path` with `want` access (os.R_OK, os.X_OK, ...): the
    first folder on the way it may not enter, or the path itself. None when it can, and when
    the path is missing (the caller says that in its own words)."""
    target = _absolute(path)
    for folder in (*reversed(target.parents), target):
        try:
            info = folder.stat()
        except (OSError, ValueError):
            return None
        is_target = folder == target
        needed = (want | (os.X_OK if stat.S_ISDIR(info.st_mode) else 0)) if is_target else os.X_OK
        if not is_target and not stat.S_ISDIR(info.st_mode):
            return None
        if os.access(folder, needed):
            continue
        verb = "enter" if not is_target else _verb(needed, info.st_mode)
        user = service_user()
        return AccessProblem(
            f"user {user} cannot {verb} {folder} ({_owner_and_mode(info)})",
            f"give {user} access (e.g. chmod o+{_letters(needed)} {folder}, or setfacl -m "
            f"u:{user}:{_letters(needed)} {folder}) or move the files" + protect_home_hint(target),
        )
    return None


def protect_home_hint(path: Path) -> str:
    """A fix suffix for paths that systemd's ProtectHome= hides from the service."""
    absolute = _absolute(path)
    if any(absolute == home or home in absolute.parents for home in _PROTECTED_HOMES):
        return (
            "; the unit's ProtectHome=yes or tmpfs hides this folder from the service: "
            "use ProtectHome=read-only or keep the files outside /home"
        )
    return ""


def is_dir(path: str | os.PathLike[str]) -> bool:
    """`Path.is_dir()` that is False, not PermissionError, behind a folder this user cannot
    enter (pathlib raises there before Python 3.12)."""
    return _mode_is(path, stat.S_ISDIR)


def is_script(path: str | os.PathLike[str]) -> bool:
    """Whether `path` is a regular file starting with `#!` (a wrapper, not a binary)."""
    if not is_file(path):
        return False
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return os.read(fd, 2) == b"#!"
    except OSError:
        return False
    finally:
        os.close(fd)


def is_file(path: str | os.PathLike[str]) -> bool:
    """`Path.is_file()`, False instead of raising (see `is_dir`)."""
    return _mode_is(path, stat.S_ISREG)


def _mode_is(path: str | os.PathLike[str], test: Callable[[int], bool]) -> bool:
    try:
        return test(Path(path).stat().st_mode)
    except (OSError, ValueError):
        return False


def _absolute(path: str | os.PathLike[str]) -> Path:
    # Not resolve(): the folders on the way are the ones the operator wrote, symlinks included.
    return Path(os.path.normpath(Path(path).absolute()))


def _verb(needed: int, mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "list and enter"
    return "execute" if needed & os.X_OK else "read"


def _letters(needed: int) -> str:
    return ("r" if needed & os.R_OK else "") + ("x" if needed & os.X_OK else "")


def _owner_and_mode(info: os.stat_result) -> str:
    return f"owner {user_name(info.st_uid)}, mode {stat.S_IMODE(info.st_mode):04o}"
