"""Checks that need the machine: files, the port, the installed vLLM. Run by `check`, `run`
and `render`, before `plan.plan_launch`; it reports problems and never renders.

Everything that would make vLLM fail only after minutes of model loading is found here in about
a second: adapter ranks above --max-lora-rank, missing paths, flags the installed vLLM lacks, a
taken port. Errors refuse the start; warnings are logged.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from niodoo_supervisor.config.loader import Config
from niodoo_supervisor.config.problems import Problem, Severity
from niodoo_supervisor.config.versions import Version
from niodoo_supervisor.config.vllm_options import (
    OLDEST_SUPPORTED,
    VLLM_OPTIONS,
    option_for_flag,
)
from niodoo_supervisor.files.inputs import is_script
from niodoo_supervisor.launch.adapters import (
    AdapterInfo,
    AdapterReadError,
    read_adapter,
    same_base_model,
    smallest_rank_at_least,
)
from niodoo_supervisor.launch.fit_checker import FitChecker
from niodoo_supervisor.launch.install import (
    VllmInstall,
    VllmProbeError,
    cache_dir,
    inspect_vllm,
    vllm_flags,
)
from niodoo_supervisor.launch.named_files import (
    check_model_path,
    reachable,
    read_api_key,
    read_logging_loggers,
)
from niodoo_supervisor.launch.plan import (
    PlanError,
    is_rendered,
    resolve_max_lora_rank,
    vllm_environment,
)
from niodoo_supervisor.launch.ports import OwnListener
from niodoo_supervisor.launch.topology_preflight import check_host_and_port
from niodoo_supervisor.launch.vllm_logging import ignored_fields_logger_for

__all__ = ["PreflightOptions", "PreflightResult", "preflight"]

NEWEST_KNOWN = Version(0, 33, 0)


@dataclass(frozen=True)
class PreflightOptions:
    check_port: bool = True
    check_flags: bool = True  # asks vLLM's --help once per install (cached): seconds when cold
    check_api_key: bool = True  # False for `render`, which never reads the secret
    # Keys already reported wrong (`loader.ConfigCheck.unchecked`): the checks reading them are
    # skipped, each saying so in one note; the others still run (`check` shows every problem).
    unchecked: Collection[str] = ()
    own_listener: OwnListener | None = None  # `check`: our own vLLM on the port is no problem


@dataclass
class PreflightResult:
    """Every problem found, and the installed vLLM when it could be asked (what
    `plan.plan_launch` renders for). `notes`: what was not checked and why, and a port held
    by our own vLLM."""

    problems: list[Problem] = field(default_factory=list)
    install: VllmInstall | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(problem.is_error for problem in self.problems)


def preflight(
    config: Config, environ: Mapping[str, str], options: PreflightOptions | None = None
) -> PreflightResult:
    checker = _Preflight(config, environ, options or PreflightOptions())
    return checker.run()


class _Preflight:
    def __init__(
        self, config: Config, environ: Mapping[str, str], options: PreflightOptions
    ) -> None:
        self.config = config
        self.environ = environ
        self.options = options
        self.result = PreflightResult()
        self.operator_loggers: dict[str, Any] | None = None  # from server.logging_config, if given

    def problem(self, path: str, message: str, fix: str = "", *, warning: bool = False) -> None:
        severity = Severity.WARNING if warning else Severity.ERROR
        self.result.problems.append(
            Problem(
                severity,
                path,
                message,
                fix,
                self.config.line_of(path),
                self.config.source,
            )
        )

    def needs(self, what: str, *keys: str) -> bool:
        """Whether the check of `what`, which reads `keys`, can run: none of them was reported
        wrong already. When one was, a note says so."""
        bad = next(
            (
                wrong
                for key in keys
                for wrong in self.options.unchecked
                if _within(key, wrong) or _within(wrong, key)
            ),
            None,
        )
        if bad is not None:
            self.result.notes.append(f"not checked: {what}, because {bad} has an error above")
        return bad is None

    def run(self) -> PreflightResult:
        api_keys = ("server.api_key_env", "server.api_key_file")
        if self.options.check_api_key and self.needs("the API key", *api_keys):
            read_api_key(self.config, self.environ, self.problem)  # read to check; the plan too
        if self.needs("the model's folder", "model.path"):
            check_model_path(self.config, self.problem)
        adapters_ok = self.needs("the adapters", "lora.adapters", "lora.enabled")
        against_model = (
            adapters_ok
            and bool(self.config.adapters)
            and self.needs(
                "the adapters' fit with the model (their base model, modules and shapes)",
                "model.path",
            )
        )
        infos = self.check_adapters(compare_base=against_model) if adapters_ok else []
        ranks_ok = adapters_ok and self.needs("the adapters' ranks", "lora.max_lora_rank")
        if ranks_ok:
            self.check_ranks(infos)
        if self.needs("the logging config", "server.logging_config"):
            self.operator_loggers = read_logging_loggers(self.config, self.problem)
        probe_env = vllm_environment(self.environ, self.config.server.env)
        asked = self.needs("the installed vLLM", "server.python", "server.env")
        install = self.inspect_install(probe_env) if asked else None
        self.result.install = install
        if install is not None:
            self.check_version(install)
        elif asked:
            self.result.notes.append(
                "not checked: the options and server.extra_args against the installed vLLM, "
                "because it could not be asked (server.python above)"
            )
        if ranks_ok:
            self.check_max_lora_rank(infos, install)
        if against_model and self.needs("the adapters' fit", "lora.target_modules"):
            self.check_adapter_fit(infos, install)
        if (
            install is not None
            and self.options.check_flags
            and self.needs("server.extra_args", "server.extra_args")
        ):
            self.check_flags(install, probe_env)
        network = self.options.check_port  # the ports, the head's too: `render` asks none
        self.result.notes += check_host_and_port(
            self.config, self.environ, self.problem, self.needs, network, mine=self.own_listener
        )
        return self.result

    # --- files ------------------------------------------------------------------------------

    def check_adapters(self, *, compare_base: bool) -> list[tuple[int, AdapterInfo]]:
        infos: list[tuple[int, AdapterInfo]] = []
        for index, adapter in enumerate(self.config.adapters):
            if not reachable(f"lora.adapters[{index}].path", adapter.path, self.problem):
                continue
            try:
                info = read_adapter(Path(adapter.path))
            except AdapterReadError as exc:
                self.problem(f"lora.adapters[{index}].path", str(exc))
                continue
            infos.append((index, info))
            if not compare_base:
                continue
            base = adapter.base_model_name or info.base_model
            verdict = same_base_model(
                base or "", self.config.served_name, str(self.config.model.path)
            )
            if verdict is None:
                self.problem(
                    f"lora.adapters[{index}]",
                    f"adapter {adapter.name!r} does not say which base model it was trained on",
                    "check it was trained on the served model",
                    warning=True,
                )
            elif not verdict:
                self.problem(
                    f"lora.adapters[{index}]",
                    f"adapter {adapter.name!r} was trained on {base!r}, the served model is {self.config.model.path!r}",
                    "serve it with the model it was trained on; outputs are wrong or loading fails otherwise",
                    warning=True,
                )
        return infos

    def check_ranks(self, infos: list[tuple[int, AdapterInfo]]) -> None:
        limit = self.config.lora.max_lora_rank
        if not isinstance(limit, int):
            return  # absent: vLLM's default; auto: sized to cover every adapter
        for index, info in infos:
            if info.rank > limit:
                name = self.config.adapters[index].name
                self.problem(
                    f"lora.adapters[{index}]",
                    f"adapter {name!r} has rank {info.rank}, above lora.max_lora_rank {limit}: vLLM would fail with "
                    f"'LoRA rank {info.rank} is greater than max_lora_rank {limit}.' after loading the whole model",
                    f"set lora.max_lora_rank to {smallest_rank_at_least(info.rank)} (or auto), or drop the adapter",
                )

    def check_adapter_fit(
        self, infos: list[tuple[int, AdapterInfo]], install: VllmInstall | None
    ) -> None:
        """Each adapter against the base checkpoint's headers (read once): modules, shapes,
        features the installed vLLM refuses or ignores."""
        if not infos:
            return
        lora = self.config.lora
        fit = FitChecker(
            str(self.config.model.path), install.version if install else None, lora.target_modules
        )
        if fit.base is None:
            if fit.base_problem is not None:
                self.problem("model.path", fit.base_problem, "vLLM cannot load it either")
            return
        for index, info in infos:
            name = self.config.adapters[index].name
            for found in fit.check(info):
                self.problem(
                    f"lora.adapters[{index}]",
                    f"adapter {name!r}: {found.message}",
                    found.fix,
                    warning=not found.error,
                )

    def check_max_lora_rank(
        self, infos: list[tuple[int, AdapterInfo]], install: VllmInstall | None
    ) -> None:
        """The rank the plan will render exists in this vLLM (`auto` can be sized)."""
        if not infos and self.config.adapters:
            return  # the adapters' own errors say why auto cannot be sized
        try:
            resolve_max_lora_rank(self.config, [info.rank for _, info in infos], install)
        except PlanError as exc:
            self.problem(exc.key, exc.message, exc.fix)

    # --- the installed vLLM -------------------------------------------------------------------

    def inspect_install(self, probe_env: Mapping[str, str]) -> VllmInstall | None:
        python = str(self.config.server.python)
        if not reachable("server.python", python, self.problem, os.X_OK):
            return None
        if is_script(python):
            self.problem(
                "server.python",
                f"{python} is a script, not the interpreter: after a killed supervisor, vLLM's "
                "leftovers are recognised by the interpreter they run, so they would not be ended",
                "point server.python at the Python of vLLM's virtual environment itself and put "
                "variables in server.env",
                warning=True,
            )
        try:
            return inspect_vllm(python, probe_env)
        except VllmProbeError as exc:
            self.problem(
                "server.python",
                str(exc),
                "point server.python at the Python of vLLM's virtual environment",
            )
            return None

    def check_version(self, install: VllmInstall) -> None:
        version = install.version
        if version < OLDEST_SUPPORTED or version > NEWEST_KNOWN:
            self.problem(
                "server.python",
                f"vLLM {install.version_text} is outside the versions niodoo-supervisor knows ({OLDEST_SUPPORTED} to {NEWEST_KNOWN})",
                "flags and log formats may differ; test before relying on it",
                warning=True,
            )
        for option in VLLM_OPTIONS:
            value = option.value_in(self.config)
            if not is_rendered(value) or option.available_in(version):
                continue
            self.problem(
                option.key,
                f"{option.flag} is not in the installed vLLM {install.version_text} (it exists in {option.versions_text()})",
                "remove the key, or install a vLLM that has it",
            )
        loggers = self.operator_loggers
        if loggers is not None:
            wanted = ignored_fields_logger_for(version)
            level = str((loggers.get(wanted) or {}).get("level", "")).upper()
            if level != "DEBUG" and version >= Version(0, 18, 0):
                self.problem(
                    "server.logging_config",
                    f"your logging config does not set {wanted} to DEBUG: on vLLM {install.version_text} the supervisor cannot see "
                    "'The following fields were present in the request but ignored' (e.g. lora_name)",
                    f"add a logger {wanted} with level DEBUG, or remove server.logging_config",
                    warning=True,
                )

    def check_flags(self, install: VllmInstall, probe_env: Mapping[str, str]) -> None:
        extra = [arg for arg in self.config.server.extra_args if arg.startswith("--")]
        rendered = {
            option.flag
            for option in VLLM_OPTIONS
            if option.flag and is_rendered(option.value_in(self.config))
        }
        for arg in extra:
            flag = arg.split("=", 1)[0]
            modelled = option_for_flag(flag)
            if modelled is not None and modelled.flag in rendered | {"--model", "--host", "--port"}:
                self.problem(
                    "server.extra_args",
                    f"{flag} is also rendered from {modelled.key}",
                    f"set it only as {modelled.key}",
                )
            elif modelled is not None:
                self.problem(
                    "server.extra_args",
                    f"{flag} has its own key",
                    f"prefer {modelled.key}: it is validated",
                    warning=True,
                )
            if flag == "--api-key":
                # vLLM takes --api-key over VLLM_API_KEY; the lora_name guard reads only the
                # latter, and would answer (naming the adapters) requests vLLM refuses.
                guarded = self.config.lora.lora_name_field != "log"
                self.problem(
                    "server.extra_args",
                    "--api-key on the command line is visible to every user in `ps`"
                    + (", and the lora_name guard cannot see it" if guarded else ""),
                    "use server.api_key_file or server.api_key_env",
                    warning=not guarded,
                )
        if not extra:
            return
        try:
            known = vllm_flags(install, probe_env, cache_dir(self.environ))
        except VllmProbeError as exc:
            self.problem(
                "server.extra_args",
                f"cannot list the installed vLLM's flags: {exc}",
                "extra_args are unchecked",
                warning=True,
            )
            return
        for arg in extra:
            flag = arg.split("=", 1)[0]
            if flag not in known:
                self.problem(
                    "server.extra_args",
                    f"{flag} is not a flag of the installed vLLM {install.version_text}: it would exit with an argparse error",
                    "remove it or fix its spelling",
                )

    # --- the host ---------------------------------------------------------------------------

    def own_listener(self) -> OwnListener | None:
        """`options.own_listener`, asked only when the keys naming our own vLLM are valid: a
        wrong one stands at its default in a partial config, which could name another
        supervisor's state folder (and vLLM)."""
        own = self.options.own_listener
        if own is None:
            return None

        def recognise(pid: int) -> str | None:
            keys = ("supervisor.state_dir", "server.python")
            if not self.needs("whether the port's listener is our own vLLM", *keys):
                return None
            return own(pid)

        return recognise


def _within(key: str, outer: str) -> bool:
    """`key` is `outer` or inside it: lora.adapters[1].path is within lora.adapters."""
    return key == outer or key.startswith((outer + ".", outer + "["))
