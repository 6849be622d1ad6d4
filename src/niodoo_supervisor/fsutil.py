"""Files in the state folder: written atomically, read without following links, and errors
sorted into "may clear by itself" and "wrong until someone acts".

Nothing here follows a symbolic link at the final path: a link planted at `status.json` or
`vllm-processes.json` is replaced by the rename (never written through), and a read refuses it
(`ELOOP`). Reads also refuse anything but a regular file (a FIFO would block, a device never
end) and cap the size.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from pathlib import Path

from . import exitcodes

__all__ = ["TRANSIENT_ERRNOS", "atomic_write", "exit_code_for", "read_regular_file"]

# Conditions that may clear without anyone changing the config: a full disk or quota, memory
# or the system's file table exhausted, a resource busy for now. systemd retries these (75).
TRANSIENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.ENOMEM, errno.EAGAIN, errno.ENFILE})


def exit_code_for(exc: OSError) -> int:
    """75 (TEMPFAIL) for an error that may clear by itself, else 78 (CONFIG)."""
    return exitcodes.TEMPFAIL if exc.errno in TRANSIENT_ERRNOS else exitcodes.CONFIG


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


def read_regular_file(path: Path, limit: int) -> bytes:
    """The content of `path`, which must be a regular file (not a link) of at most `limit`
    bytes. Raises OSError: ELOOP for a link, EINVAL for anything but a regular file, EFBIG
    when it is larger."""
    # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer.
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    fd = os.open(path, flags)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        chunks = []
        size = 0
        while chunk := os.read(fd, min(1 << 20, limit + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise OSError(errno.EFBIG, f"larger than {limit} bytes", str(path))
        return b"".join(chunks)
    finally:
        os.close(fd)
