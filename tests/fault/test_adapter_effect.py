"""`lora.verify` through the real supervisor process on the fake vLLM, whose /v1/completions
answers the base model's log-probabilities for an adapter folder holding its no-effect marker
(an adapter vLLM loads that changes nothing): `warn` is ready and says so, `strict` is FATAL
with exit 78 after one start."""

from __future__ import annotations

import re
from pathlib import Path

from fault_supervisor import Launcher, assert_nothing_left, status_command, write_adapter
from harness import launched_pids

MARKER = "fake-no-effect"  # tests/fakevllm/vllm/_fake/models.py NO_EFFECT_MARKER


def _adapters_with_b_a_no_op(tmp: Path) -> None:
    """The config's adapters, written before it (make_config keeps them): b does nothing."""
    model = str(tmp / "model")
    write_adapter(tmp / "adapters" / "a", 8, model)
    write_adapter(tmp / "adapters" / "b", 16, model)
    (tmp / "adapters" / "b" / MARKER).write_text("")


def test_warn_reports_the_no_op_adapter_and_serves(supervise: Launcher, tmp_path: Path) -> None:
    _adapters_with_b_a_no_op(tmp_path)
    run = supervise(lora__verify="warn")
    run.wait_state("READY", 30)
    event = run.event("adapter_no_effect", adapter="b")
    assert event is not None and event["largest_delta"] == "0.0"
    assert run.status()["adapter_effects"]["a"]["verdict"] == "effect"
    effect = run.event("adapter_effect", adapter="a")
    assert effect is not None
    # The console's sentence: the change in three significant digits, not seventeen.
    assert re.fullmatch(
        r"adapter a changes the output \(largest log-probability change [\d.e+-]{1,9} nats\)",
        effect["summary"],
    ), effect
    shown = status_command(run)
    assert "b (NO EFFECT: serves the base model's output)" in shown.stdout, shown.stdout


def test_strict_is_fatal_once_without_a_restart(supervise: Launcher, tmp_path: Path) -> None:
    _adapters_with_b_a_no_op(tmp_path)
    run = supervise(lora__verify="strict")
    assert run.wait_exit(30) == 78
    assert run.states() == ["STARTING", "FATAL"]
    fatal = run.event("state_changed", new="FATAL")
    assert fatal is not None and "adapter(s) 'b' have no effect" in fatal["reason"]
    assert len(launched_pids(run)) == 1
    assert_nothing_left(run)
