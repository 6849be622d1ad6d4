"""How long does loading a config take, for a large honest one and for hostile ones?

Timed with `config.load_config` (read, parse, validate), median of RUNS runs, the variants
interleaved round by round:

  (a) a config at the size limit (256 KiB, about 27,000 values) with libyaml's parser,
  (b) the same with PyYAML's pure-Python parser (what the supervisor used before),
  (c) nested aliases: 9 levels of 9 aliases, 800 bytes standing for 387 million values
      (refused; before, 7 levels took 47 s and 1.7 GB and 8 ran out of memory),
  (d) a 50 MB file (refused unread),
  (e) the demo config (config/demo-cpu.yaml): what `run` and `check` load,
  (f) a valid config with 1,000 adapters (about 80 KiB): the largest honest config,

and the time a fresh interpreter takes to import the loader (median of RUNS imports).

Usage: python benchmarks/config_bench.py [RUNS]. Prints figures; asserts nothing.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from niodoo_supervisor.config import yamldoc
from niodoo_supervisor.config.loader import MAX_CONFIG_BYTES, load_config

if len(sys.argv) > 2 or not all(arg.isdigit() for arg in sys.argv[1:]):
    sys.exit("usage: python benchmarks/config_bench.py [RUNS]")
RUNS = int(sys.argv[1]) if len(sys.argv) > 1 else 5

BASE = "server:\n  python: /opt/vllm/bin/python\nmodel:\n  path: /models/m\n"


def _at_the_limit() -> str:
    parts, size, index = [BASE, "x_bulk:\n"], len(BASE) + 8, 0
    while True:
        line = (
            f"  key{index}: {{name: adapter-{index}, path: /srv/adapters/a{index}, "
            "list: [1, 2.5, true, text]}\n"
        )
        if size + len(line) > MAX_CONFIG_BYTES:
            return "".join(parts)
        parts.append(line)
        size += len(line)
        index += 1


def _alias_bomb(levels: int = 9, width: int = 9) -> str:
    lines = [f"  l0: &l0 [{', '.join(['lol'] * width)}]"]
    lines += [f"  l{n}: &l{n} [{', '.join([f'*l{n - 1}'] * width)}]" for n in range(1, levels)]
    return f"{BASE}x_anchors:\n" + "\n".join(lines) + f"\nrules: *l{levels - 1}\n"


def _many_adapters(count: int = 1000) -> str:
    adapters = "".join(
        f"    - name: adapter-{index}\n      path: /srv/adapters/a{index}\n"
        for index in range(count)
    )
    return (
        BASE + f"lora:\n  enabled: true\n  max_loras: 4\n  max_cpu_loras: {count}\n"
        "  max_lora_rank: 16\n  adapters:\n" + adapters
    )


def _import_seconds() -> float:
    code = (
        "import time; started = time.perf_counter(); "
        "import niodoo_supervisor.config.loader; print(time.perf_counter() - started)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    return float(result.stdout)


def _timed(path: Path, *, python_parser: bool = False) -> Callable[[], float]:
    def run() -> float:
        saved = yamldoc._Loader
        if python_parser:
            yamldoc._Loader = yamldoc.PythonLoader  # type: ignore[assignment,misc]
        try:
            started = time.perf_counter()
            config, problems = load_config(path, {"NIODOO_VLLM_PYTHON": "/opt/vllm/bin/python"})
            assert config is not None or problems
            return time.perf_counter() - started
        finally:
            yamldoc._Loader = saved  # type: ignore[misc]

    return run


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "limit.yaml").write_text(_at_the_limit())
        (root / "bomb.yaml").write_text(_alias_bomb())
        (root / "huge.yaml").write_text(_at_the_limit() * 200)
        (root / "adapters.yaml").write_text(_many_adapters())
        demo = Path(__file__).resolve().parent.parent / "config" / "demo-cpu.yaml"
        variants = {
            f"(a) {MAX_CONFIG_BYTES // 1024} KiB config, libyaml": _timed(root / "limit.yaml"),
            f"(b) {MAX_CONFIG_BYTES // 1024} KiB config, pure Python": _timed(
                root / "limit.yaml", python_parser=True
            ),
            f"(c) alias bomb, {len(_alias_bomb())} bytes, refused": _timed(root / "bomb.yaml"),
            "(d) 50 MB config, refused unread": _timed(root / "huge.yaml"),
            "(e) demo config": _timed(demo),
            "(f) 1,000 adapters, valid": _timed(root / "adapters.yaml"),
            "import niodoo_supervisor.config.loader": _import_seconds,
        }
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(RUNS):
            for name, run in variants.items():
                times[name].append(run())
        for name, samples in times.items():
            print(f"{name:42} median {statistics.median(samples) * 1000:9.1f} ms")


if __name__ == "__main__":
    main()
