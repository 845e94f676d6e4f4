"""Settings shared by the server extension and the command line: ``c.DockerEnvApp.*``.

Both read the same ``jupyter_server_config`` files; the CLI loads them with
:func:`load_settings` without constructing any Jupyter application.
"""

from __future__ import annotations

import os
from typing import Any

from jupyter_core.application import JupyterApp
from traitlets import Bool, Dict, Enum, Int, List, Type, Unicode, default
from traitlets.config import Config, LoggingConfigurable

from .environments.images import BuildSettings

#: Where the host's own trust store is, by distribution family (Debian/Ubuntu/Alpine, RHEL/Fedora).
SYSTEM_CA_BUNDLES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt")


def ca_bundle_from_env() -> str:
    """The CA bundle the host trusts: as pip and requests are told about it, else the system's
    own (which holds a company's TLS-inspecting proxy CA wherever the host's tools trust it)."""
    for var in ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"):
        if value := os.environ.get(var):
            return value
    return next((path for path in SYSTEM_CA_BUNDLES if os.path.isfile(path)), "")


def os_user() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError):
        return str(os.getuid())


class DockerEnvConfig(LoggingConfigurable):
    """Environments, builds, sharing and the services that provide them.

    Configured as ``c.DockerEnvApp.*`` wherever it is used (the server extension is a subclass).
    """

    @classmethod
    def section_names(cls) -> list[str]:
        return list(dict.fromkeys([*super().section_names(), "DockerEnvApp"]))

    environment_manager_class = Type(
        default_value="jupyter_docker_env.environments.manager.EnvironmentManager",
        klass="jupyter_docker_env.environments.manager.EnvironmentManager",
        config=True,
        help="The service that finds, builds, shares and deletes environments (a subclass of "
        "EnvironmentManager).",
    )
    run_manager_class = Type(
        default_value="jupyter_docker_env.runs.manager.RunManager",
        klass="jupyter_docker_env.runs.manager.RunManager",
        config=True,
        help="The service that starts, follows, cancels and removes training runs (a subclass "
        "of RunManager).",
    )
    serving_manager_class = Type(
        default_value="jupyter_docker_env.serving.manager.ServingManager",
        klass="jupyter_docker_env.serving.manager.ServingManager",
        config=True,
        help="The service that builds, lists, pushes, removes and runs serving images: an "
        "environment's runtime with a model and a handler behind an HTTP server (a subclass "
        "of ServingManager).",
    )
    docker_host = Unicode(
        "",
        config=True,
        help="Docker engine URL (e.g. unix:///var/run/docker.sock, tcp://host:2376). "
        "Empty: the DOCKER_HOST environment variable or the default socket.",
    )
    builder = Enum(
        ["auto", "buildkit", "legacy"],
        default_value="auto",
        config=True,
        help="How images are built. buildkit: BuildKit through the Docker CLI, with pip, apt and "
        "conda download caches kept between builds; legacy: the engine's classic builder "
        "through its API. auto: BuildKit when the engine and an installed Docker CLI support it.",
    )
    docker_cli = Unicode(
        "",
        config=True,
        help="The Docker CLI that drives BuildKit builds. Empty: `docker` on PATH, then "
        "/usr/bin/docker (a client before 23.0, or one with the buildx plugin).",
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
        "proxy. Defaults to the host's PIP_CERT, REQUESTS_CA_BUNDLE or SSL_CERT_FILE, else the "
        "system's bundle (/etc/ssl/certs/ca-certificates.crt or "
        "/etc/pki/tls/certs/ca-bundle.crt). It is never part of the environment's content hash.",
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
    push_builds = Bool(
        config=True,
        help="Push each build (its content-hash and latest tags) to the registry, so that other "
        "machines run the same image. Default: on when kernels run on a Swarm "
        "(c.DockerEnvProvisioner.backend = 'swarm'), whose nodes pull images from the registry.",
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
    extra_labels = Dict(
        key_trait=Unicode(),
        value_trait=Unicode(),
        config=True,
        help="Labels added to every image the extension builds (kernel containers take "
        "c.DockerEnvProvisioner.extra_labels).",
    )
    build_workers = Int(
        2, config=True, help="How many builds, pushes or pulls run at once; others queue."
    )
    sweep_on_start = Bool(
        True,
        config=True,
        help="At start, remove kernel containers left behind by an earlier crash of this server.",
    )

    @default("push_builds")
    def _default_push_builds(self) -> bool:
        return bool(self.config.get("DockerEnvProvisioner", {}).get("backend") == "swarm")

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
            owner=os.environ.get("JUPYTERHUB_USER") or os_user(),
            extra_labels=dict(self.extra_labels),
        )


class _ConfigFiles(JupyterApp):
    """Reads the jupyter_server_config files (and nothing else) for the command line."""

    name = "jupyter-docker-env"
    config_file_name = "jupyter_server_config"


def load_config() -> Config:
    """The configuration in the user's, environment's and system jupyter_server_config files."""
    loader = _ConfigFiles()
    loader.load_config_file()
    return loader.config


def load_settings(**overrides: Any) -> DockerEnvConfig:
    """``c.DockerEnvApp.*`` as the server would see it, with ``overrides`` (non-None) on top."""
    settings = DockerEnvConfig(config=load_config())
    for name, value in overrides.items():
        if value is not None:
            setattr(settings, name, value)
    return settings
