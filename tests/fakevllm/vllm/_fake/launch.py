"""``main``: what both launchers run before the API server starts.

Read the fault switches, block the stop signals, parse the command line the way the
chosen launcher does, configure logging as vLLM does, then hand over to ``ApiServer``.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import traceback
from collections.abc import Sequence

from vllm._fake import texts
from vllm._fake.cli import build_parser, build_serve_parsers, move_model_flag, parse_args
from vllm._fake.faults import FaultError, parse_faults
from vllm._fake.logs import configure_vllm_logging, emit, raw
from vllm._fake.server import ApiServer

__all__ = ["main"]


def main(argv: Sequence[str] | None = None, *, launcher: str = "api_server") -> int:
    """Run the fake API server; ``launcher`` is ``api_server`` or ``serve`` (vllm serve)."""
    try:
        faults = parse_faults(os.environ.get("FAKE_VLLM_FAULTS", ""))
    except FaultError as e:
        raw(f"fake vLLM: bad FAKE_VLLM_FAULTS: {e}")
        return 3
    # Block the stop signals before any thread or child exists: every thread inherits
    # the mask, so the main loop's sigtimedwait is the only place they are taken.
    stop_signals = {signal.SIGINT}
    if faults.ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        stop_signals.add(signal.SIGTERM)
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    argv = list(sys.argv[1:] if argv is None else argv)
    moved_model_flag = False
    if launcher == "serve":
        top, parser = build_serve_parsers()
        argv, moved_model_flag = move_model_flag(argv)
        args = parse_args(top, argv)
        if args.subparser != "serve":
            top.print_help()
            return 0
    else:
        parser = build_parser()
        args = parse_args(parser, argv)
    if faults.exit_at_start:
        parser.error("unrecognized arguments: --fake-exit-at-start")
    try:
        custom = configure_vllm_logging()
    except (RuntimeError, ValueError, TypeError, OSError):
        traceback.print_exc()
        return 1
    if moved_model_flag:
        emit(
            texts.SERVE_MODEL_FLAG,
            logging.WARNING,
            "With `vllm serve`, you should provide the model as a positional argument or in a "
            "config file instead of via the `--model` option. The `--model` option will be "
            "removed in a future version.",
        )
    return ApiServer(parser, args, faults, custom, stop_signals).run()
