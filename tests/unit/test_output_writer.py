"""The one writer of stdout and stderr: whole lines, journal priorities, and nothing written
may stop the supervisor (a closed stream, a reader gone, a full non-blocking pipe)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import termios
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import wait_for
from niodoo_supervisor.output.echo_lines import EchoLines
from niodoo_supervisor.output.journal import is_journal
from niodoo_supervisor.output.writer import OutputWriter


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


def test_on_a_terminal_escape_sequences_in_vllm_lines_are_shown_not_obeyed(
    tmp_path: Path,
) -> None:
    controller, terminal = pty.openpty()
    try:
        writer = OutputWriter(terminal, terminal, environ={})
        assert writer.out.tty
        writer.echo(b"\x1b]0;owned\x07\x1b[2Jtext\n")
        got = os.read(controller, 1024)
    finally:
        os.close(controller)
        os.close(terminal)
    assert b"\x1b" not in got and b"\\x1b]0;owned" in got


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
