"""How fast can the supervisor capture vLLM's output, with every rule applied?

A child process writes LINES lines of vLLM-format output (mostly uvicorn access lines and
``Avg prompt throughput`` lines, some ignored-field warnings, a traceback now and then) as
fast as it can, in two ways: in 64 KiB blocks (the hardest test for a reader), and one
line per write() as vLLM does under PYTHONUNBUFFERED=1 (the realistic one). Compared, in
lines per second (median of RUNS runs):

  (a) the child writing straight to a file (the ceiling),
  (b) supervisord capturing the child into its log file (installed into a throwaway venv
      under the temp dir; skipped, with the reason, when that cannot be done),
  (c) LogPump with every built-in rule and a rotating log file,
  (d) LogPump with no rules (what the rules cost),
  (e) the worst case for the rules: every request carries `lora_name`, so every second
      line is a rule hit (an event each).

Wall-clock figures run from starting the capturing process, so (b) includes supervisord's
own start; "first byte" figures run from the first byte captured. Usage:
python benchmarks/logpump_bench.py [LINES] [RUNS]. Prints figures; asserts nothing.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import venv
from pathlib import Path

from niodoo_supervisor.logpump import LogPump, RotatingLogFile
from niodoo_supervisor.rules import Event, RuleSet

if not all(arg.isdigit() for arg in sys.argv[1:3]) or len(sys.argv) > 3:
    sys.exit("usage: python benchmarks/logpump_bench.py [LINES] [RUNS]")
LINES = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
RUNS = int(sys.argv[2]) if len(sys.argv) > 2 else 3

# argv: lines, mix ("mix" or "lora"), writes ("block" or "line").
CHILD = textwrap.dedent(
    r"""
    import os, sys
    total, mix, writes = int(sys.argv[1]), sys.argv[2], sys.argv[3]
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
    if writes == "line":
        for record in records:
            os.write(1, record)
    else:
        view = memoryview(b"".join(records))
        for pos in range(0, len(view), 1 << 16):
            os.write(1, view[pos:pos + (1 << 16)])
    """
)


def child_argv(work: Path, mix: str, writes: str) -> list[str]:
    script = work / "child.py"
    script.write_text(CHILD)
    return [sys.executable, str(script), str(LINES), mix, writes]


def expected_output(work: Path, mix: str) -> tuple[int, int]:
    """Bytes and lines the child writes (a traceback record has several lines)."""
    out = subprocess.run(child_argv(work, mix, "block"), capture_output=True, check=True).stdout
    return len(out), out.count(b"\n")


def bench_direct(work: Path, writes: str) -> float:
    with (work / "direct.log").open("wb") as out:
        start = time.perf_counter()
        subprocess.run(child_argv(work, "mix", writes), stdout=out, check=True)
        return time.perf_counter() - start


async def _pump(work: Path, ruleset: RuleSet, mix: str, writes: str) -> tuple[float, float, int]:
    events: list[Event] = []
    log_file = RotatingLogFile(work / "pump" / "vllm.log", 64 << 20, 3)
    first: list[float] = []

    def clock() -> float:  # read once per chunk: remember the first chunk
        now = time.perf_counter()
        if not first:
            first.append(now)
        return now

    r, w = os.pipe()
    start = time.perf_counter()
    proc = subprocess.Popen(child_argv(work, mix, writes), stdout=w, stderr=subprocess.STDOUT)
    os.close(w)
    pump = LogPump(r, ruleset=ruleset, on_event=events.append, log_file=log_file, echo=None,
                   clock=clock)  # fmt: skip
    await pump.run()
    done = time.perf_counter()
    proc.wait()
    os.close(r)
    log_file.close()
    if pump.stats.dropped_bytes:
        print(f"    note: the file sink fell behind and dropped {pump.stats.dropped_bytes} bytes")
    return done - start, done - first[0], len(events)


def bench_pump(
    work: Path, ruleset: RuleSet, writes: str, mix: str = "mix"
) -> tuple[float, float, int]:
    shutil.rmtree(work / "pump", ignore_errors=True)
    return asyncio.run(_pump(work, ruleset, mix, writes))


def supervisord_python(base: Path) -> tuple[Path | None, str]:
    env_dir = base / "niodoo-bench-supervisor"
    python = env_dir / "bin" / "python"
    if (env_dir / "bin" / "supervisord").exists():
        return python, ""
    try:
        venv.create(env_dir, with_pip=True, clear=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", "supervisor"],
            check=True, capture_output=True, timeout=600,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        return None, f"cannot install supervisor: {exc} {detail.decode(errors='replace')[-300:]}"
    return python, ""


def bench_supervisord(work: Path, python: Path, total: int, writes: str) -> tuple[float, float]:
    """Seconds from starting supervisord, and from the first captured byte, to the last."""
    run = work / "supervisord"
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir()
    log = run / "child.log"
    (run / "supervisord.conf").write_text(
        textwrap.dedent(
            f"""\
            [supervisord]
            nodaemon=true
            logfile={run}/supervisord.log
            pidfile={run}/supervisord.pid
            childlogdir={run}

            [program:vllm]
            command={" ".join(child_argv(work, "mix", writes))}
            autostart=true
            autorestart=false
            startsecs=0
            redirect_stderr=true
            stdout_logfile={log}
            stdout_logfile_maxbytes=0
            """
        )
    )
    start = time.perf_counter()
    first = None
    proc = subprocess.Popen(
        [str(python.parent / "supervisord"), "-c", str(run / "supervisord.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = start + 600
        while (size := log.stat().st_size if log.exists() else 0) < total:
            if first is None and size:
                first = time.perf_counter()
            if time.perf_counter() > deadline:
                raise TimeoutError("supervisord did not capture everything in 600 s")
            time.sleep(0.001)
        done = time.perf_counter()
        return done - start, done - (first or start)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def rate(lines: int, seconds: list[float]) -> str:
    median = statistics.median(seconds)
    return f"{lines / median:>12,.0f} lines/s ({median:.3f} s)"


def scenario(work: Path, writes: str, supervisord: Path | None, why: str) -> None:
    total, lines = expected_output(work, "mix")
    how = "in 64 KiB blocks" if writes == "block" else "one write() per line"
    print(f"\n{lines:,} lines, {total / 1e6:.1f} MB, written {how}; "
          f"median of {RUNS}; wall clock | from the first byte")  # fmt: skip
    direct = [bench_direct(work, writes) for _ in range(RUNS)]
    print(f"(a) child -> file directly           {rate(lines, direct)}")
    if supervisord is None:
        print(f"(b) supervisord: skipped ({why})")
    else:
        sup = [bench_supervisord(work, supervisord, total, writes) for _ in range(RUNS)]
        print(f"(b) supervisord -> its log file      {rate(lines, [t for t, _ in sup])} | "
              f"{rate(lines, [t for _, t in sup])}")  # fmt: skip
    for label, ruleset in (
        ("(c) LogPump, all rules, rotating file", RuleSet()),
        ("(d) LogPump, no rules, rotating file ", RuleSet(builtin=False)),
    ):
        runs = [bench_pump(work, ruleset, writes) for _ in range(RUNS)]
        print(f"{label} {rate(lines, [t for t, _, _ in runs])} | "
              f"{rate(lines, [t for _, t, _ in runs])}; {runs[0][2]:,} events")  # fmt: skip


def main() -> None:
    base = Path(tempfile.gettempdir())
    supervisord, why = supervisord_python(base)
    print(f"LogPump benchmark: {os.cpu_count()} CPUs, {len(RuleSet().rules)} built-in rules")
    with tempfile.TemporaryDirectory(prefix="niodoo-bench-") as tmp:
        work = Path(tmp)
        for writes in ("block", "line"):
            scenario(work, writes, supervisord, why)
        worst = [bench_pump(work, RuleSet(), "block", "lora") for _ in range(RUNS)]
        print(f"\n(e) worst case, lora_name on every request (every 2nd line an event): "
              f"{rate(LINES, [t for t, _, _ in worst])}; {worst[0][2]:,} events")  # fmt: skip


if __name__ == "__main__":
    main()
