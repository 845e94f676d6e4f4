"""Warm kernels in a Jupyter server: this server instance's pools, from its start to its stop.

The server extension enables warm pools on the kernels' container back end for its instance
(``c.DockerEnvProvisioner.warm_pool_*``); pools then form on each placement's first start (see
:mod:`..containers.pool`). On top of that, this service starts, as soon as their kernel specs
exist, the pools of environments that ask for one (``warm = N`` in docker-env.toml), empties
pools whose image a build, pull or delete changed, reports the pools for the status endpoint and
removes them all when the server stops.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from traitlets.config import LoggingConfigurable

from ..containers import WarmPools
from ..models import WarmPool
from .kernelspecs import KERNEL_PREFIX
from .provisioner import DockerEnvProvisioner


class WarmKernels(LoggingConfigurable):
    """The warm pools of one server instance (built by the server extension)."""

    def __init__(
        self,
        instance_id: str,
        root_dir: Path,
        kernel_spec_manager: Any,
        docker_host: str = "",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.instance_id = instance_id
        self.root_dir = root_dir
        self.ksm = kernel_spec_manager
        # kernel specs name the engine the server builds on (see sync_kernelspecs)
        self._engine_config = {"docker_host": docker_host} if docker_host else {}
        self.settings = self._provisioner()
        backend = self.settings.containers
        self.pools = backend if isinstance(backend, WarmPools) else None
        self._refused: set[str] = set()  # environments whose pool cannot form (logged once)
        self._refreshing: set[asyncio.Task[None]] = set()

    def _provisioner(self, **config: Any) -> DockerEnvProvisioner:
        """A provisioner as a kernel of this server gets it (c.DockerEnvProvisioner.* and the
        kernel spec's config), for its settings, back end and requests."""
        return DockerEnvProvisioner(
            parent=self,
            kernel_id="warm",
            instance_id=self.instance_id,
            workspace=str(self.root_dir),
            **{**self._engine_config, **config},
        )

    def start(self) -> None:
        """Enable pools (the kernel-spec sync that follows a server's start prewarms them)."""
        if (pools := self.pools) is None:
            return
        settings = self.settings.pool_settings()
        pools.enable_pools(self.instance_id, settings)
        self.log.info(
            "jupyter-docker-env: warm kernels on (%d per environment, %d MiB for all)",
            self.settings.warm_pool_size,
            settings.memory_budget // 1024**2,
        )

    async def specs_changed(self) -> None:
        """After builds, pulls and deletes: drop stale pools, start those that are asked for.

        In the background: the operation that changed the specs reads as ended meanwhile."""
        if self.pools is None:
            return
        task = asyncio.get_running_loop().create_task(self._refresh())
        self._refreshing.add(task)
        task.add_done_callback(self._refreshing.discard)

    async def _refresh(self) -> None:
        assert self.pools is not None
        try:
            await self.pools.refresh_pools(self.instance_id)
            await self.prewarm()
        except Exception as exc:  # the engine went away meanwhile: the next sync tries again
            self.log.warning("jupyter-docker-env: warm pools not refreshed: %s", exc)

    async def prewarm(self) -> None:
        """Start the pools of the environments that ask for one in their docker-env.toml."""
        pools = self.pools
        if pools is None:
            return
        for name in sorted(self.ksm.find_kernel_specs()):
            if not name.startswith(KERNEL_PREFIX):
                continue
            spec = self.ksm.get_kernel_spec(name)
            config = dict(spec.metadata.get("kernel_provisioner", {}).get("config") or {})
            if not config.get("warm_pool_size"):
                continue  # the server's default: a pool forms on the first start
            try:
                provisioner = self._provisioner(kernel_spec=spec, **config)
                # what jupyter_server gives a notebook's kernel (the session adds its name)
                request = provisioner.warm_request(dict(os.environ))
            except (ValueError, PermissionError) as exc:
                if name not in self._refused:
                    self.log.warning("jupyter-docker-env: no warm kernels for %s: %s", name, exc)
                self._refused.add(name)
                continue
            if request is not None:
                await pools.prewarm(request)

    def states(self) -> list[WarmPool]:
        pools = self.pools
        return pools.pool_states(self.instance_id) if pools is not None else []

    async def stop(self) -> None:
        if (pools := self.pools) is not None:
            await asyncio.gather(*self._refreshing, return_exceptions=True)
            await pools.close_pools(self.instance_id)
