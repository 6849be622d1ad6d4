"""vLLM's runtime LoRA routes, as a client: load, unload, and what `/v1/models` lists.

The routes exist only when vLLM was started with `VLLM_ALLOW_RUNTIME_LORA_UPDATING=1`
(`lora.runtime_updates`). Load: `POST /v1/load_lora_adapter {"lora_name", "lora_path"}` answers
200 with a text; 400 for a name already loaded (or the base model's, or missing fields), 404 for
a path vLLM cannot find, 500 (0.18+; 400 before) for a load error such as a rank above
--max-lora-rank. Unload: `POST /v1/unload_lora_adapter {"lora_name"}`, 404 for an unknown name.
Errors come as `{"error": {"message", "type", "code"}}` (older versions: `message` at the top
level): `AdapterApiError` carries vLLM's own message, which is what an operator needs to read.
"""

from __future__ import annotations

import json

import httpx

from niodoo_supervisor.supervise.probes import vllm_client

__all__ = ["AdapterApi", "AdapterApiError", "error_reason"]

# A load reads the adapter's weights from disk (seconds for a large rank on a slow disk); a stop
# cuts the wait short (`live_adapters`), so a generous limit costs nothing.
LOAD_TIMEOUT = 60.0
_ROUTE_MISSING = (
    "vLLM has no runtime LoRA routes: it was started without VLLM_ALLOW_RUNTIME_LORA_UPDATING "
    "(lora.runtime_updates takes effect at vLLM's next start)"
)


class AdapterApiError(Exception):
    """vLLM refused or did not answer; `str()` is its reason, `status` its HTTP status (None:
    no answer)."""

    def __init__(self, reason: str, status: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status

    @property
    def not_found(self) -> bool:
        return self.status == 404


class AdapterApi:
    """One vLLM's adapter routes. `transport` is a test seam (httpx.MockTransport)."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None,
        timeout: float = LOAD_TIMEOUT,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.secrets = (api_key,) if api_key else ()
        self.client = vllm_client(base_url, api_key, timeout, transport)

    async def aclose(self) -> None:
        await self.client.aclose()

    async def load(self, name: str, path: str) -> None:
        await self._post("/v1/load_lora_adapter", {"lora_name": name, "lora_path": path})

    async def unload(self, name: str) -> None:
        await self._post("/v1/unload_lora_adapter", {"lora_name": name})

    async def listed(self) -> dict[str, str | None]:
        """Every model /v1/models lists, with its `parent` (None for the base model)."""
        response = await self._send("GET", "/v1/models", None)
        if response.status_code != 200:
            raise AdapterApiError(_reason(response), response.status_code)
        try:
            payload = response.json()
        except ValueError:
            raise AdapterApiError("/v1/models did not answer JSON", 200) from None
        data = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(data, list):
            raise AdapterApiError("/v1/models did not answer a model list", 200)
        return {
            str(item.get("id")): _parent(item.get("parent"))
            for item in data
            if isinstance(item, dict)
        }

    async def _post(self, path: str, body: dict[str, str]) -> None:
        response = await self._send("POST", path, body)
        if response.status_code == 200:
            return
        if response.status_code in (404, 405) and _is_missing_route(response):
            raise AdapterApiError(_ROUTE_MISSING, response.status_code)
        raise AdapterApiError(_reason(response), response.status_code)

    async def _send(self, method: str, path: str, body: dict[str, str] | None) -> httpx.Response:
        try:
            return await self.client.request(method, path, json=body)
        except httpx.TimeoutException:
            timeout = self.client.timeout.read
            raise AdapterApiError(f"{path}: no answer within {timeout:g}s") from None
        except httpx.HTTPError as exc:
            text = (str(exc) or type(exc).__name__).splitlines()[0]
            for secret in self.secrets:
                text = text.replace(secret, "<redacted>")
            raise AdapterApiError(f"{path}: {text}") from None


def _parent(value: object) -> str | None:
    return None if value is None else str(value)


def _is_missing_route(response: httpx.Response) -> bool:
    """FastAPI's own 404 for a route it does not have: `{"detail": "Not Found"}`."""
    try:
        payload = response.json()
    except ValueError:
        return False
    return isinstance(payload, dict) and payload.get("detail") in (
        "Not Found",
        "Method Not Allowed",
    )


def _reason(response: httpx.Response) -> str:
    return error_reason(response.status_code, response.content)


def error_reason(status: int, body: bytes) -> str:
    """vLLM's own message from an error answer (`status`, `body`), else the start of its body."""
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        payload = None
    if isinstance(payload, dict):
        error = payload.get("error")
        message = error.get("message") if isinstance(error, dict) else payload.get("message")
        if isinstance(message, str) and message:
            return f"HTTP {status}: {message}"
    text = body.decode("utf-8", "replace").strip()
    return f"HTTP {status}: {text.splitlines()[0][:300] if text else 'no body'}"
