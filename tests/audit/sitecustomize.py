"""Installs the confinement check in Python processes the tests start (see jde_confinement).

It waits until the process imports jupyter_docker_env.engine, so other programs are untouched.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from types import ModuleType
from typing import Any

TARGET = "jupyter_docker_env.engine"


class _AuditEngine(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != TARGET:
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        exec_module = loader.exec_module

        def exec_and_install(module: ModuleType) -> None:
            exec_module(module)
            import jde_confinement

            jde_confinement.install(module.Engine)

        loader.exec_module = exec_and_install  # type: ignore[method-assign]
        return spec


sys.meta_path.insert(0, _AuditEngine())
