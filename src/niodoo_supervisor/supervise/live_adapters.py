"""Adapters changed in the running vLLM (`lora.runtime_updates`), by a reload or by the
operator's `adapters load|unload`, without a restart.

Every load is preflighted first (files, rank against the running vLLM's --max-lora-rank, base
model: as at start), then asked of vLLM, then verified in /v1/models (listed with `parent` = the
served name; an unloaded one no longer listed). A change is all or nothing: when one step fails,
what this change did is undone in reverse and the previous set keeps serving; the answer and the
`adapter_load_failed` event carry vLLM's own reason.

Order within a change: new names first, then changed paths (unload, load), removals last, so a
failed load never costs an adapter that was meant to stay.

An adapter loaded by `adapters load` that `lora.adapters` does not list is "live only": the
status says so, a reload keeps it (and says `live_adapter_kept`: reloading the YAML is no
request to drop what the operator just loaded), and a restart, which starts vLLM with the YAML's
adapters, drops it (`live_adapter_dropped`). An adapter of the YAML that `adapters unload` took
out is loaded again by the next reload or restart: the unload's answer says so.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

import structlog

from niodoo_supervisor.config.engine_sections import Adapter
from niodoo_supervisor.config.loader import Config
from niodoo_supervisor.control.api import CommandResult
from niodoo_supervisor.launch.plan import LaunchPlan
from niodoo_supervisor.supervise.adapter_api import AdapterApi, AdapterApiError
from niodoo_supervisor.supervise.adapter_effects import AdapterEffects
from niodoo_supervisor.supervise.incidents import AdapterLoadAsked, AdapterUnloadAsked, Reply
from niodoo_supervisor.supervise.live_preflight import LivePreflight, update_guard
from niodoo_supervisor.supervise.probes import vllm_url
from niodoo_supervisor.supervise.states import State
from niodoo_supervisor.supervise.status_file import StatusBoard

__all__ = [
    "AdapterChange",
    "ExpectsAdapters",
    "LiveAdapters",
    "adapter_api_for",
    "adapter_change",
    "answer",
    "answer_without_vllm",
]

log = structlog.get_logger("niodoo_supervisor")

T = TypeVar("T")

_KEY = "lora.runtime_updates"
_DISABLED = f"{_KEY} is false: set it to true (vLLM restarts once) to change adapters live"


@dataclass(frozen=True)
class AdapterChange:
    """From one served set to another (name -> path)."""

    load: dict[str, str] = field(default_factory=dict)  # names not served before
    replace: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (old, new) path
    unload: dict[str, str] = field(default_factory=dict)  # served names to drop

    @property
    def empty(self) -> bool:
        return not (self.load or self.replace or self.unload)


def adapter_change(serving: Mapping[str, str], target: Mapping[str, str]) -> AdapterChange:
    return AdapterChange(
        load={name: path for name, path in target.items() if name not in serving},
        replace={
            name: (serving[name], path)
            for name, path in target.items()
            if name in serving and serving[name] != path
        },
        unload={name: path for name, path in serving.items() if name not in target},
    )


def adapter_api_for(config: Config, api_key: str | None) -> AdapterApi:
    """The adapter routes of the vLLM a config describes (probed where the prober probes)."""
    return AdapterApi(vllm_url(config), api_key=api_key)


def answer(reply: Reply | None, result: CommandResult) -> None:
    if reply is not None and not reply.done():
        reply.set_result(result)


def answer_without_vllm(incident: AdapterLoadAsked | AdapterUnloadAsked, config: Config) -> None:
    """An adapter command while no vLLM runs (backoff, stopping, stopped): refused."""
    why = _DISABLED if not config.lora.runtime_updates else "vLLM is not running"
    answer(incident.reply, CommandResult(False, why, {"key": _KEY} if "false" in why else {}))


class ExpectsAdapters(Protocol):
    """The part of the prober a change tells what /v1/models must list from now on."""

    def expect_adapters(self, names: Sequence[str]) -> None: ...


class _StepFailed(Exception):
    def __init__(self, event: str, name: str, path: str | None, reason: str) -> None:
        super().__init__(reason)
        self.event, self.name, self.path, self.reason = event, name, path, reason


class LiveAdapters:
    """The adapters one run of vLLM serves, and the changes made to them while it runs."""

    def __init__(
        self,
        config: Config,
        plan: LaunchPlan,
        status: StatusBoard,
        api: AdapterApi,
        stop_asked: asyncio.Event,
        *,
        write_status: Callable[[], None] = lambda: None,
        effects: AdapterEffects | None = None,
        on_served: Callable[[Sequence[str]], None] = lambda adapters: None,
    ) -> None:
        self.enabled = config.lora.runtime_updates
        self.served_name = config.served_name
        self.preflight = LivePreflight(config, plan)
        # vLLM serves more (its CPU cache evicts the least recently used): a warning, as in
        # the config's own check.
        self.max_cpu_loras = config.lora.max_cpu_loras or config.lora.max_loras or 1
        self.yaml: dict[str, Adapter] = {adapter.name: adapter for adapter in config.adapters}
        self.serving = {name: adapter.path for name, adapter in self.yaml.items()}
        self.status = status
        self.write_status = write_status  # status.json: the adapters changed
        self.api = api
        self.stop_asked = stop_asked
        self.lora_guard = plan.lora_guard  # route mode follows the adapters served
        self.effects = effects  # lora.verify: each adapter loaded must change the output
        self.on_served = on_served  # the log's hints name the adapters served
        self._publish()

    @property
    def live_only(self) -> list[str]:
        return [
            name
            for name, path in self.serving.items()
            if name not in self.yaml or self.yaml[name].path != path
        ]

    async def aclose(self) -> None:
        """The run ended: what was live only is not started again."""
        if self.live_only:
            log.warning(
                "live_adapter_dropped",
                adapters=self.live_only,
                reason="loaded live and not in lora.adapters: vLLM's next start has only the "
                "YAML's adapters; add them there to keep them",
            )
        await self.api.aclose()

    # --- the operator's commands --------------------------------------------------------------

    async def command(
        self, incident: AdapterLoadAsked | AdapterUnloadAsked, state: State, prober: ExpectsAdapters
    ) -> None:
        if not self.enabled:
            result = CommandResult(False, _DISABLED, {"key": _KEY})
        elif state is State.STARTING:
            result = CommandResult(False, "vLLM is still starting: try again once it is ready")
        elif isinstance(incident, AdapterLoadAsked):
            result = await self._load_command(incident.name, incident.path)
        else:
            result = await self._unload_command(incident.name)
        prober.expect_adapters(list(self.serving))
        answer(incident.reply, result)

    async def _load_command(self, name: str, path: str) -> CommandResult:
        if name == self.served_name:
            return CommandResult(False, f"{name!r} is the served model's name: name it otherwise")
        if name in self.serving:
            return CommandResult(
                False,
                f"adapter {name!r} is already loaded from {self.serving[name]}: unload it first",
            )
        if not Path(path).is_absolute():
            return CommandResult(False, f"{path}: give the adapter folder's absolute path")
        result = await self.apply(AdapterChange(load={name: path}))
        if not result.ok:
            return result
        in_yaml = name in self.yaml and self.yaml[name].path == path
        note = (
            "as lora.adapters lists it"
            if in_yaml
            else "not written to the YAML: live only, a restart drops it (add it to "
            "lora.adapters to keep it)"
        )
        return CommandResult(True, f"loaded adapter {name!r} from {path}; {note}", result.details)

    async def _unload_command(self, name: str) -> CommandResult:
        if name not in self.serving:
            loaded = ", ".join(self.serving) or "none"
            return CommandResult(False, f"adapter {name!r} is not loaded (loaded: {loaded})")
        result = await self.apply(AdapterChange(unload={name: self.serving[name]}))
        if not result.ok:
            return result
        note = (
            "; still in lora.adapters: the next reload or restart loads it again"
            if name in self.yaml
            else ""
        )
        return CommandResult(True, f"unloaded adapter {name!r}{note}", result.details)

    # --- reloads ------------------------------------------------------------------------------

    async def reloaded(
        self, adapters: Sequence[Adapter], prober: ExpectsAdapters
    ) -> CommandResult | None:
        """A reload kept this vLLM: serve the YAML's adapters, and keep what is live only."""
        if not self.enabled:
            return None  # an adapter change restarts vLLM then (reload_diff)
        live_only = self.live_only  # against the YAML vLLM was serving until now
        previous, self.yaml = self.yaml, {adapter.name: adapter for adapter in adapters}
        kept = [name for name in live_only if name not in self.yaml]
        target = {name: adapter.path for name, adapter in self.yaml.items()}
        target.update({name: self.serving[name] for name in kept})
        if kept:
            log.warning(
                "live_adapter_kept",
                adapters=kept,
                reason="loaded by `adapters load` and not in lora.adapters: the reload keeps "
                "them, a restart drops them; add them to the YAML or unload them",
            )
        change = adapter_change(self.serving, target)
        result = await self.apply(change) if not change.empty else None
        if result is not None and not result.ok:
            self.yaml = previous  # the reload is refused: the running config stays
        prober.expect_adapters(list(self.serving))
        self._publish()
        return result

    # --- one change ---------------------------------------------------------------------------

    async def apply(self, change: AdapterChange) -> CommandResult:
        loads = {**change.load, **{name: new for name, (_, new) in change.replace.items()}}
        warnings: list[str] = []
        for name, path in loads.items():
            yaml_base = self.yaml[name].base_model_name if name in self.yaml else None
            refused = self.preflight.check(name, path, yaml_base, warnings)
            if refused is not None:
                log.error("adapter_load_failed", adapter=name, path=path, reason=refused)
                return self._failed(f"adapter {name!r} refused before loading: {refused}")
        count = len(set(self.serving) | set(loads)) - len(change.unload)
        if count > self.max_cpu_loras:
            warnings.append(
                f"{count} adapters but only {self.max_cpu_loras} fit in vLLM's CPU cache "
                "(max_cpu_loras): the least recently used are reloaded from disk when asked for"
            )
        undo: list[tuple[str, str, str]] = []  # (load|unload, name, path), in order done
        try:
            for name, path in change.load.items():
                await self._load(name, path, undo)
            for name, (old, new) in change.replace.items():
                await self._unload(name, old, undo)
                await self._load(name, new, undo)
            for name, path in change.unload.items():
                await self._unload(name, path, undo)
            await self._verify(loads, change.unload)
            await self._prove_effect(loads)
        except _StepFailed as failed:
            # A stop abandons the change: no error of vLLM's nor the adapter's.
            say = log.info if self.stop_asked.is_set() else log.error
            say(failed.event, adapter=failed.name, path=failed.path, reason=failed.reason)
            await self._roll_back(undo)
            self._publish()  # before the outcome is told: who reads it then finds it written
            verb = "load" if failed.event == "adapter_load_failed" else "unload"
            return self._failed(f"{verb} of adapter {failed.name!r} failed: {failed.reason}")
        self._publish()  # before the outcome is told: who reads it then finds it written
        for name, path in loads.items():
            log.info("adapter_loaded", adapter=name, path=path, parent=self.served_name)
        for name in [*change.replace, *change.unload]:
            if name not in loads:
                log.info("adapter_unloaded", adapter=name)
        for warning in warnings:
            log.warning("adapter_warning", problem=warning)
        done = [f"loaded {name}" for name in loads] + [f"unloaded {n}" for n in change.unload]
        return CommandResult(
            True, "; ".join(done) or "nothing to change", self._details(warnings=warnings)
        )

    async def _load(self, name: str, path: str, undo: list[tuple[str, str, str]]) -> None:
        try:
            await self._unless_stopped(self.api.load(name, path))
        except AdapterApiError as exc:
            raise _StepFailed("adapter_load_failed", name, path, exc.reason) from None
        self.serving[name] = path
        undo.append(("unload", name, path))

    async def _unload(self, name: str, path: str, undo: list[tuple[str, str, str]]) -> None:
        try:
            await self._unless_stopped(self.api.unload(name))
        except AdapterApiError as exc:
            if not exc.not_found or "runtime LoRA" in exc.reason:
                raise _StepFailed("adapter_unload_failed", name, path, exc.reason) from None
            log.warning("adapter_already_gone", adapter=name, reason=exc.reason)
        self.serving.pop(name, None)
        undo.append(("load", name, path))

    async def _verify(self, loaded: Mapping[str, str], unloaded: Mapping[str, str]) -> None:
        """vLLM answered 200; /v1/models must now agree."""
        try:
            listed = await self._unless_stopped(self.api.listed())
        except AdapterApiError as exc:
            name = next(iter(loaded), next(iter(unloaded), "?"))
            raise _StepFailed("adapter_load_failed", name, None, exc.reason) from None
        for name, path in loaded.items():
            if name not in listed or listed[name] != self.served_name:
                shown = "does not list it" if name not in listed else f"parent {listed[name]!r}"
                reason = f"vLLM accepted it, but /v1/models {shown} (expected parent {self.served_name!r})"
                raise _StepFailed("adapter_load_failed", name, path, reason)
        for name in unloaded:
            if name in listed:
                raise _StepFailed(
                    "adapter_unload_failed", name, None, "vLLM still lists it in /v1/models"
                )

    async def _prove_effect(self, loaded: Mapping[str, str]) -> None:
        bad = await self.effects.after_load(list(loaded)) if self.effects is not None else None
        if bad is not None:
            raise _StepFailed(
                "adapter_load_failed", bad.adapter, loaded.get(bad.adapter), bad.reason
            )

    async def _roll_back(self, undo: list[tuple[str, str, str]]) -> None:
        for verb, name, path in reversed(undo):
            try:
                if verb == "unload":
                    await self._unless_stopped(self.api.unload(name))
                    self.serving.pop(name, None)
                else:
                    await self._unless_stopped(self.api.load(name, path))
                    self.serving[name] = path
            except AdapterApiError as exc:
                log.error("adapter_rollback_failed", adapter=name, step=verb, reason=exc.reason)
            else:
                log.info("adapter_rolled_back", adapter=name, step=verb, path=path)

    async def _unless_stopped(self, call: Awaitable[T]) -> T:
        """A stop does not wait for a slow vLLM: the call is abandoned."""
        if self.stop_asked.is_set():
            if asyncio.iscoroutine(call):
                call.close()
            raise AdapterApiError("the supervisor is stopping")
        task = asyncio.ensure_future(call)
        stop = asyncio.ensure_future(self.stop_asked.wait())
        await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if task.done():
            return task.result()
        task.cancel()
        raise AdapterApiError("the supervisor is stopping")

    def _failed(self, message: str) -> CommandResult:
        kept = ", ".join(self.serving) or "no adapters"
        return CommandResult(False, f"{message}; still serving: {kept}", self._details())

    def _details(self, *, warnings: Sequence[str] = ()) -> dict[str, object]:
        details: dict[str, object] = {"serving": list(self.serving), "live_only": self.live_only}
        if warnings:
            details["warnings"] = list(warnings)
        return details

    def _publish(self) -> None:
        self.status.adapters = list(self.serving)
        self.status.adapters_live_only = self.live_only
        if self.effects is not None:
            self.effects.forget(self.serving)  # no verdict for an adapter no longer served
        self.write_status()
        update_guard(self.lora_guard, self.serving)
        self.on_served(list(self.serving))
