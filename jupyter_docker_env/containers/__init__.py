"""Where kernels' and runs' containers run: one request record, interchangeable back ends.

A kernel provisioner (or the runs service) decides *what* runs — image, command, user, the
workspace, the environment, limits, the files the container needs — and describes it as a
:class:`ContainerRequest`. A :class:`ContainerBackend` decides *how*: the local Docker engine
(:mod:`.local`), and later a Swarm cluster or a broker that holds the Docker socket for many
users. Every back end applies the same hardening (:func:`hardening`), so a new kind of
container cannot skip it.

Writing a back end. Implement :class:`ContainerBackend` (register it in :data:`BACKENDS`, or name
its class in ``c.DockerEnvProvisioner.backend``); pass every container through
:func:`hardening`; label what you create with ``labels.MANAGED``, ``labels.INSTANCE`` and
``labels.ROLE`` so that :meth:`ContainerBackend.sweep` finds it after a crash; keep blocking
calls off the event loop. A request's ``warm`` is a hint: a back end without warm pools ignores
it and starts the container cold, which is always correct.

Warm pools (:class:`WarmPools`, implemented for the local engine in :mod:`.pool`) keep
containers of a request's *placement* started ahead of time, each running a launcher that has
imported the kernel's modules and waits for one claim. The placement is everything about a
request except what :class:`WarmStart` says may differ per claim (the container's name, working
directory, command arguments, the files' content and a few environment variables): the image,
user, workspace, limits, network and the rest are fixed when a container is created, so only an
equal request may take it. A back end that pools must hand a claim to the launcher without the
key ever appearing in the container's configuration or environment, serve one claim per
container, and fall back to a cold start whenever a warm container is missing or stale.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import IO, Any, Literal, Protocol, runtime_checkable

from ..models import WarmPool

Role = Literal["kernel", "run", "sandbox", "pool", "serving"]


@dataclass(frozen=True)
class ContainerFile:
    """A file placed into the container before it starts, owned by the container's user."""

    path: str
    data: bytes
    mode: int = 0o400


@dataclass(frozen=True)
class WarmStart:
    """How a request may be served by a container started ahead of time (a warm pool).

    Only for commands of the form ``PYTHON -m MODULE ARGS…``: the waiting launcher is started as
    ``PYTHON``, imports ``preload`` (never ``MODULE`` itself, which acts on import), and on its
    claim runs ``MODULE`` as ``python -m`` would, with the claim's ARGS, working directory and
    environment.
    """

    #: How many containers of this placement to keep ready for the next requests.
    size: int
    #: Modules the launcher imports while it waits (the slow part of a start); one an image
    #: lacks is skipped.
    preload: tuple[str, ...]
    #: Environment variables that may differ between requests of one placement; they are handed
    #: over with the claim. Everything else in the environment is fixed at creation, because the
    #: interpreter reads it when it starts (locale, PYTHON*, the init's TINI_* settings).
    claim_env: tuple[str, ...] = ()


@dataclass(frozen=True)
class ContainerRequest:
    """A kernel's or a run's container, as intent."""

    role: Role
    name: str
    image: str
    command: tuple[str, ...]
    workspace: str  # host folder, mounted read-write at the same path ("": none, serving)
    working_dir: str
    uid: int
    gid: int
    instance_id: str  # the server instance (or process) that owns it: orphans are swept by it
    environment: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    home: str = "/home/jupyter"
    nano_cpus: int | None = None
    mem_limit: int | None = None
    pids_limit: int | None = None
    device_requests: tuple[Mapping[str, Any], ...] = ()
    network: str = "bridge"
    #: Ports the server must reach (a kernel's five). Empty: nothing reaches in (runs).
    ports: tuple[int, ...] = ()
    files: tuple[ContainerFile, ...] = ()
    #: Where it may run, for back ends with several nodes (Swarm constraints such as
    #: "node.labels.pool==gpu"); one engine ignores them.
    placement: tuple[str, ...] = ()
    #: Outlives the process that launched it (a run): never removed when that process exits, and
    #: its files are copied into it, so nothing on the host must be kept for it.
    detached: bool = False
    #: May be served from a warm pool (a hint; see :class:`WarmStart`). None: always cold.
    warm: WarmStart | None = None


@dataclass(frozen=True)
class Launched:
    container_id: str
    ip: str  # where the server reaches ``ports``
    warm: bool = False  # served by a container started ahead of time


@dataclass(frozen=True)
class ContainerState:
    running: bool
    exit_code: int | None = None
    oom_killed: bool = False
    error: str = ""  # the engine's own reason, when it has one


class ContainerError(RuntimeError):
    """The back end could not do what was asked. ``kind`` classifies the engine's reason
    ("no-gpu-runtime", "no-image", "engine", …) so callers can say it in the user's terms."""

    def __init__(self, message: str, kind: str = "engine") -> None:
        super().__init__(message)
        self.kind = kind


class ContainerBackend(Protocol):
    """What a provisioner or the runs service needs from wherever containers run."""

    name: str

    async def reachable_ports(self, network: str, instance_id: str, wanted: list[int]) -> list[int]:
        """Ports for a new kernel's channels, unique where kernels share an address.

        ``wanted`` are the ports the kernel had before (a restart keeps them when it can).
        """
        ...

    def release_ports(self, network: str, instance_id: str, ports: list[int]) -> None: ...

    async def launch(self, request: ContainerRequest) -> Launched: ...

    async def state(self, container_id: str) -> ContainerState | None:
        """None when the container is gone."""
        ...

    async def signal(self, container_id: str, signum: int) -> None: ...

    async def remove(self, container_id: str) -> None: ...

    async def logs(self, container_id: str, tail: int = 20) -> str: ...

    async def changes(self, container_id: str) -> list[str]:
        """Paths the container added or changed in its own file system (not in its mounts)."""
        ...

    async def copy_from(self, container_id: str, path: str, into: IO[bytes]) -> None:
        """Write a tar of ``path`` in an exited (or running) container into ``into``."""
        ...

    async def find(self, labels: Mapping[str, str]) -> list[str]:
        """Ids of the containers carrying all these labels, running or exited (a restarted
        server finds detached containers this way)."""
        ...

    async def sweep(self, instance_id: str) -> list[str]:
        """Remove everything an earlier life of this server instance left; return ids."""
        ...


@dataclass(frozen=True)
class PoolSettings:
    """What a server instance allows its warm pools (``c.DockerEnvProvisioner.warm_pool_*``)."""

    #: Most memory all pools of the instance may hold while idle, in bytes.
    memory_budget: int
    #: A pool that serves no claim for this long is emptied (it refills on its next use).
    idle_timeout: float
    #: Pool containers that reserve GPUs (they would hold them while idle).
    gpus: bool = False


@runtime_checkable
class WarmPools(Protocol):
    """What a back end with warm pools offers the server that owns them.

    Pools exist only for instances that :meth:`enable_pools`; requests of other instances (a
    script, nbclient) are always started cold.
    """

    def enable_pools(self, instance_id: str, settings: PoolSettings) -> None: ...

    async def prewarm(self, request: ContainerRequest) -> None:
        """Make (or resize) the pool of ``request``'s placement now, before any claim."""
        ...

    async def refresh_pools(self, instance_id: str) -> None:
        """Empty the pools whose image changed or went away (after builds and deletes)."""
        ...

    def pool_states(self, instance_id: str) -> list[WarmPool]: ...

    async def close_pools(self, instance_id: str) -> None:
        """Remove every pool container of the instance and stop refilling (server stop)."""
        ...


#: Back ends by the name c.DockerEnvProvisioner.backend takes (or a dotted class path).
#: "local" is the local engine with warm pools (they stay off until a server enables them).
BACKENDS = {
    "local": "jupyter_docker_env.containers.pool.PooledLocalBackend",
    "swarm": "jupyter_docker_env.containers.swarm.SwarmBackend",
}


def backend_class(name: str) -> type[Any]:
    path = BACKENDS.get(name, name)
    module, _, cls = path.rpartition(".")
    if not module:
        raise ValueError(
            f"unknown container back end {name!r}: use one of {', '.join(BACKENDS)} or a "
            "dotted class path"
        )
    return getattr(importlib.import_module(module), cls)  # type: ignore[no-any-return]


def hardening(request: ContainerRequest) -> dict[str, Any]:
    """The Docker create options that confine every container the extension starts.

    Non-root with every capability dropped (uid 0 keeps Docker's default set: callers refuse it
    unless an admin allowed root), no privilege gain, an init that reaps and forwards signals, a
    process limit, only the workspace mounted, and a fresh in-memory HOME owned by the user.
    """
    uid, gid = request.uid, request.gid
    options: dict[str, Any] = {
        "user": f"{uid}:{gid}",
        "init": True,
        "security_opt": ["no-new-privileges:true"],
        "privileged": False,
        "volumes": (
            {request.workspace: {"bind": request.workspace, "mode": "rw"}}
            if request.workspace
            else {}
        ),
        "tmpfs": {request.home: f"exec,uid={uid},gid={gid},mode=0700"},
    }
    if uid != 0:
        options["cap_drop"] = ["ALL"]
    if request.pids_limit:
        options["pids_limit"] = request.pids_limit
    if request.nano_cpus:
        options["nano_cpus"] = request.nano_cpus
    if request.mem_limit:
        # no swap past the limit: an out-of-memory kernel is killed, not slowed to a crawl
        options["mem_limit"] = options["memswap_limit"] = request.mem_limit
    if request.device_requests:
        options["device_requests"] = [dict(r) for r in request.device_requests]
    return options
