"""Is a stream the journal? systemd names the stream it connected in `JOURNAL_STREAM`
("device:inode", see systemd.exec(5)); a stream whose fstat matches is the journal, which
reads a leading `<N>` on each line as the line's syslog priority (SyslogLevelPrefix=, on by
default)."""

from __future__ import annotations

import os
from collections.abc import Mapping

__all__ = ["LINE_LIMIT", "PRIORITY", "is_journal", "journal_lines"]

# Below journald's LineMax (48 KiB by default; a LineMax set lower cuts pieces unprefixed).
LINE_LIMIT = 32 * 1024

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


def journal_lines(data: bytes, prefix: bytes, limit: int = LINE_LIMIT) -> bytes:
    """Whole lines `data` (ending with a newline) as the journal must get them: every line,
    and every piece of a line longer than `limit` bytes, led by `prefix` (`<6>`), and NUL
    written as `\\x00`. journald ends an entry at a newline, a NUL or LineMax (48 KiB by
    default) and reads a `<N>` at the start of each entry: without this a client's text could
    choose its own priority (`text\\x00<0>forged`)."""
    if b"\x00" in data:
        data = data.replace(b"\x00", b"\\x00")
    if not _may_have_long_line(data, limit):  # the usual case: one replace, no walk
        return prefix + data[:-1].replace(b"\n", b"\n" + prefix) + b"\n"
    lines = [piece for line in data[:-1].split(b"\n") for piece in _cut(line, limit)]
    return prefix + (b"\n" + prefix).join(lines) + b"\n"


def _may_have_long_line(data: bytes, limit: int) -> bool:
    # A line longer than `limit` holds a whole block of limit/2 bytes without a newline; each
    # block's search stops at its first newline.
    block = limit // 2
    return any(data.find(b"\n", at, at + block) < 0 for at in range(0, len(data) - block, block))


def _cut(line: bytes, limit: int) -> list[bytes]:
    pieces = []
    while len(line) > limit:
        end = limit
        while end > limit - 3 and line[end] & 0xC0 == 0x80:  # not inside a UTF-8 character
            end -= 1
        pieces.append(line[:end])
        line = line[end:]
    pieces.append(line)
    return pieces
