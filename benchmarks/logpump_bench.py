"""How fast does the supervisor capture vLLM's output with every rule applied, and what does the
worst line a client can make vLLM write cost?

Capture: a child process writes LINES lines of vLLM-format output (mostly uvicorn access
lines and ``Avg prompt throughput`` lines, some ignored-field warnings, a traceback now and
then) as fast as it can, in 64 KiB blocks (the hardest test for a reader) and one line per
write() as vLLM does under PYTHONUNBUFFERED=1 (the realistic one). Captured by:

  (a) nothing: the child writes straight to a file (the ceiling),
  (b) supervisord, already running (each round asks it over its socket to start the child),
  (c) LogPump with every built-in rule and a rotating log file (in a process of its own, as
      supervisord and the supervisor are),
  (d) LogPump with no rules (what the rules cost),
  (e) LogPump with every rule on the worst mix: every second line a `lora_name` event
      (LINES / 10 lines),
  (f) LogPump with every rule, the rotating file and the echo (vLLM's lines cut whole and
      written by the output writer, as to the journal) to a second file; timed until the
      echo's file is complete.

Every variant is timed alike: from the child's first write (the child notes the time;
CLOCK_MONOTONIC is one clock for every process) until the output file holds every byte (a
thread polls its size every millisecond), not until the child has exited.
Rounds are interleaved (a b c d e, a b c d e, ...) and medians printed; afterwards every
output file must hold exactly what the child wrote, or the benchmark fails.

Hostile lines: one line of 4 KiB to 1 MiB shaped to hit the rules' worst cases (a client
chooses the names of the request fields vLLM logs as ignored), through the rule scanner;
the budget is 50 ms for 1 MiB. A shape is not tried at the next size once it took over
1 s (the quadratic patterns of older versions would take hours at 1 MiB). And one long
traceback-like record (2,000 lines, and 1 MiB) fed one line per read, as vLLM writes it when
the pump keeps up (older versions walked the open record again on every read).

Usage: python benchmarks/logpump_bench.py [LINES] [ROUNDS]. Needs `supervisor` (a dev
dependency) for (b). Prints figures; asserts only that every file holds every line.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import xmlrpc.client
from collections.abc import Callable
from pathlib import Path
from typing import Any

from niodoo_supervisor.logs.rules import RuleSet

if not all(arg.isdigit() for arg in sys.argv[1:3]) or len(sys.argv) > 3:
    sys.exit("usage: python benchmarks/logpump_bench.py [LINES] [ROUNDS]")
LINES = int(sys.argv[1]) if len(sys.argv) > 1 else 300_000
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 5

# argv: lines, mix ("mix" or "lora"), writes ("block" or "line"), file for the start time.
CHILD = textwrap.dedent(
    r"""
    import os, sys, time
    total, mix, writes, stamp = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    api = "(APIServer pid=15721) "
    block = []
    for i in range(1000 if mix == "mix" else 0):
        block.append(f'INFO:     10.0.{i % 7}.{i % 250}:{40000 + i} - "POST /v1/chat/completions '
                     f'HTTP/1.1" 200 OK\n')
        if i % 5 == 0:
            block.append(f"{api}INFO 11-24 01:12:{i % 60:02d} [loggers.py:257] Engine 000: Avg "
                         f"prompt throughput: {i * 3.1:.1f} tokens/s, Avg generation throughput: "
                         f"{i * 1.7:.1f} tokens/s, Running: {i % 9} reqs, Waiting: 0 reqs, GPU KV "
                         f"cache usage: {i % 100}.0%, Prefix cache hit rate: 41.2%\n")
        if i % 3 == 0:
            block.append(f'INFO:     10.0.0.9:{50000 + i} - "GET /health HTTP/1.1" 200 OK\n')
        if i % 100 == 0:  # a client that sends lora_name on some requests
            block.append(f"{api}DEBUG 11-24 01:12:04 [protocol.py:72] The following fields were "
                         "present in the request but ignored: {'lora_name'}\n")
        if i == 500:  # an engine traceback now and then
            h = f"{api}ERROR 11-24 01:12:32 [async_llm.py:906] "
            block.append(f"{h}AsyncLLM output_handler failed.\r\n{h}Traceback (most recent call "
                         f"last):\r\n{h}  File \"async_llm.py\", line 849, in output_handler\r\n{h}"
                         "vllm.v1.engine.exceptions.EngineDeadError: EngineCore encountered an "
                         "issue.\n")
    for i in range(500 if mix == "lora" else 0):
        block.append(f'INFO:     10.0.0.1:{40000 + i} - "POST /v1/completions HTTP/1.1" 200 OK\n')
        block.append(f"{api}DEBUG 11-24 01:12:04 [protocol.py:72] The following fields were "
                     "present in the request but ignored: {'lora_name'}\n")
    block = [line.encode() for line in block[:1000]]
    records = block * (total // 1000) + block[: total % 1000]
    if stamp != "-":
        with open(stamp, "w") as f:
            f.write(repr(time.monotonic()))
    if writes == "line":
        for record in records:
            os.write(1, record)
    else:
        view = memoryview(b"".join(records))
        for pos in range(0, len(view), 1 << 16):
            os.write(1, view[pos:pos + (1 << 16)])
    """
)


class Work:
    """The temp folder: the child script, its expected output, where each variant writes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.script = root / "child.py"
        self.script.write_text(CHILD)
        self.stamp = root / "first-write"
        self._expected: dict[str, tuple[int, int, str]] = {}

    def argv(self, mix: str, writes: str) -> list[str]:
        lines = LINES if mix == "mix" else LINES // 10  # (e) is slow: events cost ~50 us each
        return [sys.executable, str(self.script), str(lines), mix, writes, str(self.stamp)]

    def expected(self, mix: str) -> tuple[int, int, str]:
        """Bytes, lines and SHA-256 of what the child writes."""
        if mix not in self._expected:
            argv = [*self.argv(mix, "block")[:-1], "-"]
            out = subprocess.run(argv, capture_output=True, check=True).stdout
            self._expected[mix] = (len(out), out.count(b"\n"), hashlib.sha256(out).hexdigest())
        return self._expected[mix]

    def first_write(self) -> float:
        return float(self.stamp.read_text())

    def check(self, variant: str, path: Path, mix: str) -> None:
        size, lines, digest = self.expected(mix)
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != digest:
            got = data.count(b"\n")
            raise SystemExit(
                f"{variant}: {path.name} holds {len(data):,} bytes / {got:,} lines, "
                f"not the {size:,} bytes / {lines:,} lines the child wrote"
            )


class FileWatch:
    """Notes when `path` first holds `size` bytes (polled every millisecond on a thread), so
    every variant's time ends alike: when its file is complete, whoever wrote it."""

    def __init__(self, path: Path, size: int) -> None:
        path.unlink(missing_ok=True)
        self.path, self.size, self.done = path, size, 0.0
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        deadline = time.monotonic() + 600
        while (self.path.stat().st_size if self.path.exists() else 0) < self.size:
            if time.monotonic() > deadline:
                return
            time.sleep(0.001)
        self.done = time.monotonic()

    def seconds(self, work: Work) -> float:
        """From the child's first write to the complete file."""
        self._thread.join(600)
        if not self.done:
            raise SystemExit(f"{self.path.name} was not complete after 600 s")
        return self.done - work.first_write()


def run_direct(work: Work, writes: str, mix: str = "mix") -> float:
    out_path = work.root / "direct.log"
    work.stamp.unlink(missing_ok=True)
    watch = FileWatch(out_path, work.expected(mix)[0])
    with out_path.open("wb") as out:
        subprocess.run(work.argv(mix, writes), stdout=out, check=True)
    seconds = watch.seconds(work)
    work.check("(a)", out_path, mix)
    return seconds


# The supervisor's side, in its own process as supervisord is: argv: log file, "all" or
# "none" (rules), the echo's file or "-" (no echo), then the child's argv. Prints the number
# of events and of dropped bytes.
PUMP = textwrap.dedent(
    r"""
    import asyncio, os, subprocess, sys
    from niodoo_supervisor.logs.pump import LogPump
    from niodoo_supervisor.logs.rules import RuleSet
    from niodoo_supervisor.logs.sinks import RotatingLogFile
    from niodoo_supervisor.output.writer import OutputWriter

    async def main():
        log_file = RotatingLogFile(sys.argv[1], 1 << 30, 1)
        ruleset = RuleSet(builtin=sys.argv[2] == "all")
        echo = None
        if sys.argv[3] != "-":
            out = os.open(sys.argv[3], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            echo = OutputWriter(out, 2, environ={})
        events = []
        r, w = os.pipe()
        child = subprocess.Popen(sys.argv[4:], stdout=w, stderr=subprocess.STDOUT)
        os.close(w)
        pump = LogPump(r, ruleset=ruleset, on_event=events.append, log_file=log_file, echo=echo)
        await pump.run()
        child.wait()
        log_file.close()
        print(len(events), pump.stats.dropped_bytes)

    asyncio.run(main())
    """
)


def run_pump(
    work: Work, rules: str, writes: str, mix: str = "mix", echo: bool = False
) -> tuple[float, int]:
    folder = work.root / "pump"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    work.stamp.unlink(missing_ok=True)
    watched = folder / ("echo.log" if echo else "vllm.log")
    watch = FileWatch(watched, work.expected(mix)[0])
    echo_to = str(folder / "echo.log") if echo else "-"
    argv = [sys.executable, "-c", PUMP, str(folder / "vllm.log"), rules, echo_to,
            *work.argv(mix, writes)]  # fmt: skip
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout.split()
    seconds = watch.seconds(work)
    events, dropped = int(out[0]), int(out[1])
    if dropped:
        raise SystemExit(f"the pump's file sink dropped {dropped:,} bytes")
    work.check("pump", folder / "vllm.log", mix)
    if echo:
        work.check("pump echo", folder / "echo.log", mix)
    return seconds, events


class Supervisord:
    """supervisord running for the whole benchmark; `run` has it start one child."""

    def __init__(self, work: Work) -> None:
        self.work = work
        self.folder = work.root / "supervisord"
        self.folder.mkdir()
        self.socket = self.folder / "supervisor.sock"
        programs = "".join(
            textwrap.dedent(
                f"""
                [program:{mix}-{writes}]
                command={" ".join(work.argv(mix, writes))}
                autostart=false
                autorestart=false
                startsecs=0
                redirect_stderr=true
                stdout_logfile={self.log(mix, writes)}
                stdout_logfile_maxbytes=0
                stdout_logfile_backups=0
                """
            )
            for mix in ("mix",)
            for writes in ("block", "line")
        )
        conf = self.folder / "supervisord.conf"
        conf.write_text(
            textwrap.dedent(
                f"""\
                [supervisord]
                nodaemon=true
                logfile={self.folder}/supervisord.log
                pidfile={self.folder}/supervisord.pid

                [unix_http_server]
                file={self.socket}

                [rpcinterface:supervisor]
                supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface
                """
            )
            + programs
        )
        binary = Path(sys.executable).with_name("supervisord")
        self.proc = subprocess.Popen(
            [str(binary), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.rpc = self._connect()

    def log(self, mix: str, writes: str) -> Path:
        return self.folder / f"{mix}-{writes}.log"

    def _connect(self) -> Any:
        from supervisor.xmlrpc import SupervisorTransport

        deadline = time.monotonic() + 30
        while True:
            transport = SupervisorTransport(None, None, f"unix://{self.socket}")
            rpc = xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)
            try:
                if rpc.supervisor.getState()["statename"] == "RUNNING":
                    return rpc
            except (OSError, xmlrpc.client.Error, http.client.HTTPException):
                pass
            if time.monotonic() > deadline:
                raise SystemExit("supervisord did not come up within 30 s")
            time.sleep(0.05)

    def run(self, writes: str, mix: str = "mix") -> float:
        name, log = f"{mix}-{writes}", self.log(mix, writes)
        self.work.stamp.unlink(missing_ok=True)
        watch = FileWatch(log, self.work.expected(mix)[0])
        self.rpc.supervisor.startProcess(name, False)
        seconds = watch.seconds(self.work)
        while self.rpc.supervisor.getProcessInfo(name)["statename"] not in ("EXITED", "FATAL"):
            time.sleep(0.01)
        self.work.check("(b)", log, mix)
        return seconds

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def start_supervisord(work: Work) -> tuple[Supervisord | None, str]:
    if not Path(sys.executable).with_name("supervisord").exists():
        return None, "supervisord is not installed beside this Python: pip install supervisor"
    return Supervisord(work), ""


def capture(work: Work, writes: str, supervisord: Supervisord | None, why: str) -> None:
    size, lines, _ = work.expected("mix")
    how = "in 64 KiB blocks" if writes == "block" else "one write() per line"
    print(f"\n{lines:,} lines, {size / 1e6:.1f} MB, written {how}; median of {ROUNDS} "
          "interleaved rounds, from the child's first write to the last byte in the file")  # fmt: skip
    lora_lines = work.expected("lora")[1]
    variants: dict[str, tuple[int, Callable[[], float]]] = {
        "(a) child -> file directly": (lines, lambda: run_direct(work, writes)),
        "(c) LogPump, all rules, rotating file": (
            lines, lambda: run_pump(work, "all", writes)[0]),
        "(d) LogPump, no rules, rotating file": (
            lines, lambda: run_pump(work, "none", writes)[0]),
        "(e) LogPump, all rules, every 2nd line an event": (
            lora_lines, lambda: run_pump(work, "all", writes, "lora")[0]),
        "(f) LogPump, all rules, rotating file + echo": (
            lines, lambda: run_pump(work, "all", writes, echo=True)[0]),
    }  # fmt: skip
    if supervisord is not None:
        variants["(b) supervisord -> its log file"] = (lines, lambda: supervisord.run(writes))
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(ROUNDS):
        for name, (_, run) in variants.items():
            times[name].append(run())
    base = statistics.median(times["(b) supervisord -> its log file"]) if supervisord else None
    print(f"{'variant':<48} {'lines/s':>12} {'seconds':>8}  vs supervisord")
    for name in sorted(variants):
        median = statistics.median(times[name])
        ratio = f"{base / median:.2f}x" if base else "-"
        print(f"{name:<48} {variants[name][0] / median:>12,.0f} {median:>8.3f}  {ratio}")
    if supervisord is None:
        print(f"(b) supervisord: skipped ({why})")
    print("every output file holds every line the child wrote")


_FIELDS = (
    "(APIServer pid=1) DEBUG 11-24 00:00:00 [protocol.py:72] The following fields were "
    "present in the request but ignored: {'"
)


def hostile_lines(n: int) -> dict[str, str]:
    """Lines of about `n` bytes aimed at the costliest patterns (of this or older versions)."""
    return {
        "field: x...x is not a local folder": _FIELDS + "x" * n + " is not a local folder'}",
        "field: x...x does not appear to have a file named": (
            _FIELDS + "x" * n + " does not appear to have a file named'}"),
        "field: max seq len (1) repeated": _FIELDS + "max seq len (1)" * (n // 15) + "'}",
        "field: Free memory on device repeated": (
            _FIELDS + "Free memory on device x (1/2 GiB)" * (n // 34) + "'}"),
        "field: quotes and backslashes": _FIELDS + "\\'" * (n // 2),
        "field: every anchor, repeated": _FIELDS + " ".join(
            a.decode() for a in RuleSet().anchors) * (n // 1200 + 1) + "'}",
        "raw line: x...x is not a local folder": "x" * n + " is not a local folder",
        "raw line: Loading lora repeated": "Loading lora " * (n // 13),
    }  # fmt: skip


def scan_seconds(reads: list[bytes]) -> float:
    """Seconds the rule scanner takes over `reads`, one feed each."""
    scanner = RuleSet().scanner()
    start = time.perf_counter()
    for data in reads:
        scanner.feed(data)
    scanner.flush(final=True)
    return time.perf_counter() - start


def median_seconds(reads: list[bytes]) -> float:
    """The median of 3 runs, or the first alone when it took over 1 s."""
    first = scan_seconds(reads)
    return first if first > 1 else statistics.median([first, *map(scan_seconds, [reads] * 2)])


def hostile() -> None:
    sizes = (4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20)
    print("\nScanning one hostile line (rules only, in 64 KiB chunks), median of 3; budget: "
          "50 ms for 1 MiB")  # fmt: skip
    print(f"{'shape':<52}" + "".join(f"{n >> 10:>9} KiB" for n in sizes))
    worst = dict.fromkeys(sizes, 0.0)
    for name in hostile_lines(1):
        row, slow = f"{name:<52}", False
        for n in sizes:
            if slow:
                row += f"{'not tried':>13}"
                worst[n] = float("inf")
                continue
            data = (hostile_lines(n)[name] + "\n").encode()
            took = median_seconds(
                [data[pos : pos + (1 << 16)] for pos in range(0, len(data), 1 << 16)]
            )
            worst[n] = max(worst[n], took)
            row += f"{took * 1000:>10.1f} ms"
            slow = took > 1
        print(row)
    shown = (f"{worst[n] * 1000:>10.1f} ms" if worst[n] < float("inf") else f"{'> 1 s':>13}"
             for n in sizes)  # fmt: skip
    print(f"{'worst':<52}" + "".join(shown))
    long_records()


def long_record(total: int, *, by_bytes: bool, hits: bool) -> list[bytes]:
    """A traceback-like record of `total` lines (or bytes) whose first line holds an anchor;
    with `hits`, every frame line holds one too (a client can make vLLM echo any text)."""
    lines = [b"ERROR 11-24 00:00:00 [core.py:1] EngineCore encountered a fatal error:\n",
             b"Traceback (most recent call last):\n"]  # fmt: skip
    size = sum(map(len, lines))
    while (size if by_bytes else len(lines)) < total:
        frame = f'  File "engine_{len(lines)}.py", line {len(lines)}, in step'.encode()
        lines.append(frame + (b" EngineDeadError\n" if hits else b"\n"))
        size += len(lines[-1])
    return [*lines, b"RuntimeError: EngineDeadError\n", b"INFO:     next record\n"]


def long_records() -> None:
    print("\nScanning one long traceback-like record fed one line per read (vLLM writes a line "
          "per write), median of 3 (one run when over 1 s)")  # fmt: skip
    print(f"{'record':<52}{'frames plain':>16}{'frames all hits':>18}")
    for name, total, by_bytes in (("2,000 lines", 2000, False), ("1 MiB", 1 << 20, True)):
        row = f"{name:<52}"
        for width, hits in ((16, False), (18, True)):
            took = median_seconds(long_record(total, by_bytes=by_bytes, hits=hits))
            row += f"{took * 1000:>{width - 3}.1f} ms"
        print(row)


def main() -> None:
    print(f"LogPump benchmark: {os.cpu_count()} CPUs, {len(RuleSet().rules)} built-in rules")
    with tempfile.TemporaryDirectory(prefix="niodoo-bench-") as tmp:
        work = Work(Path(tmp))
        supervisord, why = start_supervisord(work)
        try:
            for writes in ("block", "line"):
                capture(work, writes, supervisord, why)
        finally:
            if supervisord is not None:
                supervisord.close()
    hostile()


if __name__ == "__main__":
    main()
