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
  crash is found and swept (:func:`sweep_orphans`).

Where the container runs is a back end's business (``backend``; :mod:`..containers`): the local
engine by default, which also decides how the server reaches the kernel's ports.

Server instances. Every container carries the id of the server instance that started it:
:func:`instance_id_for` derives it from the host, OS user, root dir and port, so a server that
crashed and restarts with the same settings finds what it left behind and removes it with
:func:`sweep_orphans`. Outside a Jupyter server (nbclient, scripts) the id is unique to the process.
"""

from __future__ import annotations

import asyncio
import fnmatch
import hashlib
import json
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

from jupyter_client.connect import KernelConnectionInfo
from jupyter_client.provisioning.provisioner_base import KernelProvisionerBase
from jupyter_core.paths import jupyter_runtime_dir
from traitlets import Bool, Dict, Enum, Float, Int, List, Unicode, Union

from .. import labels as L
from ..containers import (
    ContainerBackend,
    ContainerError,
    ContainerFile,
    ContainerRequest,
    backend_class,
)
from ..engine import Engine, shared_engine
from .resources import human_size, parse_cpus, parse_gpus, parse_memory

#: Where the connection file lives inside the kernel's container (0700 dir, 0400 file).
CONTAINER_RUNTIME_DIR = "/run/jupyter-docker-env"
CONNECTION_FILE = f"{CONTAINER_RUNTIME_DIR}/kernel.json"
_CHANNELS = ("shell", "iopub", "stdin", "hb", "control")


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


_backends: dict[tuple[str, str | None, str], ContainerBackend] = {}


def backend_for(name: str, engine: Engine, connect_mode: str = "auto") -> ContainerBackend:
    """One back end per kind, engine and connect mode for the whole process (it holds state
    that kernels share, such as network sandboxes and their ports)."""
    key = (name, engine.host, connect_mode)
    if key not in _backends:
        files = Path(jupyter_runtime_dir()) / "docker-env-files"
        _backends[key] = backend_class(name)(engine, files, connect_mode)
    return _backends[key]


async def sweep_orphans(engine: Engine, instance_id: str, backend: str = "local") -> list[str]:
    """Remove every container labelled with ``instance_id`` (and the files kept for them).

    Call it when a server starts (before any kernel of it runs): it removes the kernels and the
    network sandbox that a crashed predecessor with the same id left behind.
    """
    return await backend_for(backend, engine).sweep(instance_id)


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


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
        help="Where kernels' containers run: 'local' (the Docker engine at docker_host), or the "
        "dotted path of a ContainerBackend class.",
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

    container_id: str | None = None
    #: Set once the kernel's container has exited.
    exit_code: int | None = None
    oom_killed: bool = False
    #: Why the kernel stopped, in the user's terms, when it did not stop on request.
    exit_reason: str | None = None
    _stopping = False
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
        return backend_for(self.backend, self.engine, str(self.connect_mode))

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
        self._resources = self._resources_for(kwargs.get("env") or {})
        self._place(kwargs.get("cwd"))
        await self._choose_ports(km)
        km.write_connection_file(
            jupyter_session=(kwargs.get("env") or {}).get("JPY_SESSION_NAME", "")
        )
        self.connection_info = km.get_connection_info()
        cmd = [arg.replace("{connection_file}", CONNECTION_FILE) for arg in self.kernel_cmd]
        cmd += kwargs.pop("extra_arguments", [])
        self.exit_code, self.oom_killed, self.exit_reason, self._stopping = None, False, None, False
        return await super().pre_launch(cmd=cmd, **kwargs)

    async def _choose_ports(self, km: Any) -> None:
        """Ports the back end can reach, kept across restarts where it can."""
        names = [f"{c}_port" for c in _CHANNELS]
        wanted = [int(getattr(km, n) or 0) for n in names]
        if not all(wanted):
            km.cleanup_connection_file()
            km.write_connection_file()  # jupyter_client picks free ports
            wanted = [int(getattr(km, n)) for n in names]
        ports = await self.containers.reachable_ports(self.network, self._instance_id(), wanted)
        if ports != wanted:
            for name, port in zip(names, ports, strict=True):
                setattr(km, name, port)
            km.cleanup_connection_file()  # ports changed: the file must be written anew
        self._ports = ports

    def _place(self, cwd: str | None) -> None:
        """Decide the workspace, the working directory and the user (uid, gid)."""
        mkm, _ = self._server
        workspace = self.workspace or getattr(mkm, "root_dir", None) or cwd or os.getcwd()
        workspace = os.path.abspath(workspace)
        if not os.path.isdir(workspace):
            raise ValueError(f"The workspace {workspace} to mount in the kernel is not a folder.")
        working_dir = os.path.abspath(cwd or workspace)
        if not _within(working_dir, workspace):
            real_ws, real_wd = os.path.realpath(workspace), os.path.realpath(working_dir)
            if _within(real_wd, real_ws):
                working_dir = os.path.join(workspace, os.path.relpath(real_wd, real_ws))
            else:
                self.log.warning(
                    "Kernel %s: %s is outside the workspace %s; it starts in the workspace.",
                    self.kernel_id,
                    working_dir,
                    workspace,
                )
                working_dir = workspace
        self._workspace, self._working_dir = workspace, working_dir
        self._uid_gid = self._user_for(workspace)

    def _user_for(self, workspace: str) -> tuple[int, int]:
        st = os.stat(workspace)
        if self.user:
            uid_s, _, gid_s = self.user.partition(":")
            try:
                uid, gid = int(uid_s), int(gid_s) if gid_s else st.st_gid
            except ValueError:
                raise ValueError(
                    f'c.DockerEnvProvisioner.user = {self.user!r}: use numeric "uid:gid".'
                ) from None
        else:
            uid, gid = st.st_uid, st.st_gid
        if uid == 0 and not self.allow_root:
            raise PermissionError(
                f"The kernel would run as root: {'user is 0' if self.user else ''}"
                f"{'' if self.user else f'the workspace {workspace} belongs to root'}. "
                'Set c.DockerEnvProvisioner.user = "uid:gid" (the workspace owner), or allow '
                "root kernels with c.DockerEnvProvisioner.allow_root = True."
            )
        return uid, gid

    def _resources_for(self, env: dict[str, str]) -> dict[str, Any]:
        """Container limits from configuration, overridden by KERNEL_* in the start's env."""
        out: dict[str, Any] = {}
        if cpus := env.get("KERNEL_CPUS") or self.cpus:
            out["nano_cpus"] = int(parse_cpus(cpus) * 1e9)
        memory = env.get("KERNEL_MEMORY") or self.mem_limit
        if memory and (limit := parse_memory(memory)):  # "0": no limit
            out["mem_limit"] = limit
        if self.pids_limit > 0:
            out["pids_limit"] = self.pids_limit
        gpus = env.get("KERNEL_GPUS", self.gpus)
        if request := parse_gpus(gpus):
            out["device_requests"] = (request,)
        return out

    def _container_env(self, env: dict[str, str]) -> dict[str, str]:
        out = {
            k: v
            for k, v in env.items()
            if not k.startswith("KERNEL_")
            and any(fnmatch.fnmatchcase(k, pattern) for pattern in self.env_allowlist)
        }
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

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> KernelConnectionInfo:
        uid, gid = self._uid_gid
        request = ContainerRequest(
            role="kernel",
            name=f"jupyter-kernel-{str(self.kernel_id)[:8]}-{os.urandom(3).hex()}",
            image=self.image,
            command=tuple(cmd),
            workspace=self._workspace,
            working_dir=self._working_dir,
            uid=uid,
            gid=gid,
            instance_id=self._instance_id(),
            environment=self._container_env(kwargs.get("env") or {}),
            labels={**self.extra_labels, L.KERNEL_ID: str(self.kernel_id), L.ENV: self.env_name},
            home=self.home,
            network=self.network,
            ports=tuple(self._ports),
            # The kernel binds every interface of its container; only its user may read it.
            files=(ContainerFile(CONNECTION_FILE, self._connection_file("0.0.0.0"), 0o400),),
            **self._resources,
        )
        try:
            launched = await self.containers.launch(request)
        except ContainerError as exc:
            raise self._explain(exc) from exc
        self.container_id = launched.container_id
        self.connection_info = {**self.connection_info, "ip": launched.ip}
        self.log.debug("Kernel %s runs in container %s", self.kernel_id, self.container_id)
        return self.connection_info

    def _explain(self, exc: ContainerError) -> Exception:
        """The engine's refusal in the user's terms."""
        where = (
            self.engine.host
            or self.docker_host
            or os.environ.get("DOCKER_HOST")
            or ("the local socket")
        )
        if exc.kind == "no-gpu-runtime":
            return RuntimeError(
                f"GPU requested (gpus={self._resources['device_requests']}) but the Docker engine "
                f"at {where} has no NVIDIA runtime ({exc}): install the NVIDIA Container Toolkit "
                "on the Docker host, or turn gpu off for this environment."
            )
        if exc.kind == "refused":
            return PermissionError(f"The kernel was refused: {exc}")
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
        state = await self.containers.state(self.container_id)
        if state is None:
            self._record_exit(-1, False, "its container was removed from outside Jupyter")
            return self.exit_code
        if state.running:
            return None
        if self.exit_code is None:
            self._record_exit(state.exit_code or 0, state.oom_killed, "")
            if self.exit_reason and not self.oom_killed:
                logs = await self.containers.logs(self.container_id)
                self.log.error("Kernel %s output before it stopped:\n%s", self.kernel_id, logs)
        return self.exit_code

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
        await self.containers.signal(self.container_id, int(signum))

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

    async def _remove_container(self) -> None:
        if self.container_id is not None:
            await self.containers.remove(self.container_id)
            self.container_id = None

    def resolve_path(self, path: str) -> str | None:
        """Paths the kernel names are host paths too: the workspace is at the same place."""
        full = os.path.normpath(os.path.join(self._working_dir or self._workspace, path))
        return full if _within(full, self._workspace) and os.path.exists(full) else None

    # -- persistence -----------------------------------------------------------------------
    async def get_provisioner_info(self) -> dict[str, Any]:
        info = await super().get_provisioner_info()
        info.update(container_id=self.container_id, docker_host=self.docker_host)
        return info

    async def load_provisioner_info(self, provisioner_info: dict[str, Any]) -> None:
        await super().load_provisioner_info(provisioner_info)
        self.container_id = provisioner_info.get("container_id")
        self.docker_host = provisioner_info.get("docker_host") or ""
