"""Files in the state folder: written atomically, read without following links, and errors
sorted into "may clear by itself" and "wrong until someone acts".

Nothing here follows a symbolic link at the final path: a link planted at `status.json` or
`vllm-processes.json` is replaced by the rename (never written through); reads go through
`inputfiles.read_regular_file(..., follow_links=False)`, which refuses a link, anything but a
regular file and a file over its size limit.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path

from niodoo_supervisor import exitcodes

__all__ = ["TRANSIENT_ERRNOS", "atomic_write", "describe_os_error", "exit_code_for"]

# Conditions that may clear without anyone changing the config: a full disk or quota, memory
# or the system's file table exhausted, a resource busy for now. systemd retries these (75).
TRANSIENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.ENOMEM, errno.EAGAIN, errno.ENFILE})


def exit_code_for(exc: OSError) -> int:
    """75 (TEMPFAIL) for an error that may clear by itself, else 78 (CONFIG)."""
    return exitcodes.TEMPFAIL if exc.errno in TRANSIENT_ERRNOS else exitcodes.CONFIG


def describe_os_error(exc: OSError) -> str:
    """The error's own words without the path (`No space left on device`)."""
    return os.strerror(exc.errno) if exc.errno else str(exc)


def atomic_write(path: Path, text: str, mode: int = 0o600) -> None:
    """Write through a temporary file and a rename, so a reader (or the next start after a
    crash) never sees half a file. `mode` is set explicitly, whatever the umask."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        Path(temp).replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            Path(temp).unlink()
        raise
