"""The leader of a session that runs a companion (the Ray node of `ray start ... --block`)
beside vLLM: so both are one session and one process group, whose stop and leftover rules
(`process_tree`, `run_record`) cover the companion like any worker of vLLM.

A copy of this file in the state folder is run by vLLM's interpreter (`server.python`) as
`python <state folder>/session_keeper.py SPEC`, never imported by the supervisor's processes
at run time: standard library only. SPEC is JSON: `{"name", "companion": argv,
"companion_env": {..}, "wait_for": [host, port] | null, "vllm": argv | null}`.

1. Starts the companion (its environment plus `companion_env`).
2. With `vllm`: waits until `wait_for` accepts a TCP connection (the Ray head's port: vLLM
   joins the cluster at once and dies without it), at most `WAIT_LIMIT` s, then starts vLLM.
3. The first SIGTERM/SIGINT goes to vLLM (it drains), or to the companion when there is no
   vLLM. Later ones are not passed on: the supervisor's next signal goes to the whole group
   (the grace period is over), so it reaches them itself.
4. vLLM ended (asked or not): the companion is stopped after it, and the keeper ends as vLLM
   did (same code, or the same signal). The companion ended during a stop (the group's
   signal reached it before vLLM was done): the keeper waits for vLLM and ends as it did.
   The companion ended unasked: vLLM is stopped and the keeper exits `COMPANION_EXITED`,
   after a line saying so.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

COMPANION_EXITED = 86  # the keeper's exit code when the companion ended first, unasked
WAIT_LIMIT = 120.0
STOP_WAIT = 10.0  # seconds a process has between SIGTERM and SIGKILL when the keeper ends it
_POLL = 0.1


def say(text: str) -> None:
    print(f"niodoo session keeper: {text}", flush=True)


def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def end(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(STOP_WAIT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def exit_like(code: int) -> None:
    """End as a child that ended with `code` (negative: killed by that signal)."""
    sys.stdout.flush()
    if code < 0:
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    os._exit(code if code >= 0 else 128 - code)


def strings(value: object) -> list[str]:
    return [str(item) for item in value] if isinstance(value, list) else []


def main(spec: dict[str, object]) -> None:
    name = str(spec["name"])
    extra = spec.get("companion_env")
    env = {str(k): str(v) for k, v in extra.items()} if isinstance(extra, dict) else {}
    companion = subprocess.Popen(
        strings(spec["companion"]), env={**os.environ, **env}, stdin=subprocess.DEVNULL
    )
    say(f"started {name} (pid {companion.pid})")
    vllm: subprocess.Popen[bytes] | None = None
    stopping = False

    def on_stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        if stopping:
            return  # the group's signal: it reached vLLM and the companion too
        stopping = True
        target = vllm if vllm is not None and vllm.poll() is None else companion
        if target.poll() is None:
            target.send_signal(signum)

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    wait_for = strings(spec.get("wait_for"))
    argv = strings(spec.get("vllm"))
    if argv:
        deadline = time.monotonic() + WAIT_LIMIT
        while wait_for and not reachable(wait_for[0], int(wait_for[1])):
            if stopping or companion.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(_POLL * 5)
        if not stopping and companion.poll() is None:
            vllm = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
    while True:
        if vllm is not None and (code := vllm.poll()) is not None:
            end(companion)  # stopped after vLLM
            exit_like(code)
        if (code := companion.poll()) is not None:
            if stopping:
                if vllm is not None:  # asked to stop already: vLLM ends as it drains
                    say(f"{name} exited ({code}) during the stop; waiting for vLLM")
                    code = vllm.wait()
                exit_like(code)
            say(f"{name} exited ({code}); stopping vLLM" if vllm else f"{name} exited ({code})")
            if vllm is not None:
                end(vllm)
            exit_like(COMPANION_EXITED)
        time.sleep(_POLL)


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
