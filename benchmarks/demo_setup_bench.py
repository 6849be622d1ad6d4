"""`make demo`'s set-up time on a fresh clone: from the command to the supervisor's first line.

Each run clones the repository at a revision into a new temporary folder, runs `make demo` there
(a free port, the shared vLLM environment reused: scripts/setup-vllm-env.sh caches it outside
the checkout) and times the moment the supervisor writes its first line: the first line after
make echoes the recipe's `exec ... niodoo-supervisor run`. The demo is then stopped with SIGINT,
as Ctrl-C would, and the clone removed. pip's own cache is whatever the machine has (warm after
the first run). Prints the median of the runs per revision, side by side: the wall-clock time,
and the CPU time (user + system) of `make demo` and everything it ran until the first line,
which other work on a shared machine disturbs less:

    python benchmarks/demo_setup_bench.py --runs 3 main HEAD
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECIPE_EXEC = "niodoo-supervisor run -c"  # the line make echoes just before the supervisor runs
SETUP_DEADLINE_S = 900.0
STOP_DEADLINE_S = 120.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _cpu_of_ended(pid: int) -> float:
    """CPU seconds of process `pid` and of its descendants that have ended and been waited for
    (Linux /proc: utime, stime, cutime, cstime)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(field) for field in fields[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


def time_one(revision: str) -> tuple[float, float]:
    """Wall-clock and CPU seconds from `make demo` to the supervisor's first line, on a fresh
    clone of `revision`. The CPU time counts the processes that have ended by then (pip, the
    venv, the demo model), not the supervisor itself."""
    sha = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", revision], check=True, capture_output=True, text=True
    ).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="demo-setup-bench-") as tmp:
        clone = Path(tmp) / "clone"
        subprocess.run(["git", "clone", "-q", "--no-checkout", str(REPO), str(clone)], check=True)
        subprocess.run(["git", "-C", str(clone), "checkout", "-q", sha], check=True)
        env = {**os.environ, "NIODOO_PORT": str(free_port()), "PYTHONUNBUFFERED": "1"}
        started = time.monotonic()
        make = subprocess.Popen(
            ["make", "demo"],
            cwd=clone,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own process group: SIGINT reaches make and the demo
        )
        assert make.stdout is not None
        seen_exec = False
        first_line_at: float | None = None
        cpu = 0.0
        try:
            for line in make.stdout:
                if seen_exec:
                    first_line_at = time.monotonic() - started
                    cpu = _cpu_of_ended(make.pid)
                    break
                seen_exec = RECIPE_EXEC in line
                if time.monotonic() - started > SETUP_DEADLINE_S:
                    break
        finally:
            os.killpg(make.pid, signal.SIGINT)
            try:
                make.communicate(timeout=STOP_DEADLINE_S)
            except subprocess.TimeoutExpired:
                os.killpg(make.pid, signal.SIGKILL)
                make.communicate()
        if first_line_at is None:
            raise SystemExit(f"{revision}: no supervisor line within {SETUP_DEADLINE_S:.0f} s")
        return first_line_at, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("revisions", nargs="*", default=["main", "HEAD"])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    walls: dict[str, list[float]] = {rev: [] for rev in args.revisions}
    cpus: dict[str, list[float]] = {rev: [] for rev in args.revisions}
    for _ in range(args.runs):  # interleaved, so a busy minute on the machine hits both
        for rev in args.revisions:
            wall, cpu = time_one(rev)
            walls[rev].append(wall)
            cpus[rev].append(cpu)
            print(f"{rev}: {wall:.1f} s to the first line, {cpu:.1f} s CPU", flush=True)
    print(
        f"medians of {args.runs} runs, make demo on a fresh clone to the supervisor's first line:"
    )
    for rev in args.revisions:
        wall, cpu = statistics.median(walls[rev]), statistics.median(cpus[rev])
        runs = ", ".join(f"{t:.1f}" for t in walls[rev])
        print(f"{rev:>12}: {wall:.1f} s wall ({runs}), {cpu:.1f} s CPU")


if __name__ == "__main__":
    main()
