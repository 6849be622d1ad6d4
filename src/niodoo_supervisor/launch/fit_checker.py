"""The adapter fit check as `check`, `run` and a live `adapters load` use it: the base model's
headers read once (on first use), every adapter compared with them (`adapter_fit`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from niodoo_supervisor.config.versions import Version
from niodoo_supervisor.files.inputs import is_dir, is_file
from niodoo_supervisor.launch.adapter_fit import FitProblem, adapter_fit
from niodoo_supervisor.launch.adapters import AdapterInfo
from niodoo_supervisor.launch.checkpoint_headers import (
    BaseCheckpoint,
    CheckpointError,
    read_base_checkpoint,
)

__all__ = ["FitChecker", "version_or_none"]


class FitChecker:
    def __init__(
        self,
        model_path: str,
        vllm_version: Version | None,
        target_modules: Sequence[str] | None,
    ) -> None:
        self.model_path = Path(model_path)
        self.vllm_version = vllm_version
        self.target_modules = target_modules
        self._base: BaseCheckpoint | None = None
        self._read = False
        self.base_problem: str | None = None  # why the base could not be read

    @property
    def base(self) -> BaseCheckpoint | None:
        """The base checkpoint; None for a hub id, a folder without config.json (the model
        path's own check says so) or without safetensors weights, or a broken one
        (`base_problem`)."""
        if not self._read:
            self._read = True
            folder = self.model_path
            if folder.is_absolute() and is_dir(folder) and is_file(folder / "config.json"):
                try:
                    self._base = read_base_checkpoint(folder)
                except CheckpointError as exc:
                    self.base_problem = str(exc)
        return self._base

    def check(self, info: AdapterInfo) -> list[FitProblem]:
        base = self.base
        if base is None:
            return []
        return adapter_fit(
            info.path,
            info.config,
            base,
            vllm_version=self.vllm_version,
            lora_target_modules=self.target_modules,
        )


def version_or_none(text: str | None) -> Version | None:
    try:
        return Version.parse(text) if text else None
    except ValueError:
        return None
