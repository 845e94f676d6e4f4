"""The contents manager's pre-save hook: a notebook saved on an environment's kernel records that
environment (``metadata.docker_env``).

Saving must stay as fast as without it: the hook reads the environment service's records from
memory (kept up to date after every build, pull, push and restore) and never asks the engine.
Notebooks on other kernels, and notebooks whose environment has no record (not built here), are
saved as the editor sent them: a record carried from elsewhere is never dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..kernels.kernelspecs import KERNEL_PREFIX
from .record import METADATA_KEY

if TYPE_CHECKING:
    from ..environments.manager import EnvironmentManager

PreSaveHook = Callable[..., None]


def pre_save_hook(envs: EnvironmentManager) -> PreSaveHook:
    """A hook for ``ContentsManager.register_pre_save_hook`` (called with model, path, …)."""

    def record_docker_env(model: dict[str, Any], **_: Any) -> None:
        if model.get("type") != "notebook":
            return
        content = model.get("content")
        metadata = content.get("metadata") if isinstance(content, dict) else None
        if not isinstance(metadata, dict):
            return
        kernelspec = metadata.get("kernelspec")
        name = kernelspec.get("name") if isinstance(kernelspec, dict) else None
        if not isinstance(name, str) or not name.startswith(KERNEL_PREFIX):
            return
        record = envs.notebook_record(name[len(KERNEL_PREFIX) :])
        if record is not None:
            metadata[METADATA_KEY] = record.to_json()

    return record_docker_env
