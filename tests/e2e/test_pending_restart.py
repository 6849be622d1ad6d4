"""A change that needs a restart, outside the maintenance window, against the real vLLM: the
same vLLM keeps serving, and the status says what is pending and when."""

from __future__ import annotations

import signal
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import yaml

from harness import NotifySocket, start_supervisor, stop_supervisor, wait_for
from niodoo_supervisor.demo.model import DemoModel
from realvllm import port_of, write_demo_config

START_TIMEOUT = 300  # a cold CPU start of vLLM is ~30-40 s here; a loaded CI machine is slower


def test_a_change_outside_the_window_stays_pending_while_the_old_vllm_serves(
    e2e_tmp: Path, vllm_python: str, demo_model: DemoModel
) -> None:
    tmp = e2e_tmp / "pending-restart"
    tmp.mkdir()
    config = write_demo_config(tmp, vllm_python, demo_model)
    # A daily hour that opens about 12 hours from now: closed for the whole test.
    opening = (datetime.now(timezone.utc) + timedelta(hours=12)).replace(second=0, microsecond=0)
    window = {"start": f"{opening:%H:%M}", "end": f"{opening + timedelta(hours=1):%H:%M}", "tz": "UTC"}  # fmt: skip
    document = yaml.safe_load(config.read_text())
    document["maintenance"] = {"windows": [window]}
    config.write_text(yaml.safe_dump(document))
    notify = NotifySocket(tmp / "notify.sock")
    run = start_supervisor(config, tmp / "state", notify, tmp)
    try:
        run.wait_state("READY", START_TIMEOUT)
        pid = run.status()["vllm_pid"]
        document["model"]["max_model_len"] = 200  # on vLLM's command line: needs a restart
        config.write_text(yaml.safe_dump(document))
        run.signal(signal.SIGHUP)

        pending = wait_for(
            lambda: run.status().get("pending_restart"), 60, "pending_restart in status.json"
        )
        assert pending is not None
        assert pending["reason"] == "config changed: model.max_model_len"
        assert pending["changes"] == ["model.max_model_len: 256 -> 200"]
        assert pending["at"] == opening.isoformat()
        assert pending["at_epoch"] == opening.timestamp()
        assert pending["window"] == f"daily {window['start']}-{window['end']} UTC"
        assert run.event("restart_pending") is not None
        assert any(text.startswith("serving; restart pending at ") for text in notify.statuses())

        # The old vLLM still serves, and is the same process.
        body = {"model": "alpha", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
        url = f"http://127.0.0.1:{port_of(config)}/v1/chat/completions"
        answer = httpx.post(url, json=body, timeout=60, trust_env=False)
        assert answer.status_code == 200, answer.text
        status = run.status()
        assert status["vllm_pid"] == pid and status["state"] == "READY"
        assert run.states() == ["STARTING", "READY"]  # no STOPPING: nothing restarted

        # What the operator sees: `status` from the daemon over its socket, and the metrics.
        shown = run.cli("status")
        assert shown.returncode == 0, shown.stderr
        assert "daemon not answering" not in shown.stdout
        assert f"pending:   restart at {opening.isoformat()} ({pending['window']})" in shown.stdout
        assert "windows:   closed now; next opening " + opening.isoformat() in shown.stdout
        metrics = run.metrics()
        assert metrics["niodoo_supervisor_restart_pending"] == 1
        assert metrics['niodoo_supervisor_state{state="READY"}'] == 1
        wait = metrics["niodoo_supervisor_next_maintenance_window_seconds"]
        assert 11 * 3600 < wait <= 12 * 3600, wait

        run.signal(signal.SIGTERM)
        assert run.wait_exit(60) == 0
    finally:
        stop_supervisor(run)
        notify.close()
