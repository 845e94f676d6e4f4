"""Run a notebook's kernel inside a container of its environment's image.

jupyter_client picks :class:`DockerEnvProvisioner` through a kernel spec's
``metadata.kernel_provisioner`` (entry point ``docker-env-provisioner``); the spec's ``config`` dict
becomes trait values, on top of ``c.DockerEnvProvisioner.*``. The spec's ``argv`` is ignored (it may
be empty): the container command is :attr:`DockerEnvProvisioner.kernel_cmd`.

What a kernel gets:

- the workspace (the server's root dir) bind-mounted at the same absolute path, and the notebook's
  directory as working directory, so relative paths work unchanged;
- the workspace owner's uid:gid (never root unless ``allow_root``), and a fresh, writable HOME;
- a connection file with the server's key, copied into the container owned by the kernel's user,
  mode 0400: the key is never in the container's environment nor in ``docker inspect``;
- only allow-listed environment variables;
- labels naming the kernel, environment, server instance and user, so anything left behind by a
  crash is found and swept (:func:`sweep_orphans`), with jupyter_client's connection file.

Where the container runs is a back end's business (``backend``; :mod:`..containers`): the local
engine by default, which also decides how the server reaches the kernel's ports.

Warm starts. In a Jupyter server whose extension enabled warm pools (:mod:`.warm`), a start may
take a container that a pool started ahead of time for the same environment and placement
(``warm_pool_size``; :mod:`..containers.pool`): it gets the same connection file, working
directory and environment as a cold start, and is the kernel's alone. A claimed container carries
the pool's labels (Docker labels cannot change), so it has no ``kernel-id`` label; it is renamed
after the kernel.

When the kernel dies. In a server, :class:`.restarter.ContainerKernelRestarter` watches the
kernel: it ends the running cell with the reason (out of memory at the limit, the engine gone)
before a restart, keeps ``execution_state`` right, and reports a kernel that died with the engine
as dead instead of restarting it. The provisioner also answers ``poll`` while the engine is down:
the kernel is alive while its heartbeat port answers.

Server instances. Every container carries the id of the server instance that started it:
:func:`instance_id_for` derives it from the host, OS user, root dir and port, so a server that
crashed and restarts with the same settings finds what it left behind and removes it with
:func:`sweep_orphans`. Outside a Jupyter server (nbclient, scripts) the id is unique to the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

from jupyter_client.connect import KernelConnectionInfo
from jupyter_client.ioloop.restarter import AsyncIOLoopKernelRestarter
from jupyter_client.provisioning.provisioner_base import KernelProvisionerBase
from jupyter_core.paths import jupyter_runtime_dir
from traitlets import Bool, Dict, Enum, Float, Int, List, TraitError, Unicode, Union, validate
from traitlets.config import Config, Configurable

from .. import labels as L
from ..containers import (
    ContainerBackend,
    ContainerError,
    ContainerFile,
    ContainerRequest,
    PoolSettings,
    WarmStart,
    backend_class,
)
from ..containers.placement import allowed_env, user_for, within, working_dir_in
from ..engine import Engine, EngineUnavailable, shared_engine
from .resources import container_limits, human_size, parse_memory
from .restarter import ContainerKernelRestarter

#: Where the connection file lives inside the kernel's container (0700 dir, 0400 file).
CONTAINER_RUNTIME_DIR = "/run/jupyter-docker-env"
CONNECTION_FILE = f"{CONTAINER_RUNTIME_DIR}/kernel.json"
_CHANNELS = ("shell", "iopub", "stdin", "hb", "control")
#: What a warm pool's launcher imports before its claim, by the module the kernel runs: what a
#: cold start imports before the kernel answers (measured with ipykernel 7: the kernel app, then
#: while it initializes the debugger's debugpy, IPython's history, debugger and extensions).
WARM_PRELOAD = {
    "ipykernel_launcher": (
        "ipykernel.kernelapp",
        "ipykernel.ipkernel",
        "ipykernel.debugger",
        "IPython.core.completerlib",
        "IPython.core.debugger",
        "IPython.core.oinspect",
        "IPython.extensions.storemagic",
        "faulthandler",
        "psutil",
        "sqlite3",
        "tornado.platform.asyncio",
    )
}
#: Longest a start waits for the kernel to bind its ports (seconds).
LISTEN_WAIT = 30.0
#: Variables that differ between the kernels of one notebook server: handed over at a claim.
CLAIM_ENV = ("JPY_SESSION_NAME",)


# -- server instances and orphans ------------------------------------------------------------
def instance_id_for(root_dir: str, port: int | None = None) -> str:
    """The id of a Jupyter server instance, as its kernels' containers are labelled.

    Stable for the same host, OS user, root dir and port, so the same server restarted after a
    crash computes the same id and finds its orphans; two servers side by side get two ids.
    """
    key = f"{socket.gethostname()}|{os.getuid()}|{os.path.realpath(root_dir)}|{port}"
    return "srv-" + hashlib.sha256(key.encode()).hexdigest()[:16]


def _process_instance_id() -> str:
    key = f"{socket.gethostname()}|{os.getpid()}|{time.time()}"
    return "proc-" + hashlib.sha256(key.encode()).hexdigest()[:16]


_PROCESS_INSTANCE_ID = _process_instance_id()


_backends: dict[tuple[str, str | None, str, Path], ContainerBackend] = {}


def backend_for(
    name: str, engine: Engine, connect_mode: str = "auto", config: Config | None = None
) -> ContainerBackend:
    """One back end per kind, engine, connect mode and runtime dir for the whole process (it
    holds state that kernels share, such as network sandboxes, their ports and warm pools; the
    files it keeps for containers live in the runtime dir, where a later sweep looks). A
    configurable back end (Swarm) reads its settings from the first ``config`` it is built
    with."""
    files = Path(jupyter_runtime_dir()) / "docker-env-files"
    key = (name, engine.host, connect_mode, files)
    if key not in _backends:
        cls = backend_class(name)
        extra = {"config": config} if config is not None and issubclass(cls, Configurable) else {}
        _backends[key] = cls(engine, files, connect_mode, **extra)
    return _backends[key]


async def sweep_orphans(
    engine: Engine, instance_id: str, backend: str = "local", config: Config | None = None
) -> list[str]:
    """Remove every container labelled with ``instance_id``, the files kept for them, and the
    connection files jupyter_client wrote for their kernels.

    Call it when a server starts (before any kernel of it runs): it removes the kernels, warm
    pools and network sandbox that a crashed predecessor with the same id left behind.
    """
    removed = await backend_for(backend, engine, config=config).sweep(instance_id)
    _sweep_connection_files(instance_id)
    return removed


def _ledger(instance_id: str) -> Path:
    """Where a server instance notes the connection file of each of its running kernels."""
    return Path(jupyter_runtime_dir()) / "docker-env-kernels" / instance_id / "connection-files"


def _sweep_connection_files(instance_id: str) -> None:
    ledger = _ledger(instance_id)
    if not ledger.is_dir():
        return
    for entry in ledger.iterdir():
        with contextlib.suppress(OSError, ValueError):
            path = Path(entry.read_text().strip())
            if _is_connection_file(path):
                path.unlink()
        with contextlib.suppress(OSError):
            entry.unlink()


def _is_connection_file(path: Path) -> bool:
    """A kernel's connection file (never followed through a link), not anything else."""
    if not path.is_absolute() or path.suffix != ".json" or path.is_symlink() or not path.is_file():
        return False
    info = json.loads(path.read_text())
    return isinstance(info, dict) and {"key", "shell_port", "iopub_port"} <= info.keys()


class DockerEnvProvisioner(KernelProvisionerBase):  # type: ignore[misc]
    """Runs the kernel in a container of the environment's image, with the workspace mounted."""

    image = Unicode(
        "",
        help="The image to run the kernel in (set by the environment's kernel spec).",
    ).tag(config=True)
    env_name = Unicode("", help="The environment's name, recorded on the container's labels.").tag(
        config=True
    )
    workspace = Unicode(
        "",
        help="Host folder mounted into the kernel's container at the same absolute path. "
        "Default: the Jupyter server's root_dir, or the kernel's working directory outside "
        "a server.",
    ).tag(config=True)
    user = Unicode(
        "",
        help='The kernel\'s "uid:gid" (or "uid"). Default: the owner of the workspace, so the '
        "files a notebook writes belong to the user.",
    ).tag(config=True)
    allow_root = Bool(
        False,
        help="Allow kernels to run as root (uid 0), e.g. when the workspace belongs to root. "
        "Off by default: a root kernel owns every file it writes in the workspace.",
    ).tag(config=True)
    home = Unicode(
        "/home/jupyter",
        help="HOME inside the container: an empty folder owned by the kernel's user, fresh for "
        "every kernel (re)start.",
    ).tag(config=True)
    cpus = Float(
        None,
        allow_none=True,
        help="CPU limit per kernel (e.g. 1.5); none by default. A kernel start may ask for its "
        "own with KERNEL_CPUS in its env.",
    ).tag(config=True)
    mem_limit = Union(
        [Unicode(), Int()],
        default_value="",
        help='Memory limit per kernel ("512m", "2g"); none by default. A kernel start may ask '
        "for its own with KERNEL_MEMORY in its env. Swap is not allowed past it.",
    ).tag(config=True)
    pids_limit = Int(
        1024,
        help="Most processes and threads a kernel may run (a fork bomb stops there); 0: no limit.",
    ).tag(config=True)
    gpus = Unicode(
        "",
        help='GPUs for the kernel: "" none, "all", a count ("2"), or device ids ("0,1"). '
        "A kernel start may ask with KERNEL_GPUS in its env. Needs the NVIDIA runtime on the "
        "Docker host.",
    ).tag(config=True)
    env_allowlist = List(
        Unicode(),
        default_value=["LANG", "LANGUAGE", "LC_*", "TZ", "JPY_SESSION_NAME"],
        help="Names (shell patterns) of the variables copied from the kernel's environment into "
        "the container; nothing else of the server's environment enters it. The kernel spec's "
        "own env entries always do.",
    ).tag(config=True)
    extra_env = Dict(
        value_trait=Unicode(),
        key_trait=Unicode(),
        help="Variables set in every kernel's container.",
    ).tag(config=True)
    extra_labels = Dict(
        value_trait=Unicode(),
        key_trait=Unicode(),
        help="Labels added to every kernel's container.",
    ).tag(config=True)
    network = Unicode(
        "bridge",
        help="The Docker network kernels (or their network sandbox) join.",
    ).tag(config=True)
    connect_mode = Enum(
        ["auto", "container-ip", "published"],
        default_value="auto",
        help="How the server reaches the kernel's ports. container-ip: at the container's own "
        "address (nothing published on the host). published: ports published on 127.0.0.1 only. "
        "auto: container-ip for a Linux engine on a local socket, else published (Docker "
        "Desktop, rootless and remote engines cannot route to container addresses).",
    ).tag(config=True)
    docker_host = Unicode(
        "",
        help="The Docker engine's address; default: DOCKER_HOST or the local socket.",
    ).tag(config=True)
    backend = Unicode(
        "local",
        help="Where kernels' containers run: 'local' (the Docker engine at docker_host), "
        "'swarm' (services of the Swarm whose manager is at docker_host; c.SwarmBackend.*), or "
        "the dotted path of a ContainerBackend class.",
    ).tag(config=True)
    placement = List(
        Unicode(),
        help="Where the kernel may run, for back ends with several nodes: Swarm placement "
        "constraints such as 'node.labels.pool==gpu'. The local back end ignores them.",
    ).tag(config=True)
    warm_pool_size = Int(
        1,
        help="In a Jupyter server: kernels of an environment kept started ahead of time, per "
        "placement (the same image, workspace, user, limits and network), so that opening a "
        "notebook takes a waiting kernel (about a fifth of a local kernel's start, measured by "
        "benchmarks/kernel_start.py) instead of starting one. A pool forms "
        "on a placement's first start and empties after warm_pool_idle_timeout without a start; "
        "an environment asks for its own size, kept from the server's start, with `warm = N` in "
        "its docker-env.toml. A waiting kernel holds ~36 MiB (ipykernel 7, measured idle; all "
        "pools together stay within warm_pool_memory). 0: every start is cold.",
    ).tag(config=True)
    warm_pool_memory = Union(
        [Unicode(), Int()],
        default_value="512m",
        help='Most memory ("512m", "2g") that all warm pools of a server may hold while their '
        "kernels wait; a pool that would pass it stops growing (the status endpoint says so). "
        '"0" keeps no kernel waiting.',
    ).tag(config=True)
    warm_pool_idle_timeout = Float(
        1800.0,
        help="Seconds without a start after which a warm pool that formed on demand is emptied "
        "(it forms again on the next start). Pools an environment asks for are kept.",
    ).tag(config=True)
    warm_pool_gpus = Bool(
        False,
        help="Keep warm kernels for GPU requests too. Off by default: a waiting kernel would "
        "hold its GPUs.",
    ).tag(config=True)
    kernel_cmd = List(
        Unicode(),
        default_value=["python", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        help="The kernel's command inside the container; {connection_file} is replaced by the "
        "connection file's path there.",
    ).tag(config=True)
    instance_id = Unicode(
        "",
        help="The server instance's id, labelled on its containers (see instance_id_for). "
        "Default: derived from the Jupyter server's root_dir and port; outside a server, unique "
        "to the process.",
    ).tag(config=True)

    @validate("warm_pool_size")
    def _valid_pool_size(self, proposal: Any) -> int:
        if proposal["value"] < 0:
            raise TraitError("warm_pool_size must be 0 (no warm kernels) or more")
        return int(proposal["value"])

    @validate("warm_pool_memory")
    def _valid_pool_memory(self, proposal: Any) -> str | int:
        try:
            parse_memory(proposal["value"])
        except ValueError as exc:
            raise TraitError(f"warm_pool_memory: {exc}") from None
        return proposal["value"]  # type: ignore[no-any-return]

    @validate("warm_pool_idle_timeout")
    def _valid_idle_timeout(self, proposal: Any) -> float:
        if proposal["value"] <= 0:
            raise TraitError("warm_pool_idle_timeout must be a number of seconds above 0")
        return float(proposal["value"])

    container_id: str | None = None
    #: Set once the kernel's container has exited.
    exit_code: int | None = None
    oom_killed: bool = False
    #: Why the kernel stopped, in the user's terms, when it did not stop on request.
    exit_reason: str | None = None
    #: The kernel died with the Docker engine (it no longer answers): no restart can work now.
    engine_lost: bool = False
    #: The kernel took a container that a warm pool had started ahead of time.
    warm_started: bool = False
    _stopping = False
    _engine_silent = False
    _uid_gid: tuple[int, int] = (0, 0)
    _working_dir = ""
    _workspace = ""
    _resources: dict[str, Any] = {}  # replaced, never mutated
    _ports: list[int] = []  # replaced, never mutated

    # -- engine and identity ---------------------------------------------------------------
    @property
    def engine(self) -> Engine:
        return shared_engine(self.docker_host or None)

    @property
    def containers(self) -> ContainerBackend:
        return backend_for(self.backend, self.engine, str(self.connect_mode), self.config)

    @property
    def _server(self) -> tuple[Any, Any]:
        """The MappingKernelManager and ServerApp above our KernelManager, when in a server."""
        mkm = getattr(self.parent, "parent", None)
        return mkm, getattr(mkm, "parent", None)

    def _instance_id(self) -> str:
        if not self.instance_id:
            mkm, server = self._server
            root_dir, port = getattr(mkm, "root_dir", None), getattr(server, "port", None)
            self.instance_id = (
                instance_id_for(root_dir, port)
                if isinstance(root_dir, str) and root_dir
                else _PROCESS_INSTANCE_ID
            )
        return self.instance_id

    # -- launch ----------------------------------------------------------------------------
    @property
    def has_process(self) -> bool:
        return self.container_id is not None

    @property
    def _km(self) -> Any:
        """The KernelManager this provisioner serves."""
        assert self.parent is not None
        return self.parent

    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        km = self._km
        if kwargs.get("env") is None:  # None means "the server's environment", as for Popen
            kwargs.pop("env", None)
        if not self.image:
            raise ValueError(
                f"Kernel spec {getattr(self.kernel_spec, 'display_name', '?')!r} names no image: "
                "set metadata.kernel_provisioner.config.image in its kernel.json."
            )
        if km.transport != "tcp":
            raise ValueError("Kernels in containers need the tcp transport.")
        if getattr(km, "restarter_class", None) is AsyncIOLoopKernelRestarter:
            km.restarter_class = ContainerKernelRestarter  # says why a kernel died (a server)
        self._resources = self._resources_for(kwargs.get("env") or {})
        self._place(kwargs.get("cwd"))
        await self._choose_ports(km)
        km.write_connection_file(
            jupyter_session=(kwargs.get("env") or {}).get("JPY_SESSION_NAME", "")
        )
        self.connection_info = km.get_connection_info()
        self._note_connection_file(km.connection_file)
        cmd = [arg.replace("{connection_file}", CONNECTION_FILE) for arg in self.kernel_cmd]
        cmd += kwargs.pop("extra_arguments", [])
        self.exit_code, self.oom_killed, self.exit_reason, self._stopping = None, False, None, False
        self.engine_lost = self._engine_silent = False
        # A back end that cannot signal (Swarm: the kernel may be on another node) interrupts
        # through the kernel's control channel.
        if (mode := getattr(self.containers, "interrupt_mode", None)) and self.kernel_spec:
            self.kernel_spec.interrupt_mode = mode
        return await super().pre_launch(cmd=cmd, **kwargs)

    def _note_connection_file(self, path: str) -> None:
        """Note it where a restart of this server after a crash finds and removes it."""
        instance = self._instance_id()
        if instance == _PROCESS_INSTANCE_ID or not path:
            return  # a script's kernels: no later life of the process sweeps them
        ledger = _ledger(instance)
        ledger.mkdir(parents=True, exist_ok=True, mode=0o700)
        (ledger / str(self.kernel_id)).write_text(os.path.abspath(path))

    async def _choose_ports(self, km: Any) -> None:
        """Ports the back end can reach, kept across restarts where it can."""
        names = [f"{c}_port" for c in _CHANNELS]
        wanted = [int(getattr(km, n) or 0) for n in names]
        if not all(wanted):
            km.cleanup_connection_file()
            # jupyter_client picks free ports by binding them at km.ip, which after a first
            # start is the container's address (not this host's): look on loopback instead.
            km.ip = "127.0.0.1"
            km.write_connection_file()
            wanted = [int(getattr(km, n)) for n in names]
        ports = await self.containers.reachable_ports(self.network, self._instance_id(), wanted)
        if ports != wanted:
            for name, port in zip(names, ports, strict=True):
                setattr(km, name, port)
            km.cleanup_connection_file()  # ports changed: the file must be written anew
        if self._ports and self._ports != ports:  # a restart on new ports frees the old ones
            self.containers.release_ports(self.network, self._instance_id(), self._ports)
        self._ports = ports

    def _place(self, cwd: str | None) -> None:
        """Decide the workspace, the working directory and the user (uid, gid)."""
        mkm, _ = self._server
        workspace = self.workspace or getattr(mkm, "root_dir", None) or cwd or os.getcwd()
        workspace = os.path.abspath(workspace)
        if not os.path.isdir(workspace):
            raise ValueError(f"The workspace {workspace} to mount in the kernel is not a folder.")
        working_dir = working_dir_in(workspace, cwd or workspace)
        if working_dir is None:
            self.log.warning(
                "Kernel %s: %s is outside the workspace %s; it starts in the workspace.",
                self.kernel_id,
                cwd,
                workspace,
            )
            working_dir = workspace
        self._workspace, self._working_dir = workspace, working_dir
        self._uid_gid = self._user_for(workspace)

    def _user_for(self, workspace: str) -> tuple[int, int]:
        return user_for(workspace, self.user, self.allow_root)

    def _resources_for(self, env: dict[str, str]) -> dict[str, Any]:
        """Container limits from configuration, overridden by KERNEL_* in the start's env."""
        out = container_limits(
            env.get("KERNEL_CPUS") or self.cpus,
            env.get("KERNEL_MEMORY") or self.mem_limit,
            env.get("KERNEL_GPUS", self.gpus),
        )
        if self.pids_limit > 0:
            out["pids_limit"] = self.pids_limit
        return out

    def _container_env(self, env: dict[str, str]) -> dict[str, str]:
        out = allowed_env(
            {k: v for k, v in env.items() if not k.startswith("KERNEL_")}, self.env_allowlist
        )
        spec_env = getattr(self.kernel_spec, "env", None) or {}
        out.update({k: env[k] for k in spec_env if k in env})
        out.update(self.extra_env)
        out["HOME"] = self.home
        # The container's init signals the kernel's whole process group, like a local kernel.
        out["TINI_KILL_PROCESS_GROUP"] = "1"
        return out

    def _connection_file(self, ip: str) -> bytes:
        info = {
            k: v.decode() if isinstance(v, bytes) else v for k, v in self.connection_info.items()
        }
        info["ip"] = ip
        return json.dumps(info, indent=1).encode()

    def _request(
        self, cmd: list[str], env: dict[str, str], connection_file: bytes, ports: list[int]
    ) -> ContainerRequest:
        uid, gid = self._uid_gid
        return ContainerRequest(
            role="kernel",
            name=f"jupyter-kernel-{str(self.kernel_id)[:8]}-{os.urandom(3).hex()}",
            image=self.image,
            command=tuple(cmd),
            workspace=self._workspace,
            working_dir=self._working_dir,
            uid=uid,
            gid=gid,
            instance_id=self._instance_id(),
            environment=self._container_env(env),
            labels={**self.extra_labels, L.KERNEL_ID: str(self.kernel_id), L.ENV: self.env_name},
            home=self.home,
            network=self.network,
            ports=tuple(ports),
            # The kernel binds every interface of its container; only its user may read it.
            files=(ContainerFile(CONNECTION_FILE, connection_file, 0o400),),
            warm=self._warm_start(cmd),
            placement=tuple(self.placement),
            **self._resources,
        )

    def _warm_start(self, cmd: list[str]) -> WarmStart | None:
        preload = WARM_PRELOAD.get(cmd[2]) if len(cmd) > 2 and cmd[1] == "-m" else None
        if not preload or self.warm_pool_size <= 0:
            return None
        return WarmStart(size=self.warm_pool_size, preload=preload, claim_env=CLAIM_ENV)

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> KernelConnectionInfo:
        request = self._request(
            cmd, kwargs.get("env") or {}, self._connection_file("0.0.0.0"), self._ports
        )
        try:
            launched = await self.containers.launch(request)
        except ContainerError as exc:
            raise self._explain(exc) from exc
        except EngineUnavailable:
            self.engine_lost = True  # a restart that cannot work: the restarter says so
            raise
        self.container_id, self.warm_started = launched.container_id, launched.warm
        self.connection_info = {**self.connection_info, "ip": launched.ip}
        await self._until_listening()
        self.log.debug(
            "Kernel %s runs in container %s (%s start)",
            self.kernel_id,
            self.container_id,
            "warm" if launched.warm else "cold",
        )
        return self.connection_info

    # -- warm pools ------------------------------------------------------------------------
    def pool_settings(self) -> PoolSettings:
        return PoolSettings(
            memory_budget=parse_memory(self.warm_pool_memory),
            idle_timeout=self.warm_pool_idle_timeout,
            gpus=self.warm_pool_gpus,
        )

    def warm_request(self, env: dict[str, str]) -> ContainerRequest | None:
        """The request a kernel of this spec would make in the workspace, started with ``env``
        (for a pool made ahead of any start); None when its kernels start cold."""
        self._resources = self._resources_for(env)
        self._place(None)
        cmd = [arg.replace("{connection_file}", CONNECTION_FILE) for arg in self.kernel_cmd]
        request = self._request(cmd, env, b"", [0] * len(_CHANNELS))
        return request if request.warm else None

    def _where(self) -> str:
        return (
            self.engine.host
            or self.docker_host
            or os.environ.get("DOCKER_HOST")
            or "the local socket"
        )

    def _explain(self, exc: ContainerError) -> Exception:
        """The engine's refusal in the user's terms."""
        where = self._where()
        if exc.kind == "no-gpu-runtime":
            return RuntimeError(
                f"GPU requested (gpus={self._resources['device_requests']}) but the Docker engine "
                f"at {where} has no NVIDIA runtime ({exc}): install the NVIDIA Container Toolkit "
                "on the Docker host, or turn gpu off for this environment."
            )
        if exc.kind == "no-image":
            return RuntimeError(
                f"The image {self.image} of environment {self.env_name or '?'} is not on the "
                f"Docker engine at {where}: build the environment again, or recreate it from a "
                "notebook that records it with `jupyter docker-env restore NOTEBOOK.ipynb`. "
                f"({exc})"
            )
        return RuntimeError(f"The Docker engine at {where} could not start the kernel: {exc}")

    # -- lifecycle -------------------------------------------------------------------------
    async def poll(self) -> int | None:
        if self.container_id is None:
            return self.exit_code if self.exit_code is not None else 0
        try:
            state = await self.containers.state(self.container_id)
        except EngineUnavailable as exc:
            return await self._poll_without_engine(exc)
        self._engine_silent = False
        if state is None:
            self._record_exit(-1, False, "its container was removed from outside Jupyter")
            return self.exit_code
        if state.running:
            return None
        if self.exit_code is None:
            self._record_exit(state.exit_code or 0, state.oom_killed, state.error)
            if self.exit_reason and not self.oom_killed:
                logs = await self.containers.logs(self.container_id)
                self.log.error("Kernel %s output before it stopped:\n%s", self.kernel_id, logs)
        return self.exit_code

    async def _poll_without_engine(self, exc: EngineUnavailable) -> int | None:
        """The engine does not answer: the kernel lives while its heartbeat port does."""
        if self.exit_code is not None:
            return self.exit_code
        if await self._heartbeat_answers():
            if not self._engine_silent:
                self.log.warning(
                    "Kernel %s: the Docker engine does not answer, but the kernel does: %s",
                    self.kernel_id,
                    exc,
                )
            self._engine_silent = True
            return None
        self.exit_code, self.engine_lost = -1, True
        self.exit_reason = (
            f"its container stopped with the Docker engine at {self._where()}, which no longer "
            "answers. Start Docker again, then start a new kernel."
        )
        self.log.error("Kernel %s: %s (%s)", self.kernel_id, self.exit_reason, exc)
        return self.exit_code

    async def _heartbeat_answers(self, within: float = 1.0) -> bool:
        ip, port = self.connection_info.get("ip"), self.connection_info.get("hb_port")
        if not ip or not port:
            return False
        try:
            connecting = asyncio.open_connection(str(ip), int(port))
            _, writer = await asyncio.wait_for(connecting, within)
        except (OSError, TimeoutError):
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True

    async def _until_listening(self) -> None:
        """Return once the kernel has bound its ports (its heartbeat's is bound last).

        Clients that connect earlier are refused and retry only after ZeroMQ's reconnect
        interval, and a status published before their iopub connects is lost to them: waiting
        here makes the first reply come sooner. Bounded: a kernel that never listens (it failed)
        is left to poll() and the client's own timeout.
        """
        deadline = time.monotonic() + LISTEN_WAIT
        checked = time.monotonic()
        while time.monotonic() < deadline:
            if await self._heartbeat_answers(within=0.5):
                return
            if time.monotonic() - checked > 0.5:  # still running? (one engine call)
                checked = time.monotonic()
                if self.container_id is None or await self.poll() is not None:
                    return
            await asyncio.sleep(0.005)

    def _record_exit(self, code: int, oom: bool, why: str) -> None:
        self.exit_code, self.oom_killed = code, oom
        if oom:
            limit = self._resources.get("mem_limit")
            shown = human_size(limit) if limit else "none set: the Docker host ran out"
            self.exit_reason = (
                f"kernel was killed because it ran out of memory (limit {shown}). Free memory "
                "in the notebook, or start the kernel with more (KERNEL_MEMORY, or "
                "c.DockerEnvProvisioner.mem_limit)."
            )
        elif why or (not self._stopping and code != 0):
            self.exit_reason = f"kernel stopped with exit code {code}" + (f": {why}" if why else "")
        if self.exit_reason:
            self.log.error("Kernel %s (%s): %s", self.kernel_id, self.env_name, self.exit_reason)

    async def wait(self) -> int | None:
        if self.container_id is None:
            return self.exit_code
        # The engine's own wait would hold a worker thread for the kernel's whole life.
        while (code := await self.poll()) is None:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        await self._remove_container()
        return code

    async def send_signal(self, signum: int) -> None:
        if self.container_id is None or signum == 0:
            return
        try:
            await self.containers.signal(self.container_id, int(signum))
        except EngineUnavailable as exc:
            # a shutdown goes on (what outlives the engine's return is swept); an interrupt
            # cannot reach the kernel now
            self.log.warning("Kernel %s not signalled (%s): %s", self.kernel_id, signum, exc)

    async def kill(self, restart: bool = False) -> None:
        self._stopping = True
        await self.send_signal(signal.SIGKILL)

    async def terminate(self, restart: bool = False) -> None:
        self._stopping = True
        await self.send_signal(signal.SIGTERM)

    async def shutdown_requested(self, restart: bool = False) -> None:
        self._stopping = True

    async def cleanup(self, restart: bool = False) -> None:
        await self._remove_container()
        if not restart and self._ports:
            self.containers.release_ports(self.network, self._instance_id(), self._ports)
            self._ports = []
        if not restart:
            with contextlib.suppress(OSError):
                (_ledger(self._instance_id()) / str(self.kernel_id)).unlink()

    async def _remove_container(self) -> None:
        if self.container_id is not None:
            try:
                await self.containers.remove(self.container_id)
            except EngineUnavailable:
                self.log.warning(
                    "Kernel %s: container %s is removed when the server next starts (the Docker "
                    "engine does not answer now)",
                    self.kernel_id,
                    self.container_id[:12],
                )
            self.container_id = None

    def resolve_path(self, path: str) -> str | None:
        """Paths the kernel names are host paths too: the workspace is at the same place."""
        full = os.path.normpath(os.path.join(self._working_dir or self._workspace, path))
        return full if within(full, self._workspace) and os.path.exists(full) else None

    # -- persistence -----------------------------------------------------------------------
    async def get_provisioner_info(self) -> dict[str, Any]:
        info = await super().get_provisioner_info()
        info.update(container_id=self.container_id, docker_host=self.docker_host)
        return info

    async def load_provisioner_info(self, provisioner_info: dict[str, Any]) -> None:
        await super().load_provisioner_info(provisioner_info)
        self.container_id = provisioner_info.get("container_id")
        self.docker_host = provisioner_info.get("docker_host") or ""
