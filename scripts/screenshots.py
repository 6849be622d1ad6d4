"""docs/console-*.png and .txt: what a person sees running `make demo` (`make screenshots`).

Runs `make demo` in this checkout inside a tmux session of a fixed size (TERM=xterm-256color,
NO_COLOR unset, so the console is what a colour terminal shows), on a free port, and captures
the pane (`tmux capture-pane -p -e`: the visible screen with its colours) at four moments,
each waited for on a deadline, never a fixed sleep:

  startup    vLLM is starting and has loaded the weights (vLLM's log says the KV cache size)
  ready      status.json says READY
  lora-name  after a chat request with the `lora_name` field, once status.json counts it
  stop       after Ctrl-C (tmux send-keys C-c), once make has returned to the shell prompt

Each capture is written as docs/console-<moment>.txt (the text, escapes stripped) and
docs/console-<moment>.png (rendered with Pillow in DejaVu Sans Mono). Needs tmux and the font:
as root the script installs what is missing with apt-get, elsewhere it says what to install.
Takes about two minutes (vLLM's start-up on the CPU build is most of it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
from ansi_sgr import DEFAULT_BG, Run, last_screen, parse
from PIL import Image, ImageDraw, ImageFont

REPO = Path(__file__).resolve().parents[1]
STATE_DIR = REPO / "var" / "state"  # config/demo-cpu.yaml's supervisor.state_dir
SESSION = "demo"
READY_DEADLINE_S = (
    420.0  # set-up (nothing to install after `make screenshots`'s prerequisites) + start-up
)
EVENT_DEADLINE_S = 60.0
STOP_DEADLINE_S = 90.0
POLL_S = 0.05
FONT_SIZE = 15
PADDING = 12
FONT_FILES = {
    "regular": ("DejaVu Sans Mono:style=Book", "DejaVuSansMono.ttf"),
    "bold": ("DejaVu Sans Mono:style=Bold", "DejaVuSansMono-Bold.ttf"),
}
LORA_NAME_REQUEST = {
    "model": "tiny",
    "lora_name": "alpha",
    "messages": [{"role": "user", "content": "hi"}],
    "max_tokens": 8,
}


class Failed(Exception):
    """One line for the person running the script."""


# --- what the script needs -----------------------------------------------------------------


def ensure_installed(command: str, apt_package: str, present: Callable[[], bool]) -> None:
    if present():
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise Failed(
            f"{command} is missing: install it (Debian/Ubuntu: apt-get install {apt_package})"
        )
    print(f"screenshots: installing {apt_package} with apt-get", file=sys.stderr)
    subprocess.run(
        ["apt-get", "install", "-y", "-q", apt_package], check=True, stdout=subprocess.DEVNULL
    )
    if not present():
        raise Failed(f"{command} is still missing after apt-get install {apt_package}")


def font_file(weight: str) -> Path | None:
    pattern, name = FONT_FILES[weight]
    if shutil.which("fc-match"):
        found = subprocess.run(
            ["fc-match", "-f", "%{file}", pattern], capture_output=True, text=True, check=False
        ).stdout
        if Path(found).name == name:
            return Path(found)
    for folder in (Path("/usr/share/fonts"), Path("/usr/local/share/fonts")):
        hits = sorted(folder.rglob(name)) if folder.is_dir() else []
        if hits:
            return hits[0]
    return None


# --- rendering -----------------------------------------------------------------------------


def render_png(screen: list[list[Run]], columns: int, rows: int, out: Path) -> None:
    """The screen's rows as a PNG: a cell grid of columns x rows, the runs drawn in their
    colours, bold in the bold face."""
    regular, bold = (font_file(w) for w in ("regular", "bold"))
    assert regular is not None  # ensure_installed checked
    fonts = {
        False: ImageFont.truetype(str(regular), FONT_SIZE),
        True: ImageFont.truetype(str(bold or regular), FONT_SIZE),
    }
    cell_w = round(fonts[False].getlength("M"))
    ascent, descent = fonts[False].getmetrics()
    cell_h = ascent + descent + 2
    image = Image.new(
        "RGB", (columns * cell_w + 2 * PADDING, rows * cell_h + 2 * PADDING), DEFAULT_BG
    )
    draw = ImageDraw.Draw(image)
    for row, runs in enumerate(screen[:rows]):
        column = 0
        y = PADDING + row * cell_h
        for run in runs:
            fg, bg = run.style.colours()
            if run.style.dim:
                fg = (
                    fg[0] // 2 + DEFAULT_BG[0] // 2,
                    fg[1] // 2 + DEFAULT_BG[1] // 2,
                    fg[2] // 2 + DEFAULT_BG[2] // 2,
                )
            for char in run.text:  # one cell each, so the grid holds whatever the glyph widths
                x = PADDING + column * cell_w
                if bg is not None:
                    draw.rectangle((x, y, x + cell_w - 1, y + cell_h - 1), fill=bg)
                if not char.isspace():
                    draw.text((x, y + 1), char, font=fonts[run.style.bold], fill=fg)
                if run.style.underline:
                    draw.line((x, y + ascent + 2, x + cell_w - 1, y + ascent + 2), fill=fg)
                column += 1
    image.save(out, optimize=True)


# --- the tmux session ----------------------------------------------------------------------


class Tmux:
    """A tmux server of our own (its own socket, no user config), one session of a fixed size."""

    def __init__(self, socket_name: str, columns: int, rows: int) -> None:
        self.socket_name = socket_name
        self.columns = columns
        self.rows = rows

    def run(self, *args: str) -> str:
        return subprocess.run(
            ["tmux", "-L", self.socket_name, *args], capture_output=True, text=True, check=True
        ).stdout

    def start(self, config: Path, env: dict[str, str]) -> None:
        shell = ["bash", "--norc", "--noprofile", "-i"]
        subprocess.run(
            ["tmux", "-L", self.socket_name, "-f", str(config), "new-session", "-d", "-s", SESSION,
             "-x", str(self.columns), "-y", str(self.rows), "-c", str(REPO), *shell],
            env=env, check=True,
        )  # fmt: skip

    def type(self, *keys: str) -> None:
        self.run("send-keys", "-t", SESSION, *keys)

    def capture(self) -> str:
        """The screen and as many lines above it, wrapped lines joined (-J), colours kept (-e)."""
        return self.run("capture-pane", "-p", "-e", "-J", "-S", f"-{self.rows}", "-t", SESSION)

    def idle(self) -> bool:
        """The pane's shell runs nothing: it shows its prompt."""
        shell = int(self.run("display-message", "-p", "-t", SESSION, "#{pane_pid}"))
        try:
            return not psutil.Process(shell).children()
        except psutil.NoSuchProcess:
            raise Failed("the shell in tmux exited") from None

    def kill(self) -> None:
        subprocess.run(
            ["tmux", "-L", self.socket_name, "kill-server"], capture_output=True, check=False
        )


# --- waiting on the demo -------------------------------------------------------------------


def wait_for(what: str, deadline_s: float, condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > deadline:
            raise Failed(f"timed out after {deadline_s:.0f} s waiting for {what}")
        time.sleep(POLL_S)


class Demo:
    """What the demo's state folder says, for the supervisor started after `started_at` only
    (an earlier run's status.json may still be there)."""

    def __init__(self, started_at: float) -> None:
        self.started_at = started_at
        self.log_offset = _size(STATE_DIR / "vllm.log")

    def status(self) -> dict[str, Any]:
        try:
            status = json.loads((STATE_DIR / "status.json").read_text())
        except (OSError, ValueError):
            return {}
        if (
            not isinstance(status, dict)
            or status.get("supervisor_create_time", 0) < self.started_at - 1
        ):
            return {}
        return status

    def state(self) -> str | None:
        return self.status().get("state")

    def vllm_log_says(self, text: str) -> bool:
        path = STATE_DIR / "vllm.log"
        if _size(path) < self.log_offset:  # rotated: a new file
            self.log_offset = 0
        try:
            with path.open("rb") as log:
                log.seek(self.log_offset)
                return text.encode() in log.read()
        except OSError:
            return False

    def lora_name_count(self) -> int:
        counts = self.status().get("events", {}).get("ignored_fields", {})
        return int(counts.get("lora_name", 0)) if isinstance(counts, dict) else 0


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def send_lora_name_request(port: int) -> None:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        data=json.dumps(LORA_NAME_REQUEST).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=EVENT_DEADLINE_S) as answer:
        answer.read()


# --- the run -------------------------------------------------------------------------------


def without_machine_paths(text: str) -> str:
    """The checkout's path and the home folder as a reader's own would read (~/niodoo-supervisor,
    ~), so the pictures carry no paths of the machine that took them."""
    return text.replace(str(REPO), "~/niodoo-supervisor").replace(str(Path.home()), "~")


def save(tmux: Tmux, out_dir: Path, moment: str) -> None:
    lines = parse(without_machine_paths(tmux.capture().removesuffix("\n")))
    screen, texts = last_screen(lines, tmux.columns, tmux.rows)
    (out_dir / f"console-{moment}.txt").write_text("\n".join(texts).strip("\n") + "\n")
    render_png(screen, tmux.columns, tmux.rows, out_dir / f"console-{moment}.png")
    print(f"screenshots: {moment}: docs/console-{moment}.png", file=sys.stderr)


def take(out_dir: Path, columns: int, rows: int) -> None:
    port = free_port()
    env = {key: value for key, value in os.environ.items() if key not in ("NO_COLOR", "TMUX")}
    env |= {"NIODOO_PORT": str(port), "TERM": "xterm-256color", "PS1": "$ "}
    with tempfile.TemporaryDirectory(prefix="niodoo-screenshots-") as tmp:
        config = Path(tmp) / "tmux.conf"
        # No status bar: the pane is the whole terminal. The pane's TERM is xterm-256color.
        config.write_text("set -g status off\nset -g default-terminal xterm-256color\n")
        tmux = Tmux(f"niodoo-screenshots-{os.getpid()}", columns, rows)
        started_at = time.time()
        tmux.start(config, env)
        try:
            capture_the_demo(tmux, Demo(started_at), port, out_dir)
        finally:
            tmux.kill()


def capture_the_demo(tmux: Tmux, demo: Demo, port: int, out_dir: Path) -> None:
    wait_for("the shell in tmux", EVENT_DEADLINE_S, tmux.idle)
    tmux.type("make demo", "Enter")
    wait_for("make demo to start", EVENT_DEADLINE_S, lambda: not tmux.idle())
    try:
        wait_for(
            "vLLM to size its KV cache (after loading the weights)",
            READY_DEADLINE_S,
            lambda: demo.vllm_log_says("KV cache size") or demo.state() == "READY",
        )
        if demo.state() == "READY":
            raise Failed("the demo was ready before its start-up could be captured")
        save(tmux, out_dir, "startup")
        wait_for("READY in status.json", READY_DEADLINE_S, lambda: demo.state() == "READY")
        save(tmux, out_dir, "ready")
        before = demo.lora_name_count()
        send_lora_name_request(port)
        wait_for("the lora_name request counted in status.json", EVENT_DEADLINE_S,
                 lambda: demo.lora_name_count() > before)  # fmt: skip
        save(tmux, out_dir, "lora-name")
    finally:
        tmux.type("C-c")  # as a person would; the supervisor drains, stops vLLM and exits
        wait_for("the demo to stop after Ctrl-C", STOP_DEADLINE_S, tmux.idle)
    save(tmux, out_dir, "stop")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs", help="default: docs/")
    parser.add_argument("--columns", type=int, default=120)
    parser.add_argument("--rows", type=int, default=40)
    args = parser.parse_args()
    try:
        ensure_installed("tmux", "tmux", lambda: shutil.which("tmux") is not None)
        ensure_installed(
            "DejaVu Sans Mono", "fonts-dejavu-core", lambda: font_file("regular") is not None
        )
        take(args.out, args.columns, args.rows)
    except Failed as problem:
        print(f"screenshots: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
