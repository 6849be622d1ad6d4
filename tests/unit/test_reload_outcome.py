"""What `niodoo-supervisor reload` is told: a live adapter change vLLM refused fails the reload
whatever else it did (a restart held for a window included), and one it made is named."""

from __future__ import annotations

from niodoo_supervisor.control.api import CommandResult
from niodoo_supervisor.supervise.reload_diff import Change, ConfigDiff, KeyClass
from niodoo_supervisor.supervise.reload_outcome import reload_outcome

PENDING = (
    "serving; restart pending at 2023-11-14T23:00:00+00:00: config changed: model.max_model_len"
)
BOTH = ConfigDiff(
    (
        Change("model.max_model_len", KeyClass.RESTART, "256", "200"),
        Change("lora.adapters", KeyClass.LIVE, "a", "a, c"),
    )
)
REFUSED = CommandResult(False, "vLLM refused c: HTTP 500: rank 64 is greater than 16")


def test_a_refused_live_change_fails_the_reload_even_with_a_restart_pending() -> None:
    outcome = reload_outcome(BOTH, [], vllm_running=True, pending=PENDING, live=REFUSED)
    assert not outcome.ok
    assert outcome.message == (
        "the live adapter change failed, the previous adapters keep serving: "
        "vLLM refused c: HTTP 500: rank 64 is greater than 16"
    )
    assert outcome.details["outcome"] == "live_failed"
    assert outcome.details["pending"] == PENDING


def test_a_live_change_made_is_named_beside_a_pending_restart() -> None:
    loaded = CommandResult(True, "loaded c")
    outcome = reload_outcome(BOTH, [], vllm_running=True, pending=PENDING, live=loaded)
    assert outcome.ok and outcome.details["outcome"] == "restart_pending"
    assert outcome.message == f"taken: {PENDING} (loaded c)"


def test_an_unchanged_config_that_brought_adapters_back_says_so() -> None:
    outcome = reload_outcome(
        ConfigDiff(()), [], vllm_running=True, live=CommandResult(True, "loaded a")
    )
    assert outcome.ok
    assert outcome.message == (
        "taken: the config is unchanged; the served adapters made its own again (loaded a)"
    )
