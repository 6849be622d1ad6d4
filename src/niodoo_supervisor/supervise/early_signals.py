"""Signals that arrive before the main loop runs, recorded from the first moment of `run`.

Loading the config, ending leftovers and preflight take from milliseconds to a minute (vLLM's
interpreter is asked for its version and flags). Without a handler, a SIGHUP then (a
`systemctl reload` at the wrong moment) would end the daemon: that is its default action. The
handlers only record; the daemon acts between its steps and hands what is left to the loop,
whose own handlers replace these.
"""

from __future__ import annotations

import signal
from types import FrameType

__all__ = ["StartupSignals"]

_STOP = (signal.SIGTERM, signal.SIGINT)


class StartupSignals:
    """Counts SIGHUPs and remembers the first SIGTERM/SIGINT. Counters, not a list the daemon
    edits: a handler may run between any two bytecodes of the code that reads them."""

    def __init__(self) -> None:
        self._stop: int | None = None
        self._reloads = 0
        self._reloads_taken = 0

    def install(self) -> None:
        for signum in (*_STOP, signal.SIGHUP):
            signal.signal(signum, self._record)

    def _record(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self._reloads += 1
        elif self._stop is None:
            self._stop = signum

    def stop_signal(self) -> signal.Signals | None:
        """The first SIGTERM/SIGINT received, if any."""
        return None if self._stop is None else signal.Signals(self._stop)

    def take_reload(self) -> bool:
        """Whether a SIGHUP came since the last call (the config must be read again)."""
        seen = self._reloads
        pending = seen > self._reloads_taken
        self._reloads_taken = seen
        return pending

    def pending(self) -> list[int]:
        """What the main loop still has to act on; call it after the loop installed its own
        handlers, so nothing falls between the two."""
        pending = [] if self._stop is None else [self._stop]
        if self.take_reload():
            pending.append(signal.SIGHUP)
        return pending
