"""The Jupyter Server extension: configuration, the services it builds once, its start and stop
hooks. Handlers only look the services up (``self.settings["docker_env"]``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jupyter_core.paths import jupyter_runtime_dir
from jupyter_server.extension.application import ExtensionApp
from traitlets import Bool

from .. import __version__
from ..config import DockerEnvConfig
from ..containers.swarm import SwarmBackend
from ..engine import Engine, shared_engine
from ..environments.manager import EnvironmentManager
from ..kernels.provisioner import DockerEnvProvisioner, instance_id_for, sweep_orphans
from ..kernels.warm import WarmKernels
from ..notebooks.saving import pre_save_hook
from ..notebooks.service import NotebookEnvironments
from ..runs.manager import RunManager
from ..serving.manager import ServingManager
from .handlers import HANDLERS


class DockerEnvApp(DockerEnvConfig, ExtensionApp):
    name = "jupyter_docker_env"
    description = "Reproducible Docker environments as Jupyter kernels"
    handlers = HANDLERS  # type: ignore[assignment]
    classes = [DockerEnvProvisioner, SwarmBackend, RunManager]  # type: ignore[assignment]

    record_environment_in_notebooks = Bool(
        True,
        config=True,
        help="When a notebook that runs on an environment's kernel is saved, record the "
        "environment in it (metadata.docker_env: spec files, content hash, image, registry "
        "digest and lock; docs/notebooks.md), so that it can be compared and recreated "
        "elsewhere. False saves notebooks as the editor sent them.",
    )

    engine: Engine
    environments: EnvironmentManager
    runs: RunManager
    warm: WarmKernels
    serving: ServingManager
    notebooks: NotebookEnvironments

    def initialize_settings(self) -> None:
        serverapp = self.serverapp
        assert serverapp is not None
        root_dir = Path(serverapp.root_dir)
        self.engine = shared_engine(self.docker_host or None, self.builder, self.docker_cli)
        self.instance_id = instance_id_for(str(root_dir), serverapp.port)
        self.kernels_dir = (
            Path(jupyter_runtime_dir()) / "docker-env-kernels" / self.instance_id / "kernels"
        )
        ksm = serverapp.kernel_spec_manager
        assert ksm is not None
        if str(self.kernels_dir) not in ksm.kernel_dirs:
            ksm.kernel_dirs.insert(0, str(self.kernels_dir))
        self.environments = self.environment_manager_class(
            parent=self,
            settings=self,
            root_dir=root_dir,
            engine=self.engine,
            kernels_dir=self.kernels_dir,
        )
        self.runs = self.run_manager_class(
            parent=self, settings=self, environments=self.environments, workspace=root_dir
        )
        self.warm = WarmKernels(
            self.instance_id, root_dir, ksm, docker_host=self.docker_host, parent=self
        )
        self.environments.kernelspecs_synced.append(self.warm.specs_changed)
        # The environment service's engine: on a hub's broker, one that says there is none here
        self.serving = self.serving_manager_class(
            parent=self,
            settings=self,
            environments=self.environments,
            engine=self.environments.engine,
        )
        self.notebooks = NotebookEnvironments(self.environments)
        if self.record_environment_in_notebooks:
            # Registered next to any hook the user configured (c.ContentsManager.pre_save_hook).
            contents = serverapp.contents_manager
            assert contents is not None
            contents.register_pre_save_hook(pre_save_hook(self.environments))
        self.settings.update(docker_env=self)

    async def _start_jupyter_server_extension(self, serverapp: Any) -> None:
        info = (await self.environments.status()).engine
        if not info.available:
            self.log.warning("jupyter-docker-env %s: %s", __version__, info.reason)
            return
        self.log.info(
            "jupyter-docker-env %s: Docker engine %s (API %s) at %s, builds with %s",
            __version__,
            info.version,
            info.api_version,
            info.host,
            info.builder,
        )
        if self.sweep_on_start:
            # where this server's kernels run: the broker for a server on a shared hub (it has
            # no engine of its own), else the configured back end beside the local engine
            local = self.environments.container_backend == "local"
            backend = DockerEnvProvisioner(config=self.config).backend if local else "broker"
            removed = await sweep_orphans(self.engine, self.instance_id) if local else []
            if backend != "local":  # its services, secrets and networks too
                removed += await sweep_orphans(self.engine, self.instance_id, backend, self.config)
            if removed:
                self.log.warning(
                    "jupyter-docker-env: removed %d kernel container(s) left by an earlier "
                    "run of this server",
                    len(removed),
                )
        self.warm.start()
        await self.environments.sync_kernelspecs()
        await self.environments.refresh_records()
        await self.environments.sweep_images()  # what the last run's kernels held untagged
        followed = await self.runs.recover()
        if followed:
            self.log.info("jupyter-docker-env: following %d run(s) started earlier", len(followed))

    async def stop_extension(self) -> None:
        self.runs.close()
        await self.warm.stop()
        self.serving.close()
        self.environments.close()
