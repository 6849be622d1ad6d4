"""How long does the echo take to cut an unfinished line that arrives in tiny chunks?

A line without a newline (a progress bar, a client's huge text) fed in CHUNK-byte chunks up
to `PARTIAL_LIMIT` (64 KiB), where it is written out; timed, median of RUNS runs, side by
side:

  (a) `EchoLines`, which grows the unfinished line in a bytearray (in place),
  (b) the alternative it replaced: `partial += chunk` on bytes, a copy of the whole
      unfinished line per chunk (quadratic in the number of chunks).

Usage: python benchmarks/echo_lines_bench.py [RUNS] [CHUNK]. Prints figures; asserts only that
both give the same line.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable

from niodoo_supervisor.output.echo_lines import PARTIAL_LIMIT, EchoLines

if len(sys.argv) > 3 or not all(arg.isdigit() for arg in sys.argv[1:]):
    sys.exit("usage: python benchmarks/echo_lines_bench.py [RUNS] [CHUNK]")
RUNS = int(sys.argv[1]) if len(sys.argv) > 1 else 7
CHUNK = int(sys.argv[2]) if len(sys.argv) > 2 else 1


def with_echo_lines(chunk: bytes) -> bytes:
    lines = EchoLines()
    for _ in range(PARTIAL_LIMIT // len(chunk)):
        whole = lines.feed(chunk)
    return whole


class BytesPartial:
    """The replaced way: the unfinished line kept as bytes on the object."""

    def __init__(self) -> None:
        self.partial = b""

    def feed(self, chunk: bytes) -> bytes:
        self.partial += chunk
        if len(self.partial) < PARTIAL_LIMIT:
            return b""
        rest, self.partial = self.partial, b""
        return rest + b"\n"


def with_bytes(chunk: bytes) -> bytes:
    lines = BytesPartial()
    for _ in range(PARTIAL_LIMIT // len(chunk)):
        whole = lines.feed(chunk)
    return whole


def median_ms(run: Callable[[bytes], bytes], chunk: bytes) -> tuple[float, bytes]:
    times, out = [], b""
    for _ in range(RUNS):
        start = time.perf_counter()
        out = run(chunk)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), out


chunk = b"z" * CHUNK
array_ms, array_out = median_ms(with_echo_lines, chunk)
bytes_ms, bytes_out = median_ms(with_bytes, chunk)
assert array_out == bytes_out
print(f"{PARTIAL_LIMIT // CHUNK} chunks of {CHUNK} byte(s), median of {RUNS} runs:")
print(f"  (a) EchoLines (bytearray): {array_ms:8.2f} ms")
print(f"  (b) bytes +=             : {bytes_ms:8.2f} ms")
