"""Is a stream the journal? systemd names the stream it connected in `JOURNAL_STREAM`
("device:inode", see systemd.exec(5)); a stream whose fstat matches is the journal, which
reads a leading `<N>` on each line as the line's syslog priority (SyslogLevelPrefix=, on by
default)."""

from __future__ import annotations

import os
from collections.abc import Mapping

__all__ = ["PRIORITY", "is_journal"]

# syslog priorities of structlog's level names (sd-daemon(3): SD_DEBUG 7 ... SD_CRIT 2).
PRIORITY: dict[str, int] = {
    "debug": 7,
    "info": 6,
    "notice": 5,
    "warning": 4,
    "error": 3,
    "critical": 2,
}


def is_journal(fd: int, environ: Mapping[str, str]) -> bool:
    """True when `fd` is the stream `JOURNAL_STREAM` names. A malformed value, or a closed
    `fd`, is simply not the journal."""
    device, sep, inode = environ.get("JOURNAL_STREAM", "").partition(":")
    if not sep or not device.isdigit() or not inode.isdigit():
        return False
    try:
        stat = os.fstat(fd)
    except OSError:
        return False
    return (stat.st_dev, stat.st_ino) == (int(device), int(inode))
