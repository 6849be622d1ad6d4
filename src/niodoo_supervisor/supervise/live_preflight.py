"""Before an adapter is loaded into the running vLLM: would vLLM refuse it (files, rank against
the running --max-lora-rank, fit to the base checkpoint), and doubts worth a warning (base
model); and, once the served set changed, the lora_name guard's list of adapters."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import structlog

from niodoo_supervisor.config.loader import Config
from niodoo_supervisor.launch.adapters import AdapterReadError, read_adapter, same_base_model
from niodoo_supervisor.launch.fit_checker import FitChecker, version_or_none
from niodoo_supervisor.launch.lora_guard import LoraGuard, write_guard_adapters
from niodoo_supervisor.launch.plan import LaunchPlan

__all__ = ["VLLM_DEFAULT_MAX_RANK", "LivePreflight", "update_guard"]

log = structlog.get_logger("niodoo_supervisor")

VLLM_DEFAULT_MAX_RANK = 16  # --max-lora-rank when the config leaves it out


class LivePreflight:
    """The checks of one running vLLM (its served name, model and --max-lora-rank)."""

    def __init__(self, config: Config, plan: LaunchPlan) -> None:
        self.served_name = config.served_name
        self.model_path = str(config.model.path)
        self.max_rank = plan.max_lora_rank or VLLM_DEFAULT_MAX_RANK
        self.fit = FitChecker(  # the base's headers are read at the first live load
            self.model_path, version_or_none(plan.vllm_version), config.lora.target_modules
        )

    def check(self, name: str, path: str, yaml_base: str | None, warnings: list[str]) -> str | None:
        """Why vLLM would refuse the adapter (None: it may load); doubts go to `warnings`.
        `yaml_base` is the base model `lora.adapters` names for it, if any."""
        if name == self.served_name:
            return f"{name!r} is the served model's name"
        try:
            info = read_adapter(Path(path))
        except AdapterReadError as exc:
            return str(exc)
        if info.rank > self.max_rank:
            return (
                f"rank {info.rank} is above the running vLLM's --max-lora-rank {self.max_rank} "
                f"(vLLM: 'LoRA rank {info.rank} is greater than max_lora_rank {self.max_rank}.'); "
                "raise lora.max_lora_rank (a restart)"
            )
        fit = self.fit.check(info)
        if any(problem.error for problem in fit):
            return "; ".join(problem.message for problem in fit if problem.error)
        warnings.extend(f"adapter {name!r}: {problem.message}" for problem in fit)
        base = yaml_base or info.base_model or ""
        verdict = same_base_model(base, self.served_name, self.model_path)
        if verdict is None:
            warnings.append(f"adapter {name!r} does not say which base model it was trained on")
        elif not verdict:
            warnings.append(
                f"adapter {name!r} was trained on {base!r}, the served model is {self.model_path!r}"
            )
        return None


def update_guard(guard: LoraGuard | None, serving: Mapping[str, str]) -> None:
    """The guard's route mode follows the adapters served; a failed write is logged (the
    guard keeps its previous list), never raised."""
    if guard is None:
        return
    try:
        write_guard_adapters(guard, serving)
    except OSError as exc:
        log.error("lora_guard_not_updated", adapters=list(serving), error=str(exc))
