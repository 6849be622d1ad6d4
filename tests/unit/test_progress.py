"""A start's progress in numbers: the summaries of real vLLM lines, the seconds since launch,
the STATUS= text and its rate bound, the bounded records of a weight-shard bar, and the `ready`
record (`supervise.progress`; recorded by `vllm_events`, shown by the watcher)."""

from __future__ import annotations

import signal
from dataclasses import replace
from pathlib import Path

from structlog.testing import capture_logs

from niodoo_supervisor.logs.counters import EventCounters
from niodoo_supervisor.logs.rule_types import Action, Event, Severity
from niodoo_supervisor.logs.rules import RuleSet
from niodoo_supervisor.supervise.event_limit import EventLogLimiter
from niodoo_supervisor.supervise.progress import (
    MAX_BARS,
    StartProgress,
    address,
    serving_sentence,
    summarize,
)
from niodoo_supervisor.supervise.vllm_events import VllmEventLog
from rulesamples import SAMPLES
from supervise_sim import FakeRun, Sim, boots, phase

LOGS = Path(__file__).resolve().parent.parent / "fixtures" / "vllm-logs"


def _phase_events(data: bytes) -> list[Event]:
    scanner = RuleSet().scanner()
    events = scanner.feed(data) + scanner.flush(final=True)
    return [event for event in events if event.action is Action.PHASE]


def _one(line: str) -> Event:
    [event] = _phase_events((line + "\n").encode())
    return event


def _shards(done: int, total: int) -> Event:
    bar = f"\rLoading safetensors checkpoint shards: {100 * done // total:3d}% Completed |"
    return _one(f"{bar} {done}/{total} [00:01<00:01,  1.00it/s]")


def test_a_real_start_is_summarised_with_vllms_numbers_not_its_lines() -> None:
    events = _phase_events((LOGS / "02-enginecore-killed.log").read_bytes())
    assert [summarize(event) for event in events] == [
        "vLLM 0.32.0",
        "initializing the engine",
        "loading weights of models/tiny-qwen2",
        "loading weights: 0/1 shards",
        "loading weights: 1/1 shards",
        "weights loaded in 0.00 s",
        "KV cache 2,097,152 tokens",
        "engine ready in 2.83 s",
        "adapter a loaded",
        "adapter b loaded",
        "HTTP server starting on http://127.0.0.1:8011",
        "HTTP routes set up",
        "HTTP server started",
    ]


def test_gpu_lines_say_how_far_compilation_and_graph_capture_came() -> None:
    samples = {rule: line for line, rule, _ in SAMPLES}
    assert summarize(_one(samples["torch_compiled"])) == "torch.compile took 31.07 s"
    assert summarize(_one(samples["graphs_captured"])) == "CUDA graphs captured in 5 s (0.45 GiB)"
    assert summarize(_one(samples["kv_cache_sized"])) == "KV cache 123,456 tokens"


def test_a_phase_without_a_known_summary_cites_a_short_excerpt() -> None:
    long_line = "Warming up the scheduler " + "x" * 3000
    operator = Event("warmup", Severity.INFO, Action.PHASE, "", long_line, None, None, None,
                     (long_line,), {"phase": "warmup"})  # fmt: skip
    summary = summarize(operator)
    assert summary.startswith("warmup: Warming up the scheduler xx") and summary.endswith("…")
    assert len(summary) < 80
    # a built-in rule whose detail is not what it should be falls back alike
    odd = replace(
        _one(SAMPLES[-1][0]), rule="kv_cache_sized", details={"tokens": "many", "phase": "kv_cache"}
    )
    assert summarize(odd) == "kv_cache: Application startup complete."


def test_a_long_model_path_keeps_its_end() -> None:
    path = "/srv/" + "deep/" * 40 + "Qwen2.5-7B-Instruct-AWQ"
    summary = summarize(_one(f"(Worker pid=1) INFO 11-24 00:00:00 [x.py:1] Starting to load model {path}..."))  # fmt: skip
    assert summary.endswith("deep/Qwen2.5-7B-Instruct-AWQ") and len(summary) < 90


def test_records_count_seconds_since_launch() -> None:
    progress = StartProgress()
    progress.launched(100.0)
    step = progress.step(_one(SAMPLES[-1][0]), 147.53)
    assert step is not None
    assert (step.phase, step.elapsed_s, step.summary) == (
        "startup_complete",
        47.5,
        "HTTP server started",
    )
    progress.launched(200.0)  # the next start counts from its own launch
    later = progress.step(_one(SAMPLES[-1][0]), 203.0)
    assert later is not None and later.elapsed_s == 3.0


def test_a_shard_bar_gives_a_record_only_at_each_quarter() -> None:
    progress = StartProgress()
    logged = [done for done in range(101) if progress.step(_shards(done, 100), 1.0)]
    assert logged == [25, 50, 75]
    assert progress.latest == "loading weights: 100/100 shards"  # STATUS= saw them all
    # A small model: its start and end are the loading and loaded records.
    small = StartProgress()
    assert [small.step(_shards(done, 1), 1.0) for done in (0, 1)] == [None, None]
    # A second bar (another loader) counts its quarters again.
    assert [done for done in range(5) if progress.step(_shards(done, 4), 2.0)] == [1, 2, 3]


def test_interleaved_shard_bars_of_several_workers_give_a_record_per_quarter_each() -> None:
    # Two workers load their shards at once, one a shard behind: the count goes down on every
    # other line, which is no new bar.
    for pids in ((11, 12), (None, None)):  # 0.31+ writes tqdm's bar without the pid prefix
        progress = StartProgress()
        lines = [
            replace(_shards(done, 100), pid=pid)
            for k in range(1, 101)
            for pid, done in zip(pids, (k, k - 1), strict=True)
        ]
        logged = [event for event in lines if progress.step(event, 1.0)]
        assert 3 <= len(logged) <= 6, [(event.pid, event.details["done"]) for event in logged]


def test_the_bars_followed_at_once_are_bounded() -> None:
    progress = StartProgress()
    line = _shards(1, 4)
    for pid in range(10_000):  # forged lines, each naming another worker
        progress.step(replace(line, pid=pid), 1.0)
    assert len(progress._bars) == MAX_BARS


def test_a_phase_after_ready_is_an_ordinary_event_not_a_step_of_the_start() -> None:
    events = VllmEventLog(EventCounters())
    events.progress.launched(0.0)
    loaded = _one(next(line for line, rule, _ in SAMPLES if rule == "lora_loaded"))
    with capture_logs() as logs:
        events.record(loaded, 30.0)
        events.progress.finished()  # READY
        events.record(replace(loaded, details={**loaded.details, "adapter": "late"}), 3600.2)
    assert [r["event"] for r in logs] == ["progress", "vllm_event"]
    runtime = logs[1]
    assert (runtime["log_level"], runtime["rule"], runtime["details"]["adapter"]) == (
        "info",
        "lora_loaded",
        "late",
    )
    assert "elapsed_s" not in runtime
    assert events.progress.latest == "adapter a loaded"  # the start's last news stands
    events.progress.launched(4000.0)  # the next start has steps again
    with capture_logs() as logs:
        events.record(loaded, 4001.0)
    assert [(r["event"], r["elapsed_s"]) for r in logs] == [("progress", 1.0)]


def test_an_adapter_loaded_after_ready_gives_no_progress_record(tmp_path: Path) -> None:
    def load_late(run: FakeRun) -> None:
        line = "Loaded new LoRA adapter: name 'late', path '/srv/late'"
        sim.after(3595, lambda: run.say(line, phase("lora_loaded", line, adapter="late")))

    sim = Sim(tmp_path, scripts=[boots(5.0, then=load_late)])
    sim.at(3700, sim.signal(signal.SIGTERM))
    assert sim.play() == 0
    names = [r["event"] for r in sim.logs]
    assert "progress" not in names[names.index("ready") :]
    [late] = [r for r in sim.logs if r.get("rule") == "lora_loaded"]
    assert (late["event"], late["log_level"], late["details"]["adapter"]) == (
        "vllm_event",
        "info",
        "late",
    )


def test_status_text_counts_seconds_and_is_rate_bounded() -> None:
    progress = StartProgress(status_every=1.0)
    progress.launched(10.0)
    assert progress.status_due(11.0) is None  # no phase yet: the launch's status stands
    kv = next(line for line, rule, _ in SAMPLES if rule == "kv_cache_sized")
    progress.step(_one(kv), 59.2)
    assert progress.status_due(59.2) == "starting vLLM: KV cache 123,456 tokens (49 s)"
    # A flood of phase lines within the second: no STATUS= at all...
    sent = []
    for k in range(1000):
        progress.step(_shards(k % 40, 40), 59.3 + k / 2000)
        sent.append(progress.status_due(59.3 + k / 2000))
    assert [text for text in sent if text] == []
    # ...then the newest, once a second has passed, and not again while nothing changed.
    assert progress.status_due(60.3) == "starting vLLM: loading weights: 39/40 shards (50 s)"
    assert progress.status_due(61.0) is None
    assert progress.status_due(61.4) == "starting vLLM: loading weights: 39/40 shards (51 s)"


def test_phase_events_are_progress_records_without_the_line() -> None:
    counters = EventCounters()
    events = VllmEventLog(counters)
    events.progress.launched(0.0)
    init = next(line for line, rule, _ in SAMPLES if rule == "engine_init") + " x" * 2000
    with capture_logs() as logs:
        events.record(_one(init), 30.0)
        for done in range(5):
            events.record(_shards(done, 4), 31.0)
        events.record(_one(SAMPLES[-1][0]), 32.0)
    assert [r["event"] for r in logs] == ["progress"] * 5
    first = logs[0]
    assert first == {
        "event": "progress",
        "log_level": "info",
        "phase": "engine_init",
        "elapsed_s": 30.0,
        "summary": "initializing the engine",
        "rule": "engine_init",
        "vllm_pid": 7,
    }
    assert [r["summary"] for r in logs[1:4]] == [
        f"loading weights: {k}/4 shards" for k in (1, 2, 3)
    ]
    assert counters.rules["weight_shards"] == 5  # every line still counted


def test_forged_phase_lines_stay_within_the_rule_limit() -> None:
    # A client can make vLLM print a line that starts like a phase (a newline in a request
    # id): the per-rule limit bounds those records as it bounds every vllm_event.
    events = VllmEventLog(EventCounters(), EventLogLimiter(per_window=3, window=60.0))
    listening = next(line for line, rule, _ in SAMPLES if rule == "listening")
    with capture_logs() as logs:
        for k in range(100):
            events.record(_one(listening), float(k) / 10)
    assert [r["event"] for r in logs] == ["progress"] * 3


def test_the_serving_sentence_names_model_adapters_and_address() -> None:
    assert address("127.0.0.1", 8000) == "127.0.0.1:8000"
    assert address("::1", 8000) == "[::1]:8000"
    assert serving_sentence("tiny", ["alpha", "beta"], "127.0.0.1:8000") == (
        "serving tiny with adapters alpha, beta on 127.0.0.1:8000"
    )
    assert serving_sentence("tiny", ["alpha"], "h:1") == "serving tiny with adapter alpha on h:1"
    assert serving_sentence("tiny", [], "h:1") == "serving tiny with no adapters on h:1"
    many = serving_sentence("tiny", [f"a{k}" for k in range(20)], "h:1")
    assert many == "serving tiny with adapters a0, a1, a2, a3, a4, a5, a6, a7 and 12 more on h:1"


def test_ready_is_a_record_naming_what_is_served_after_its_state_change(tmp_path: Path) -> None:
    sim = Sim(tmp_path, scripts=[boots(5.0)])
    sim.at(20, sim.signal(signal.SIGTERM))
    assert sim.play() == 0
    names = [r["event"] for r in sim.logs]
    start = names.index("state_changed")
    ready_at = names.index("ready")
    assert names[start:ready_at + 1] == [
        "state_changed", "progress", "state_changed", "ready",
    ]  # fmt: skip
    ready = sim.logs[ready_at]
    assert ready["summary"] == "serving tiny with adapters a, b on 127.0.0.1:8000 after 5.0 s"
    assert (ready["model"], ready["adapters"], ready["address"], ready["elapsed_s"]) == (
        "tiny",
        ["a", "b"],
        "127.0.0.1:8000",
        5.0,
    )
    assert sim.logs[ready_at - 1]["new"] == "READY"
