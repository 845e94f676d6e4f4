"""The REST API under {base_url}jupyter-docker-env/api/ (described in openapi.yaml)."""

from __future__ import annotations

from . import environments, notebooks, runs, serving
from .base import DockerEnvHandler

HANDLERS: list[tuple[str, type[DockerEnvHandler]]] = [
    *environments.HANDLERS,
    *runs.HANDLERS,
    *serving.HANDLERS,
    *notebooks.HANDLERS,
]
