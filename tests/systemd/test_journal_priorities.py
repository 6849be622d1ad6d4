"""What `journalctl -p warning` shows for the service under a real journald: the trouble and
nothing else. A start, a served request, a client's `lora_name` mistake and a requested stop
put exactly one record at warning or above (the mistake); vLLM's own lines are in the journal
verbatim, at info."""

from __future__ import annotations

import json

from harness import wait_for
from installed_service import API_KEY, PORT, UNIT
from nspawn import Container

LORA_NAME_REQUEST = f"""
import json, urllib.request
body = {{"model": "tiny", "lora_name": "alpha", "max_tokens": 4,
        "messages": [{{"role": "user", "content": "hi"}}]}}
request = urllib.request.Request(
    "http://127.0.0.1:{PORT}/v1/chat/completions",
    data=json.dumps(body).encode(),
    headers={{"Authorization": "Bearer {API_KEY}", "Content-Type": "application/json"}},
)
with urllib.request.urlopen(request, timeout=10) as answer:
    print(answer.status)
"""


def invocation_journal(container: Container, invocation: str, *options: str) -> str:
    """This start's own output (not systemd's lines about the unit), after journald has
    written everything it received."""
    container.run("journalctl", "--sync", check=False)
    return container.run(
        "journalctl", "--no-pager", f"_SYSTEMD_INVOCATION_ID={invocation}", *options, check=False
    ).stdout


def test_journal_priority_warning_lists_only_the_trouble(service: Container) -> None:
    service.run("systemctl", "start", UNIT, timeout=90)
    invocation = service.show(UNIT, "InvocationID")["InvocationID"]
    assert service.run("python3", "-c", LORA_NAME_REQUEST).stdout.strip() == "200"
    wait_for(
        lambda: "ignored_request_fields" in invocation_journal(service, invocation, "-o", "cat"),
        30,
        "the ignored-fields event in the journal",
    )
    service.run("systemctl", "stop", UNIT, timeout=90)
    assert service.show(UNIT, "ActiveState")["ActiveState"] == "inactive"

    trouble = invocation_journal(service, invocation, "-p", "warning", "-o", "cat").splitlines()
    assert len(trouble) == 1, "\n".join(trouble)
    assert "rule=ignored_request_fields" in trouble[0], trouble[0]
    assert "lora_name" in trouble[0], trouble[0]

    entries = [
        json.loads(line)
        for line in invocation_journal(service, invocation, "-o", "json").splitlines()
        if line.strip()
    ]
    by_priority: dict[str, list[str]] = {}
    for entry in entries:
        message = entry.get("MESSAGE")
        if isinstance(message, str):
            by_priority.setdefault(entry.get("PRIORITY", ""), []).append(message)
    info = by_priority.get("6", [])
    # vLLM's own line, verbatim and at info: the record above is the supervisor's reading of it.
    assert any(
        line.startswith("(APIServer") and "were present in the request but ignored" in line
        for line in info
    ), info[-20:]
    # The start and the requested stop are there, at info.
    assert any("event=state_changed" in line and "new=READY" in line for line in info), info
    assert any("event=state_changed" in line and "new=STOPPED" in line for line in info), info
    print(f"journal entries by priority: { {p: len(m) for p, m in sorted(by_priority.items())} }")
