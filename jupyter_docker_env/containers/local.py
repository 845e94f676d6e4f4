"""Containers on the Docker engine this server talks to (the default back end).

How the server reaches a kernel's ports (``connect_mode``). Where the engine's containers are
routable from this host (a Linux engine on a local socket), kernels join a *network sandbox*: one
small container per server instance and network, holding a bridge address. Kernel containers
share its network namespace, so they start without any network set-up (~0.1 s instead of
~0.25 s) and keep the same address and ports across restarts, which open notebook connections
rely on. Nothing is published on a host interface. Elsewhere (Docker Desktop, rootless or remote
engines) the kernel's ports are published on 127.0.0.1 only.

Files a container needs (a kernel's connection file) are written on the host, owned by the
container's user, mode 0400, and bind-mounted read-only — or, when this process cannot give a
file to that user, unpacked into the container before it starts. They live under a per-instance
folder that :meth:`LocalBackend.sweep` removes with the containers.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import io
import os
import random
import shutil
import sys
import tarfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

from .. import labels as L
from ..config import os_user
from ..engine import APIError, Engine, NotFound
from . import ContainerError, ContainerRequest, ContainerState, Launched, hardening

ConnectMode = Literal["auto", "container-ip", "published"]
# Kernel ports inside a shared network sandbox: below Linux's ephemeral range (32768+), so they
# never collide with the outgoing connections of other kernels in the same sandbox.
_SANDBOX_PORTS = range(20000, 32000)
# Containers this process started and has not removed yet: removed at interpreter exit.
_live: dict[str, Engine] = {}


@atexit.register
def _remove_leftovers() -> None:
    # Best effort: what fails here is swept when the server starts again.
    with contextlib.suppress(Exception):
        for container_id, engine in list(_live.items()):
            engine.remove_container(container_id)


@dataclass
class _Sandbox:
    """The network namespace that a server instance's kernels share on one network."""

    container_id: str = ""
    ip: str = ""
    ports: set[int] = field(default_factory=set)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class LocalBackend:
    """Kernels and runs as containers of the engine this server talks to."""

    name = "local"

    def __init__(self, engine: Engine, files_dir: Path, connect_mode: ConnectMode = "auto") -> None:
        self.engine = engine
        self.files_dir = files_dir
        self.connect_mode = connect_mode
        self._mode: str | None = None
        self._sandboxes: dict[tuple[str, str], _Sandbox] = {}
        self._files: dict[str, Path] = {}  # container id → its host files' folder

    # -- reaching kernels ------------------------------------------------------------------
    async def mode(self) -> str:
        if self._mode is None:
            if self.connect_mode != "auto":
                self._mode = self.connect_mode
            else:
                routable = await self.engine.run(self._containers_routable)
                self._mode = "container-ip" if routable else "published"
        return self._mode

    def _containers_routable(self) -> bool:
        """Can this host reach containers' own addresses? (Blocking.)"""
        host = self.engine.host or os.environ.get("DOCKER_HOST") or None
        if not sys.platform.startswith("linux"):
            return False
        if host and not (host.startswith("unix://") and "desktop" not in host):
            return False
        info = self.engine.system_info()
        return "Docker Desktop" not in str(info.get("OperatingSystem", "")) and not any(
            "rootless" in str(opt) for opt in info.get("SecurityOptions") or []
        )

    async def reachable_ports(self, network: str, instance_id: str, wanted: list[int]) -> list[int]:
        if await self.mode() == "published":
            return wanted  # published on 127.0.0.1 under the same numbers
        sandbox = self._sandboxes.setdefault((instance_id, network), _Sandbox())
        return book_ports(sandbox.ports, wanted)

    def release_ports(self, network: str, instance_id: str, ports: list[int]) -> None:
        if sandbox := self._sandboxes.get((instance_id, network)):
            sandbox.ports.difference_update(ports)

    # -- lifecycle -------------------------------------------------------------------------
    async def launch(self, request: ContainerRequest) -> Launched:
        create: dict[str, Any] = {
            **hardening(request),
            "command": list(request.command),
            "name": request.name,
            "working_dir": request.working_dir,
            "environment": dict(request.environment),
            "labels": {
                **request.labels,
                L.MANAGED: "true",
                L.INSTANCE: request.instance_id,
                L.ROLE: request.role,
                L.USER: os_user(),
            },
        }
        archive = self._place_files(request, create)
        ip = ""
        if request.ports and await self.mode() == "container-ip":
            sandbox = await self._sandbox(request)
            create["network_mode"] = f"container:{sandbox.container_id}"
            ip = sandbox.ip
        elif request.ports:
            create["network"] = request.network
            create["ports"] = {f"{p}/tcp": ("127.0.0.1", p) for p in request.ports}
            ip = "127.0.0.1"
        else:
            create["network"] = request.network
        try:
            container_id = await self.engine.run(self._create_and_start, request, create, archive)
        except APIError as exc:
            self._forget_files(request.name)
            raise _explain(exc) from exc
        return Launched(container_id=container_id, ip=ip)

    async def _sandbox(self, request: ContainerRequest) -> _Sandbox:
        """The running network sandbox of the request's instance and network (started if none)."""
        sandbox = self._sandboxes.setdefault((request.instance_id, request.network), _Sandbox())
        async with sandbox.lock:
            try:
                sandbox.container_id, sandbox.ip = await self.engine.run(
                    self._find_or_start_sandbox, request, sandbox.container_id
                )
            except APIError as exc:  # the sandbox runs the kernel's image: it may be gone
                raise _explain(exc) from exc
        return sandbox

    def _place_files(self, request: ContainerRequest, create: dict[str, Any]) -> bytes | None:
        """Bind-mount the request's files from the host, or return a tar to unpack instead."""
        if not request.files:
            return None
        if request.detached or os.geteuid() not in (0, request.uid):
            # slower (the engine unpacks into the container) but needs no chown here, and a
            # detached container keeps nothing on the host that a later process must clean up
            parents = sorted({os.path.dirname(f.path) for f in request.files})
            entries: list[tuple[str, bytes | None, int]] = [(p, None, 0o700) for p in parents]
            entries += [(f.path, f.data, f.mode) for f in request.files]
            return _tar(entries, request.uid, request.gid)
        folder = self.files_dir / request.instance_id / request.name
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._files[request.name] = folder
        for i, f in enumerate(request.files):
            host = folder / f"{i}-{os.path.basename(f.path)}"
            write_host_file(host, f.data, f.mode, request.uid, request.gid)
            create["volumes"][str(host)] = {"bind": f.path, "mode": "ro"}
        return None

    def _forget_files(self, name_or_id: str) -> None:
        folder = self._files.pop(name_or_id, None)
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
            with contextlib.suppress(OSError):
                folder.parent.rmdir()  # the instance's folder, once it holds nothing

    def _create_and_start(
        self, request: ContainerRequest, create: dict[str, Any], archive: bytes | None
    ) -> str:
        """Create the container, give it its files, start it. Blocking."""
        attrs = self.engine.create_container(request.image, **create)
        container_id = str(attrs["Id"])
        if not request.detached:
            _live[container_id] = self.engine
        if request.name in self._files:
            self._files[container_id] = self._files.pop(request.name)
        try:
            if archive:
                self.engine.put_archive(container_id, "/", archive)
            self.engine.start_container(container_id)
        except BaseException:
            self._remove(container_id)
            raise
        return container_id

    def _find_or_start_sandbox(self, request: ContainerRequest, known: str) -> tuple[str, str]:
        """The (id, ip) of a running sandbox for this instance and network; start one if none.

        Blocking.
        """
        engine, network = self.engine, request.network
        if known and (attrs := engine.inspect_container(known)) and attrs["State"]["Running"]:
            return known, _ip(attrs, network)
        labels = {L.MANAGED: "true", L.INSTANCE: request.instance_id, L.ROLE: "sandbox"}
        for summary in engine.containers({**labels, L.NETWORK: network}):
            attrs = engine.inspect_container(summary["Id"])
            if attrs and attrs["State"]["Running"] and (ip := _ip(attrs, network)):
                return str(attrs["Id"]), ip
            engine.remove_container(summary["Id"])
        extra = {k: v for k, v in request.labels.items() if not k.startswith(L.PREFIX)}
        attrs = engine.create_container(
            request.image,
            command=["sleep", "infinity"],
            entrypoint=[],
            name=f"jupyter-docker-env-net-{request.instance_id[-8:]}-{os.urandom(3).hex()}",
            labels={**extra, **labels, L.NETWORK: network, L.USER: os_user()},
            network=network,
            init=True,
            user="65534:65534",
            read_only=True,
            cap_drop=["ALL"],
            security_opt=["no-new-privileges:true"],
            mem_limit=32 * 1024**2,
            pids_limit=8,
        )
        _live[attrs["Id"]] = engine
        try:
            engine.start_container(attrs["Id"])
            running = engine.inspect_container(attrs["Id"]) or {}
        except Exception:
            engine.remove_container(attrs["Id"])
            _live.pop(attrs["Id"], None)
            raise
        return str(attrs["Id"]), _ip(running, network)

    async def state(self, container_id: str) -> ContainerState | None:
        attrs = await self.engine.run(self.engine.inspect_container, container_id)
        if attrs is None:
            return None
        state = attrs["State"]
        running = bool(state["Running"]) or state["Status"] in ("created", "restarting")
        return ContainerState(
            running=running,
            exit_code=None if running else int(state["ExitCode"]),
            oom_killed=bool(state.get("OOMKilled")),
            error=str(state.get("Error") or ""),
        )

    async def signal(self, container_id: str, signum: int) -> None:
        await self.engine.run(self.engine.kill_container, container_id, signal=int(signum))

    async def remove(self, container_id: str) -> None:
        await self.engine.run(self._remove, container_id)

    def _remove(self, container_id: str) -> None:
        self.engine.remove_container(container_id)
        _live.pop(container_id, None)
        self._forget_files(container_id)

    async def logs(self, container_id: str, tail: int = 20) -> str:
        return await self.engine.run(self.engine.container_logs, container_id, tail)

    async def changes(self, container_id: str) -> list[str]:
        return await self.engine.run(self.engine.container_changes, container_id)

    async def copy_from(self, container_id: str, path: str, into: IO[bytes]) -> None:
        await self.engine.run(self.engine.copy_from_container, container_id, path, into)

    async def find(self, labels: Mapping[str, str]) -> list[str]:
        found = await self.engine.run(self.engine.containers, {**labels, L.MANAGED: "true"})
        return [str(c["Id"]) for c in found]

    async def sweep(self, instance_id: str) -> list[str]:
        found = await self.engine.run(
            self.engine.containers, {L.MANAGED: "true", L.INSTANCE: instance_id}
        )
        removed = []
        for container in found:
            await self.remove(str(container["Id"]))
            removed.append(str(container["Id"]))
        for key in [k for k in self._sandboxes if k[0] == instance_id]:
            self._sandboxes.pop(key, None)
        shutil.rmtree(self.files_dir / instance_id, ignore_errors=True)
        return removed


def book_ports(taken: set[int], wanted: list[int]) -> list[int]:
    """Ports for a kernel in a network sandbox whose kernels hold ``taken`` (updated).

    A restart keeps the ports it had (same address, same ports: open connections survive).
    """
    if wanted and all(p in taken for p in wanted):
        return wanted
    free = [p for p in _SANDBOX_PORTS if p not in taken]
    ports = random.sample(free, len(wanted))
    taken.update(ports)
    return ports


def write_host_file(path: Path, data: bytes, mode: int, uid: int, gid: int) -> None:
    """Write a file a container will read, as its user's (never through a planted link)."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    if os.geteuid() == 0:
        os.chown(path, uid, gid)


def _ip(attrs: dict[str, Any], network: str) -> str:
    networks = attrs["NetworkSettings"]["Networks"] or {}
    settings: dict[str, Any] = networks.get(network) or next(iter(networks.values()), {})
    return str(settings.get("IPAddress") or "")


def _tar(entries: list[tuple[str, bytes | None, int]], uid: int, gid: int) -> bytes:
    """A tar of (path, data or None for a directory, mode) entries owned by uid:gid."""
    buf = io.BytesIO()
    now = time.time()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path, data, mode in entries:
            info = tarfile.TarInfo(path.lstrip("/"))
            info.mode, info.uid, info.gid, info.mtime = mode, uid, gid, now
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _explain(exc: APIError) -> ContainerError:
    """The engine's refusal, classified: callers put it in the user's terms."""
    text = str(getattr(exc, "explanation", None) or exc)
    if "could not select device driver" in text:
        return ContainerError(text, kind="no-gpu-runtime")
    if isinstance(exc, NotFound) and "image" in text.lower():
        return ContainerError(text, kind="no-image")
    return ContainerError(text, kind="engine")
