"""jupyter-docker-env: reproducible Docker environments as Jupyter kernels."""

from __future__ import annotations

from typing import Any

try:
    from ._version import __version__
except ImportError:  # a source checkout that was never installed
    __version__ = "dev"

__all__ = ["__version__"]


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    return [{"src": "labextension", "dest": "jupyter-docker-env"}]


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    from .server.app import DockerEnvApp

    return [{"module": "jupyter_docker_env", "app": DockerEnvApp}]
