"""vLLM's runtime LoRA routes and /v1/models for tests, as an httpx.MockTransport handler that
answers as vLLM 0.32 does (bodies copied from its source), and PEFT adapter folders."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from niodoo_supervisor.supervise.adapter_api import AdapterApi

Handler = Callable[[httpx.Request], httpx.Response]


def vllm_error(status: int, message: str, kind: str = "InvalidUserInput") -> httpx.Response:
    return httpx.Response(
        status, json={"error": {"message": message, "type": kind, "param": None, "code": status}}
    )


class FakeVllm:
    """vLLM's adapter routes and /v1/models; `fail[name or path]` answers such a load instead."""

    def __init__(self, served: str = "tiny", loaded: dict[str, str] | None = None) -> None:
        self.served = served
        self.loaded = dict(loaded or {})
        self.fail: dict[str, Handler] = {}
        self.calls: list[tuple[str, str]] = []
        self.models_override: Handler | None = None

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            if self.models_override is not None:
                return self.models_override(request)
            data = [{"id": self.served, "parent": None}] + [
                {"id": name, "root": path, "parent": self.served}
                for name, path in self.loaded.items()
            ]
            return httpx.Response(200, json={"object": "list", "data": data})
        body = json.loads(request.content)
        name = body["lora_name"]
        if request.url.path == "/v1/load_lora_adapter":
            self.calls.append(("load", name))
            failure = self.fail.get(name) or self.fail.get(body["lora_path"])
            if failure is not None:
                return failure(request)
            if name in self.loaded:
                return vllm_error(
                    400,
                    f"The lora adapter '{name}' has already been loaded. If you want to load "
                    "the adapter in place, set 'load_inplace' to True.",
                )
            self.loaded[name] = body["lora_path"]
            return httpx.Response(200, text=f"Success: LoRA adapter '{name}' added successfully.")
        if request.url.path == "/v1/unload_lora_adapter":
            self.calls.append(("unload", name))
            if name not in self.loaded:
                return vllm_error(
                    404, f"The lora adapter '{name}' cannot be found.", "NotFoundError"
                )
            del self.loaded[name]
            return httpx.Response(200, text=f"Success: LoRA adapter '{name}' removed successfully.")
        return httpx.Response(404, json={"detail": "Not Found"})


def adapter_api(vllm: Handler, timeout: float = 60.0) -> AdapterApi:
    return AdapterApi(
        "http://vllm", api_key=None, timeout=timeout, transport=httpx.MockTransport(vllm)
    )


def adapter_folder(folder: Path, rank: int = 8, base: str | None = "tiny") -> str:
    folder.mkdir(parents=True)
    config: dict[str, Any] = {"peft_type": "LORA", "r": rank}
    if base:
        config["base_model_name_or_path"] = base
    (folder / "adapter_config.json").write_text(json.dumps(config))
    (folder / "adapter_model.safetensors").write_bytes(b"")
    return str(folder)
