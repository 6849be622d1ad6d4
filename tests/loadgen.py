"""A steady stream of completions against vLLM, and what became of each one.

A few client threads each send one request after another, streamed and not in turn. Every
request ends as one of:

- completed: HTTP 200 and the whole answer: `max_tokens` tokens (`finish_reason` "length";
  a stream up to `data: [DONE]`);
- refused: no HTTP 200 (connection refused, reset before an answer, an HTTP error status):
  the request was turned away, not cut;
- failed mid-flight: HTTP 200 came back, then the answer was cut (a stream ending before
  `[DONE]` or carrying an error event, a connection reset, a body that is not a whole answer,
  `finish_reason` "abort": vLLM's abort of running requests on SIGTERM without a drain).

Times are wall-clock (`time.time()`), comparable with the supervisor's status.json.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx

__all__ = ["Load", "Outcome", "Request", "summary_table"]

_REFUSED_PAUSE = 0.25  # after a refusal, so a down server is not hammered in a busy loop


class Outcome:
    COMPLETED = "completed"
    REFUSED = "refused"
    FAILED = "failed mid-flight"


@dataclass
class Request:
    streamed: bool
    sent: float
    accepted: float | None = None  # when HTTP 200 came back
    ended: float = 0.0
    outcome: str = ""
    detail: str = ""  # why refused or cut

    @property
    def took(self) -> float:
        return self.ended - self.sent


@dataclass
class Load:
    """`clients` threads sending completions of `max_tokens` tokens to `base_url`."""

    base_url: str
    clients: int = 3
    max_tokens: int = 200
    timeout: float = 120.0
    requests: list[Request] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        for index in range(self.clients):
            thread = threading.Thread(target=self._client, args=(index,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def stop(self) -> None:
        """No new requests; waits for those in flight (each ends by its timeout)."""
        self._stop.set()
        for thread in self._threads:
            thread.join(self.timeout + 10)
        assert not any(thread.is_alive() for thread in self._threads)

    def done(self) -> list[Request]:
        with self._lock:
            return list(self.requests)

    def _client(self, index: int) -> None:
        streamed = index % 2 == 0
        with httpx.Client(base_url=self.base_url, timeout=self.timeout, trust_env=False) as http:
            while not self._stop.is_set():
                request = Request(streamed, time.time())
                if streamed:
                    self._streamed(http, request)
                else:
                    self._whole(http, request)
                request.ended = time.time()
                with self._lock:
                    self.requests.append(request)
                if request.outcome == Outcome.REFUSED:
                    self._stop.wait(_REFUSED_PAUSE)
                streamed = not streamed

    def _body(self, streamed: bool) -> dict[str, object]:
        return {
            "model": "tiny",
            "prompt": "Once upon a time",
            "max_tokens": self.max_tokens,
            "min_tokens": self.max_tokens,  # every request does the same work
            "ignore_eos": True,
            "temperature": 0,
            "stream": streamed,
        }

    def _whole(self, http: httpx.Client, request: Request) -> None:
        try:
            response = http.post("/v1/completions", json=self._body(False))
        except httpx.HTTPError as exc:
            _refused(request, exc)
            return
        if response.status_code != 200:
            request.outcome, request.detail = Outcome.REFUSED, f"HTTP {response.status_code}"
            return
        request.accepted = time.time()
        try:
            finish = response.json()["choices"][0]["finish_reason"]
        except (ValueError, KeyError, IndexError, TypeError):
            request.outcome, request.detail = Outcome.FAILED, "incomplete body"
            return
        _finished(request, finish)

    def _streamed(self, http: httpx.Client, request: Request) -> None:
        try:
            with http.stream("POST", "/v1/completions", json=self._body(True)) as response:
                if response.status_code != 200:
                    response.read()
                    request.outcome = Outcome.REFUSED
                    request.detail = f"HTTP {response.status_code}"
                    return
                request.accepted = time.time()
                self._read_stream(response, request)
        except httpx.HTTPError as exc:
            if request.accepted is None:
                _refused(request, exc)
            else:
                request.outcome, request.detail = Outcome.FAILED, _error_name(exc)

    def _read_stream(self, response: httpx.Response, request: Request) -> None:
        finish = None
        for line in response.iter_lines():
            if line == "data: [DONE]":
                _finished(request, finish)
                return
            if not line.startswith("data: "):
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                request.outcome, request.detail = Outcome.FAILED, "error event in the stream"
                return
            finish = chunk["choices"][0].get("finish_reason") or finish
        request.outcome, request.detail = Outcome.FAILED, "stream ended before [DONE]"


def _finished(request: Request, finish: object) -> None:
    """A whole answer ends for its length (min_tokens = max_tokens, EOS ignored); vLLM ends
    an aborted one with finish_reason "abort": cut, though well-formed."""
    if finish == "length":
        request.outcome = Outcome.COMPLETED
    else:
        request.outcome, request.detail = Outcome.FAILED, f"finish_reason {finish}"


def _refused(request: Request, exc: httpx.HTTPError) -> None:
    request.outcome, request.detail = Outcome.REFUSED, _error_name(exc)


def _error_name(exc: httpx.HTTPError) -> str:
    names = {
        httpx.ConnectError: "connection refused",
        httpx.RemoteProtocolError: "connection closed",
        httpx.ReadError: "connection reset",
        httpx.TimeoutException: "timed out",
    }
    for kind, name in names.items():
        if isinstance(exc, kind):
            return name
    return type(exc).__name__


def summary_table(columns: dict[str, dict[str, object]]) -> str:
    """Rows of figures side by side, one column per run."""
    rows: list[str] = []
    for figures in columns.values():
        rows += [row for row in figures if row not in rows]
    width = max(len(row) for row in rows) + 2
    cells = [max(len(name), 12) + 2 for name in columns]
    lines = [
        "".ljust(width)
        + "".join(name.rjust(cell) for name, cell in zip(columns, cells, strict=True))
    ]
    for row in rows:
        values = [str(figures.get(row, "-")) for figures in columns.values()]
        lines.append(
            row.ljust(width) + "".join(v.rjust(c) for v, c in zip(values, cells, strict=True))
        )
    return "\n".join(lines)


def tally(requests: list[Request]) -> Counter[str]:
    """How many ended each way, and the refusals and failures by their detail."""
    counts: Counter[str] = Counter()
    for request in requests:
        counts[request.outcome] += 1
        if request.detail:
            counts[f"  {request.outcome}: {request.detail}"] += 1
    return counts
