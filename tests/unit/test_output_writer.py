"""The one writer of stdout and stderr: whole lines, journal priorities, and nothing written
may stop the supervisor (a closed stream, a reader gone, a full non-blocking pipe)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import re
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import wait_for
from niodoo_supervisor.output.echo_lines import EchoLines
from niodoo_supervisor.output.journal import LINE_LIMIT, is_journal, journal_lines
from niodoo_supervisor.output.writer import OutputWriter

TERMINAL_CONTROLS = re.compile(rb"[\x00-\x08\x0b-\x1f\x7f]|\xc2[\x80-\x9f]")


@contextlib.contextmanager
def opened(path: Path) -> Iterator[int]:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        yield fd
    finally:
        os.close(fd)


def journal_of(fd: int) -> dict[str, str]:
    stat = os.fstat(fd)
    return {"JOURNAL_STREAM": f"{stat.st_dev}:{stat.st_ino}"}


def test_the_journal_is_the_stream_journal_stream_names(tmp_path: Path) -> None:
    with opened(tmp_path / "a") as a, opened(tmp_path / "b") as b:
        assert is_journal(a, journal_of(a)) and not is_journal(b, journal_of(a))
        for bad in ("", "12", "x:y", "1:2:3", ":", "-1:5"):
            assert not is_journal(a, {"JOURNAL_STREAM": bad})
        assert not is_journal(999, journal_of(a))  # a closed fd is not the journal


def test_records_and_echo_share_one_file_in_whole_lines(tmp_path: Path) -> None:
    with opened(tmp_path / "both") as fd:
        writer = OutputWriter(fd, fd, environ={})
        writer.echo(b"vllm one\nvllm two\n")
        writer.record("level=info event=x note=a\\nb", "info")
        writer.record("forged\nlevel=critical event=fake", "info")  # a renderer's slip
        writer.echo(b"vllm three\n")
    assert (tmp_path / "both").read_text().splitlines() == [
        "vllm one",
        "vllm two",
        "level=info event=x note=a\\nb",
        "forged\\nlevel=critical event=fake",
        "vllm three",
    ]


def test_under_the_journal_records_carry_their_priority_and_vllm_lines_info(
    tmp_path: Path,
) -> None:
    with opened(tmp_path / "out") as out, opened(tmp_path / "err") as err:
        writer = OutputWriter(out, err, environ=journal_of(out))  # stdout is the journal
        assert writer.out.journal and not writer.err.journal
        # A client-written line that begins with `<0>` stays at info: journald reads only
        # the first prefix of a line.
        writer.echo(b"<0>emergency from a client\nplain\n")
        writer = OutputWriter(out, err, environ=journal_of(err))
        for level in ("debug", "info", "warning", "error", "critical"):
            writer.record(f"event={level}", level)
    assert (tmp_path / "out").read_bytes() == b"<6><0>emergency from a client\n<6>plain\n"
    assert (tmp_path / "err").read_text().splitlines() == [
        "<7>event=debug",
        "<6>event=info",
        "<4>event=warning",
        "<3>event=error",
        "<2>event=critical",
    ]


def journald_entries(data: bytes, line_max: int = 48 * 1024) -> list[bytes]:
    """How journald cuts a stream into entries (journald-stream.c): at a newline, at a NUL,
    and at LineMax bytes without either."""
    entries = []
    for line in data.split(b"\n")[:-1]:
        for piece in line.split(b"\x00"):
            entries += [piece[at : at + line_max] for at in range(0, len(piece), line_max)]
    return entries


def test_under_the_journal_a_nul_or_a_long_line_cannot_choose_a_priority() -> None:
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 1 << 20)  # room for it all, no reader needed
    try:
        writer = OutputWriter(write_end, write_end, environ=journal_of(write_end))
        assert writer.out.journal and writer.err.journal
        writer.echo(b"<6>client text\x00<0>forged\n" + b"a" * 60_000 + b"<0>past LineMax\n")
        writer.echo("é".encode() * 40_000 + b"\n")  # cut between characters, not inside one
        writer.record("event=crash_report last_lines=" + "x" * 60_000 + "\x00<0>z", "error")
        os.close(write_end)
        with os.fdopen(read_end, "rb") as reader:
            data = reader.read()
    finally:
        with contextlib.suppress(OSError):
            os.close(write_end)
    entries = journald_entries(data)
    assert all(len(entry) <= LINE_LIMIT + 3 for entry in entries)
    assert [entry[:3] for entry in entries] == [b"<6>"] * 6 + [b"<3>"] * 2
    assert entries[0] == b"<6><6>client text\\x00<0>forged"
    assert all(entry[3:].decode() for entry in entries[3:6])  # whole UTF-8 characters
    assert b"".join(entry[3:] for entry in entries[3:6]) == "é".encode() * 40_000
    assert entries[-1].endswith(b"x\\x00<0>z")


def test_a_long_line_anywhere_in_a_batch_is_cut_into_prefixed_pieces() -> None:
    for before in range(0, 80, 3):  # the long line at every offset from the batch's blocks
        for length in (63, 64, 65, 129, 200):
            data = b"s\n" * before + b"L" * length + b"\n" + b"t\n" * 5
            entries = journald_entries(journal_lines(data, b"<6>", limit=64))
            assert all(entry.startswith(b"<6>") and len(entry) <= 67 for entry in entries)
            assert b"".join(entry[3:] for entry in entries) == data.replace(b"\n", b"")


def test_on_a_terminal_escape_sequences_in_vllm_lines_are_shown_not_obeyed(
    tmp_path: Path,
) -> None:
    controller, terminal = pty.openpty()
    try:
        writer = OutputWriter(terminal, terminal, environ={})
        assert writer.out.tty
        writer.echo(b"\x1b]0;owned\x07\x1b[2Jtext\rover\x08\x00\xc2\x9b2J\tend \xc3\xa9\n")
        got = os.read(controller, 1024)
    finally:
        os.close(controller)
        os.close(terminal)
    body = got.replace(b"\r\n", b"\n")  # the terminal's own line end (onlcr)
    assert not TERMINAL_CONTROLS.search(body)  # C0 (but newline, tab), DEL, C1 as UTF-8
    assert body == (b"\\x1b]0;owned\\x07\\x1b[2Jtext\\x0dover\\x08\\x00\\x9b2J\tend \xc3\xa9\n")


def test_a_closed_stream_or_a_reader_gone_is_counted_not_raised_for_records() -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody reads: EPIPE (Python ignores SIGPIPE)
    writer = OutputWriter(write_end, write_end, environ={})
    writer.record("event=lost", "error")
    with pytest.raises(BrokenPipeError):
        writer.echo(b"vllm line\n")  # the echo sink counts and reports its own outage
    assert writer.dropped_writes == 2
    os.close(write_end)
    writer.record("event=after_close", "info")  # EBADF
    assert writer.dropped_writes == 3


def test_a_full_non_blocking_stream_drops_the_rest_and_the_next_line_starts_afresh() -> None:
    read_end, write_end = os.pipe()
    try:
        os.set_blocking(write_end, False)
        fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 4096)
        writer = OutputWriter(write_end, write_end, environ={})
        writer.record("x" * 10_000, "info")  # part of it fits, the rest is EAGAIN
        assert writer.dropped_writes == 1 and writer.err.mid_line
        os.set_blocking(read_end, False)
        while True:  # the reader catches up
            try:
                if not os.read(read_end, 65536):
                    break
            except BlockingIOError:
                break
        writer.record("event=next", "info")
        assert os.read(read_end, 65536) == b"\nevent=next\n"
    finally:
        os.close(read_end)
        os.close(write_end)


def test_a_record_does_not_wait_for_an_echo_stuck_on_a_full_stdout(tmp_path: Path) -> None:
    read_end, write_end = os.pipe()  # a stdout nobody reads, blocking
    fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 4096)
    with opened(tmp_path / "err") as err:
        writer = OutputWriter(write_end, err, environ={}, lock_wait=0.05)
        stuck = threading.Thread(target=writer.echo, args=(b"y" * 100_000 + b"\n",), daemon=True)
        stuck.start()
        wait_for(lambda: _pipe_full(read_end), 10, "the echo to fill the pipe")
        done = threading.Event()

        def records() -> None:
            for n in range(3):
                writer.record(f"event=r{n}", "info")
            done.set()

        threading.Thread(target=records, daemon=True).start()
        wait_for(done.is_set, 10, "the records despite the stuck echo")
        assert (tmp_path / "err").read_text() == "event=r0\nevent=r1\nevent=r2\n"
        assert writer.unlocked_records == 3
        while stuck.is_alive():  # let the echo finish before the fds close
            os.read(read_end, 65536)
            stuck.join(0.01)
    os.close(read_end)
    os.close(write_end)


def test_records_never_land_inside_echoed_lines_on_one_slowly_read_pipe() -> None:
    """stdout and stderr are one pipe read slowly: megabytes of echoed lines take the reader
    seconds, yet a record waits only for the echo's current piece, never the whole batch."""
    read_end, write_end = os.pipe()
    writer = OutputWriter(write_end, write_end, environ={}, lock_wait=1.0)
    echoed = b"".join(b"vllm %06d %s\n" % (n, b"p" * 80) for n in range(40_000))  # 3.8 MB
    got = bytearray()

    def slow_reader() -> None:
        while chunk := os.read(read_end, 16 * 1024):
            got.extend(chunk)
            time.sleep(0.01)  # about 1.6 MB/s: the batch takes the reader over 2 s

    reader = threading.Thread(target=slow_reader, daemon=True)
    reader.start()
    echo = threading.Thread(target=writer.echo, args=(echoed,), daemon=True)
    echo.start()
    records = 0
    while echo.is_alive() or records < 3:
        writer.record(f"event=r{records}", "info")
        records += 1
        echo.join(0.05)
    os.close(write_end)
    reader.join(30)
    os.close(read_end)
    lines = bytes(got).split(b"\n")
    assert lines.pop() == b""
    assert [line for line in lines if line.startswith(b"event=")] == [
        b"event=r%d" % n for n in range(records)
    ]
    assert b"".join(line + b"\n" for line in lines if not line.startswith(b"event=")) == echoed
    assert writer.unlocked_records == 0


def test_a_record_written_past_a_stuck_echo_starts_a_fresh_line_on_a_shared_file(
    tmp_path: Path,
) -> None:
    with opened(tmp_path / "both") as fd:
        writer = OutputWriter(fd, os.dup(fd), environ={}, lock_wait=0.01)
        writer._take_for_echo()  # the echo took the lock and is stuck inside its piece
        os.write(fd, b"vllm half a li")
        writer.record("event=past_the_echo", "info")
        writer._give_back()
        os.close(writer.err.fd)
    assert (tmp_path / "both").read_text() == "vllm half a li\nevent=past_the_echo\n"
    assert writer.unlocked_records == 1


def _pipe_full(fd: int) -> bool:
    pending = bytearray(4)
    fcntl.ioctl(fd, termios.FIONREAD, pending)
    return int.from_bytes(pending, "little") >= 4096


def test_echo_lines_keep_the_unfinished_line_until_its_end() -> None:
    lines = EchoLines(limit=16)
    assert lines.feed(b"one\ntw") == b"one\n"
    assert lines.feed(b"o") == b""
    assert lines.feed(b"\nthree\nfo") == b"two\nthree\n"
    assert lines.end() == b"fo\n" and lines.end() == b""
    # An unfinished line at the limit is written out, newline added: memory stays bounded.
    assert lines.feed(b"z" * 10) == b""
    assert lines.feed(b"z" * 10) == b"z" * 20 + b"\n"
    assert lines.feed(b"zz\nnext") == b"zz\n"
    assert lines.end() == b"next\n"
