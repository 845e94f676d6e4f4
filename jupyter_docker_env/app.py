"""The Jupyter Server extension: configuration, services, and its start and stop hooks."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from jupyter_core.paths import jupyter_runtime_dir
from jupyter_server.extension.application import ExtensionApp
from traitlets import Bool, Int, List, Unicode, default

from . import __version__, kernelspecs
from .builder import Builder, BuildSettings
from .engine import Engine, shared_engine
from .environments import Environments
from .handlers import HANDLERS
from .jobs import JobManager
from .provisioner import instance_id_for, sweep_orphans


def ca_bundle_from_env() -> str:
    """The CA bundle the host trusts, as pip and requests are told about it."""
    for var in ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"):
        if value := os.environ.get(var):
            return value
    return ""


class DockerEnvApp(ExtensionApp):
    name = "jupyter_docker_env"
    description = "Reproducible Docker environments as Jupyter kernels"
    handlers = HANDLERS  # type: ignore[assignment]

    docker_host = Unicode(
        "",
        config=True,
        help="Docker engine URL (e.g. unix:///var/run/docker.sock, tcp://host:2376). "
        "Empty: the DOCKER_HOST environment variable or the default socket.",
    )
    env_dirs = List(
        Unicode(),
        default_value=["environments"],
        config=True,
        help="Folders, relative to the server's root dir, whose subfolders are environments. "
        "New environments are created in the first one.",
    )
    shared_env_dirs = List(
        Unicode(),
        default_value=[],
        config=True,
        help="Absolute folders of environments provided by an administrator. Users can build "
        "and use them but not edit or delete them.",
    )
    default_base = Unicode(
        "python:3.12-slim",
        config=True,
        help="Base image for specs that name none and for requirements.txt / environment.yml "
        "folders.",
    )
    allowed_bases = List(
        Unicode(),
        default_value=[],
        config=True,
        help="Base images users may build on, as glob patterns (e.g. 'python:3.1*-slim', "
        "'registry.example.com/*'). Empty allows any image; shared deployments should list "
        "theirs.",
    )
    ca_bundle = Unicode(
        config=True,
        help="CA bundle file (PEM) copied into builds so pip and conda trust a TLS-inspecting "
        "proxy. Defaults to the host's PIP_CERT, REQUESTS_CA_BUNDLE or SSL_CERT_FILE. It is "
        "never part of the environment's content hash.",
    )
    pip_index_url = Unicode(
        "",
        config=True,
        help="Package index for pip inside builds (e.g. a company mirror). Passed as a build "
        "argument, never part of the environment's content hash.",
    )
    registry = Unicode(
        "",
        config=True,
        help="Registry and namespace to share environment images through, as "
        "HOST[:PORT]/NAMESPACE. Builds pull an image from it instead of building when its "
        "content-hash tag is there.",
    )
    registry_username = Unicode(
        "", config=True, help="Registry user; empty: use the Docker config's credentials."
    )
    registry_password = Unicode("", config=True, help="Registry password or token.")
    image_prefix = Unicode(
        "docker-env",
        config=True,
        help="Repository prefix of the images the extension builds: PREFIX/ENV_NAME:HASH. "
        "Give each user their own on a shared engine.",
    )
    build_workers = Int(
        2, config=True, help="How many builds, pushes or pulls run at once; others queue."
    )
    sweep_on_start = Bool(
        True,
        config=True,
        help="At start, remove kernel containers left behind by an earlier crash of this server.",
    )

    @default("ca_bundle")
    def _default_ca_bundle(self) -> str:
        return ca_bundle_from_env()

    def build_settings(self) -> BuildSettings:
        auth = None
        if self.registry_username:
            auth = {"username": self.registry_username, "password": self.registry_password}
        return BuildSettings(
            default_base=self.default_base,
            allowed_bases=tuple(self.allowed_bases),
            ca_bundle=self.ca_bundle,
            pip_index_url=self.pip_index_url,
            image_prefix=self.image_prefix,
            registry=self.registry,
            registry_auth=auth,
            owner=os.environ.get("JUPYTERHUB_USER") or _username(),
        )

    def initialize_settings(self) -> None:
        serverapp = self.serverapp
        assert serverapp is not None
        root_dir = Path(serverapp.root_dir)
        self.engine: Engine = shared_engine(self.docker_host or None)
        self.jobs = JobManager(workers=self.build_workers)
        self.builder = Builder(self.engine, self.build_settings())
        self.envs = Environments(
            root_dir, self.env_dirs, self.shared_env_dirs, self.builder, self.jobs
        )
        self.instance_id = instance_id_for(str(root_dir), serverapp.port)
        self.kernels_dir = (
            Path(jupyter_runtime_dir()) / "docker-env-kernels" / self.instance_id / "kernels"
        )
        ksm = serverapp.kernel_spec_manager
        assert ksm is not None
        if str(self.kernels_dir) not in ksm.kernel_dirs:
            ksm.kernel_dirs.insert(0, str(self.kernels_dir))
        self.settings.update(
            docker_env=self,
            docker_env_engine=self.engine,
            docker_env_envs=self.envs,
            docker_env_jobs=self.jobs,
        )

    async def _start_jupyter_server_extension(self, serverapp: Any) -> None:
        info = await self.engine.run(self.engine.info)
        if info.available:
            self.log.info(
                "jupyter-docker-env %s: Docker engine %s (API %s) at %s",
                __version__,
                info.version,
                info.api_version,
                info.host,
            )
            if self.sweep_on_start:
                removed = await sweep_orphans(self.engine, self.instance_id)
                if removed:
                    self.log.warning(
                        "jupyter-docker-env: removed %d kernel container(s) left by an earlier "
                        "run of this server",
                        len(removed),
                    )
            await self.sync_kernelspecs()
        else:
            self.log.warning("jupyter-docker-env %s: %s", __version__, info.reason)

    async def sync_kernelspecs(self) -> None:
        """Write a kernel spec per built environment (and drop those of removed ones)."""
        # Kernels must reach the same engine the images were built on.
        extra = {"docker_host": self.docker_host} if self.docker_host else None
        specs = await self.engine.run(self.envs.kernel_specs, extra)
        await self.engine.run(kernelspecs.sync, self.kernels_dir, specs)

    async def stop_extension(self) -> None:
        self.jobs.close()


def _username() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError):
        return str(os.getuid())
