"""``jupyter-docker-env-broker``: the launch broker as a program (a JupyterHub service, or alone).

Configured as ``c.DockerEnvBroker.*`` in ``jupyter_docker_env_broker_config.py`` (``--config``)
or on the command line (``--DockerEnvBroker.name=value``). Started by the hub from
``c.JupyterHub.services``, it reads the hub's ``JUPYTERHUB_API_TOKEN``, ``JUPYTERHUB_API_URL``,
``JUPYTERHUB_SERVICE_URL`` and ``JUPYTERHUB_SERVICE_PREFIX``; run alone, set those or the
matching settings.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from pathlib import Path
from urllib.parse import urlparse

from jupyter_core.paths import jupyter_runtime_dir
from tornado import httpserver, web
from tornado.ioloop import PeriodicCallback
from traitlets import Bool, Dict, Enum, Float, Int, List, Unicode, Union, default
from traitlets.config import Application

from .. import __version__
from ..config import ca_bundle_from_env
from ..engine import Engine
from ..environments.images import BuildSettings
from ..kernels.resources import parse_memory
from .handlers import handlers
from .identity import HubUsers
from .policy import ConfigError, Limits, Policy, parse_limits
from .service import Broker, audit_logger


class DockerEnvBroker(Application):
    """The one process that holds the Docker socket for a hub's users (see the package doc)."""

    name = "jupyter-docker-env-broker"
    description = (
        "The launch broker of jupyter-docker-env: builds environments and runs kernels and runs "
        "for JupyterHub users on one Docker engine, under its own policy."
    )
    version = __version__
    aliases = {  # type: ignore[assignment]
        "config": "DockerEnvBroker.config_file",
        "bind-url": "DockerEnvBroker.bind_url",
        "log-level": "Application.log_level",
    }

    config_file = Unicode(
        "jupyter_docker_env_broker_config.py",
        config=True,
        help="The configuration file to load (c.DockerEnvBroker.*); a missing default file is "
        "no error, a missing named one is.",
    )
    # -- the hub -------------------------------------------------------------------------
    hub_api_url = Unicode(
        config=True,
        help="The hub's REST API (default: $JUPYTERHUB_API_URL, which the hub sets for services).",
    )
    api_token = Unicode(
        config=True,
        help="The broker's own hub API token (default: $JUPYTERHUB_API_TOKEN). Its role needs "
        "the scopes read:users, read:servers and admin:server_state (to find users' server "
        "containers).",
    )
    bind_url = Unicode(
        config=True,
        help="Where the broker listens (default: $JUPYTERHUB_SERVICE_URL, else "
        "http://127.0.0.1:8765). Single-user servers must reach it: on a DockerSpawner hub, the "
        "gateway address of the hub's Docker network.",
    )
    base_path = Unicode(
        config=True,
        help="The URL path the API lives under (default: $JUPYTERHUB_SERVICE_PREFIX, else /).",
    )
    identity_ttl = Float(
        30.0,
        config=True,
        help="Seconds a caller's identity (token → user, admin, groups) is cached; a revoked "
        "token or a changed group takes effect within this time.",
    )
    admin_groups = List(
        Unicode(),
        config=True,
        help="Hub groups whose members are broker admins (see everyone's images, builds and "
        "containers, build shared environments), besides the hub's admins.",
    )
    # -- the engine and builds -------------------------------------------------------------
    docker_host = Unicode(
        "", config=True, help="The Docker engine (default: DOCKER_HOST or the local socket)."
    )
    builder = Enum(
        ["auto", "buildkit", "legacy"],
        default_value="auto",
        config=True,
        help="How images are built (as c.DockerEnvApp.builder): BuildKit, with download caches "
        "shared by all users' builds, where the engine and a Docker CLI allow.",
    )
    docker_cli = Unicode("", config=True, help="The Docker CLI for BuildKit builds.")
    state_dir = Unicode(
        config=True,
        help="Where the broker keeps build folders and kernels' files (default: "
        "JUPYTER_RUNTIME_DIR/docker-env-broker).",
    )
    image_prefix = Unicode(
        "jupyter-docker-env",
        config=True,
        help="Repository prefix of every image the broker builds: a user's are "
        "PREFIX/u-USER/ENV:HASH, shared ones PREFIX/SHARED/ENV:HASH.",
    )
    shared_namespace = Unicode(
        "shared",
        config=True,
        help="The namespace (under image_prefix) of shared environments, which admins build "
        "and every user may run.",
    )
    allowed_bases = List(
        Unicode(),
        config=True,
        help="Base images users may build on: an exact reference ('python:3.12-slim', "
        "'python@sha256:…'), a repository without tag (any tag or digest of it: 'python'), or a "
        "prefix ending in '/' (everything under it: 'registry.example.com/team/'). Empty: none "
        "but default_base. Dockerfile environments are checked on every image they name.",
    )
    default_base = Unicode(
        "python:3.12-slim",
        config=True,
        help="The base of specs that name none (it must be allowed).",
    )
    allow_dockerfile = Bool(
        False,
        config=True,
        help="Whether users may build environments from their own Dockerfile (each image a "
        "Dockerfile names must still be allowed). Off: only docker-env.toml, requirements.txt "
        "and environment.yml environments.",
    )
    dockerfile_groups = List(
        Unicode(),
        config=True,
        help="Hub groups whose members may build Dockerfile environments even when "
        "allow_dockerfile is off.",
    )
    ca_bundle = Unicode(
        config=True,
        help="CA bundle copied into builds (as c.DockerEnvApp.ca_bundle; default: the broker's "
        "PIP_CERT, REQUESTS_CA_BUNDLE or SSL_CERT_FILE, else the system's bundle).",
    )
    pip_index_url = Unicode("", config=True, help="Package index for pip inside builds.")
    build_workers = Int(
        2, config=True, help="How many builds run at once (all users); others queue."
    )
    max_context_size = Unicode(
        "16m",
        config=True,
        help="Largest environment folder a build may send (its files are sent whole).",
    )
    # -- users' containers -----------------------------------------------------------------
    default_user = Union(
        [Unicode(), Int()],
        default_value="1000:100",
        config=True,
        help='The uid:gid of every hub user\'s containers unless `users` maps them ("1000:100" '
        "is jovyan in the Jupyter Docker Stacks). Parsed strictly: digits only, never 0.",
    )
    users = Dict(
        config=True,
        help='Hub user → "uid:gid" (or "uid") of their containers, e.g. {"alice": "1001:100"}. '
        "Root (0, also written 00, +0, ' 0') is refused.",
    )
    workspace_volume = Unicode(
        "jupyterhub-user-{username}",
        config=True,
        help="The user's workspace, as DockerSpawner's volume template names it: a named volume "
        "('jupyterhub-user-{username}') or an absolute host folder ('/srv/home/{username}'). "
        "{username} is escaped as DockerSpawner escapes it, {raw_username} is not. It must exist: "
        "the user's server creates it.",
    )
    workspace_path = Unicode(
        "/home/jovyan/work",
        config=True,
        help="Where the workspace is mounted in the single-user server and in every kernel and "
        "run (the same path, so notebook paths work unchanged). Make it the single-user "
        "server's root dir (c.DockerSpawner.notebook_dir).",
    )
    network_prefix = Unicode(
        "jupyter-docker-env-user",
        config=True,
        help="Each user's kernels and runs join their own bridge network PREFIX-USER, which the "
        "user's server containers join too.",
    )
    network_internal = Bool(
        False,
        config=True,
        help="Make users' networks internal (no route out): kernels then cannot reach the "
        "internet or the host network.",
    )
    limits = Dict(
        config=True,
        help="Per-user limits, over the defaults (cpus 2, memory '4g', gpus 0, pids 1024, "
        "kernels 4, runs 2, builds 1, images 20, disk '20g'): cpus, memory, gpus and pids per "
        "container; kernels, runs and builds running at once; images: environments with images; "
        "disk: what a user's images add to their bases.",
    )
    group_limits = Dict(
        config=True,
        help="Hub group → limits (as `limits`): a member of several groups gets the most "
        'generous value of each, e.g. {"gpu-users": {"gpus": 1, "memory": "32g"}}.',
    )
    user_limits = Dict(
        config=True,
        help="Hub user → limits (as `limits`), over their groups'.",
    )
    reap_interval = Float(
        60.0,
        config=True,
        help="Seconds between sweeps that remove kernels whose single-user server stopped; 0: "
        "never.",
    )
    audit_log = Unicode(
        "",
        config=True,
        help="File that receives the audit log (one JSON line per decision: user, action, "
        "image, verdict); empty: the broker's own log (stderr).",
    )

    @default("hub_api_url")
    def _default_hub_api_url(self) -> str:
        return os.environ.get("JUPYTERHUB_API_URL", "")

    @default("api_token")
    def _default_api_token(self) -> str:
        return os.environ.get("JUPYTERHUB_API_TOKEN", "")

    @default("bind_url")
    def _default_bind_url(self) -> str:
        return os.environ.get("JUPYTERHUB_SERVICE_URL") or "http://127.0.0.1:8765"

    @default("base_path")
    def _default_base_path(self) -> str:
        return os.environ.get("JUPYTERHUB_SERVICE_PREFIX") or "/"

    @default("state_dir")
    def _default_state_dir(self) -> str:
        return str(Path(jupyter_runtime_dir()) / "docker-env-broker")

    @default("ca_bundle")
    def _default_ca_bundle(self) -> str:
        return ca_bundle_from_env()

    broker: Broker
    server: httpserver.HTTPServer

    # -- setup ---------------------------------------------------------------------------------
    def initialize(self, argv: list[str] | None = None) -> None:
        self.parse_command_line(argv)
        cli = self.cli_config
        if self.config_file:
            path = Path(self.config_file)
            if path.is_file():
                self.load_config_file(path.name, path=str(path.parent.resolve()))
            elif self.config_file != type(self).config_file.default_value:
                raise ConfigError(f"the configuration file {self.config_file} does not exist")
            self.update_config(cli)  # the command line wins over the file
        if not self.hub_api_url or not self.api_token:
            raise ConfigError(
                "the broker identifies users through JupyterHub: start it as a hub service, or "
                "set JUPYTERHUB_API_URL and JUPYTERHUB_API_TOKEN (c.DockerEnvBroker.hub_api_url "
                "/ api_token)"
            )
        self._setup_audit()
        policy = self.policy()
        engine = Engine(self.docker_host or None, builder=self.builder, docker_cli=self.docker_cli)
        self.broker = Broker(
            policy,
            engine,
            HubUsers(self.hub_api_url, self.api_token, self.identity_ttl),
            Path(self.state_dir),
            self.build_settings(policy),
            build_workers=self.build_workers,
            network_internal=self.network_internal,
            log=self.log,
        )

    def policy(self) -> Policy:
        """The configuration as the decisions use it; ConfigError names a bad setting."""
        try:
            context = parse_memory(self.max_context_size)
        except ValueError as exc:
            raise ConfigError(f"c.DockerEnvBroker.max_context_size: {exc}") from None
        policy = Policy(
            image_prefix=self.image_prefix,
            shared_namespace=self.shared_namespace,
            allowed_bases=tuple(self.allowed_bases),
            default_base=self.default_base,
            allow_dockerfile=self.allow_dockerfile,
            dockerfile_groups=frozenset(self.dockerfile_groups),
            admin_groups=frozenset(self.admin_groups),
            default_user=self.default_user,
            users=dict(self.users),
            limits=Limits(**parse_limits(self.limits, "c.DockerEnvBroker.limits")),
            group_limits=dict(self.group_limits),
            user_limits=dict(self.user_limits),
            workspace_volume=self.workspace_volume,
            workspace_path=self.workspace_path,
            network_prefix=self.network_prefix,
            max_context_bytes=context,
        )
        policy.check()
        return policy

    def build_settings(self, policy: Policy) -> BuildSettings:
        return BuildSettings(
            default_base=policy.default_base,
            ca_bundle=self.ca_bundle,
            pip_index_url=self.pip_index_url,
            image_prefix=policy.image_prefix,
        )

    def _setup_audit(self) -> None:
        audit = audit_logger()
        audit.setLevel(logging.INFO)
        audit.propagate = False
        for handler in list(audit.handlers):
            audit.removeHandler(handler)
            handler.close()
        target: logging.Handler = (
            logging.FileHandler(self.audit_log) if self.audit_log else logging.StreamHandler()
        )
        target.setFormatter(logging.Formatter("%(asctime)s audit %(message)s"))
        audit.addHandler(target)

    def web_app(self) -> web.Application:
        return web.Application(
            handlers(self.base_path),  # type: ignore[arg-type]
            broker=self.broker,
            hub=self.broker.hub,
            log_function=self._log_request,
        )

    def _log_request(self, handler: web.RequestHandler) -> None:
        status = handler.get_status()
        level = logging.WARNING if status >= 500 else logging.DEBUG
        self.log.log(level, "%d %s %s", status, handler.request.method, handler.request.path)

    # -- run -------------------------------------------------------------------------------
    async def serve(self) -> None:
        """Listen until cancelled."""
        url = urlparse(self.bind_url)
        host, port = url.hostname or "127.0.0.1", url.port or 8765
        limit = self.broker.policy.max_context_bytes * 2 + 1024**2  # JSON-escaped text
        self.server = httpserver.HTTPServer(self.web_app(), max_body_size=limit)
        self.server.listen(port, host)
        reaper = None
        if self.reap_interval > 0:
            reaper = PeriodicCallback(self._reap, self.reap_interval * 1000)
            reaper.start()
        self.log.info(
            "jupyter-docker-env broker %s on %s%s (hub API %s)",
            __version__,
            self.bind_url.rstrip("/"),
            self.base_path,
            self.hub_api_url,
        )
        try:
            await asyncio.Event().wait()
        finally:
            if reaper is not None:
                reaper.stop()
            self.server.stop()
            self.broker.close()

    async def _reap(self) -> None:
        try:
            removed = await self.broker.reap()
        except Exception:
            self.log.exception("reaping kernels of stopped servers failed")
            return
        if removed:
            self.log.info("removed %d container(s) of stopped servers", len(removed))

    def start(self) -> None:
        asyncio.run(self.serve())


def main(argv: list[str] | None = None) -> int:
    app = DockerEnvBroker()
    try:
        app.initialize(argv)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with contextlib.suppress(KeyboardInterrupt):
        app.start()
    return 0
