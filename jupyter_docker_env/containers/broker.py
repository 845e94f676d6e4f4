"""Containers started by the launch broker (``c.DockerEnvProvisioner.backend = "broker"``).

For a single-user server on a shared JupyterHub, which has no Docker socket (its kernels, and
its training runs, which use the kernels' back end): each
:class:`~..containers.ContainerRequest` is sent to the broker as intent — image, command, working
directory, environment, ports, files, resources — and the broker decides the rest (the user's
uid/gid, the workspace volume, the user's network, limits). The request's own ``uid``, ``gid``,
``workspace`` and ``network`` are not sent.

Reaching kernels: the broker runs a user's kernels in a network sandbox on the user's own bridge
network and attaches the user's server container to that network, so the server connects to the
sandbox's address; other users' kernels sit on other bridges, which Docker keeps apart. As with
the local back end, kernels of one server share the sandbox (one address, ports kept across
restarts), so the ports are booked here, per server instance.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from ..broker.client import BrokerClient, BrokerError, quoted
from ..engine import Engine
from . import ContainerError, ContainerRequest, ContainerState, Launched
from .local import book_ports


def request_body(request: ContainerRequest) -> dict[str, Any]:
    """The broker's request for a container: what the client may ask for, nothing more."""
    resources: dict[str, Any] = {}
    if request.nano_cpus:
        resources["cpus"] = request.nano_cpus / 1e9
    if request.mem_limit:
        resources["memory"] = request.mem_limit
    if request.pids_limit:
        resources["pids"] = request.pids_limit
    for device in request.device_requests:
        ids = device.get("device_ids")
        count = device.get("count", 0)
        resources["gpus"] = ",".join(ids) if ids else ("all" if count == -1 else count)
    return {
        "role": request.role,
        "image": request.image,
        "command": list(request.command),
        "working_dir": request.working_dir,
        "environment": dict(request.environment),
        "labels": dict(request.labels),
        "home": request.home,
        "ports": list(request.ports),
        "files": [
            {"path": f.path, "data": base64.b64encode(f.data).decode(), "mode": f.mode}
            for f in request.files
        ],
        "instance": request.instance_id,
        "resources": resources,
        "detached": request.detached,
    }


def _container_error(exc: BrokerError) -> ContainerError:
    return ContainerError(f"the launch broker: {exc}", kind=exc.kind or "engine")


class BrokerBackend:
    """Kernels and runs as containers the launch broker starts (see the module's docstring)."""

    name = "broker"

    def __init__(self, engine: Engine, files_dir: Path, connect_mode: str = "auto") -> None:
        self.client = BrokerClient.instance()
        self._ports: dict[tuple[str, str], set[int]] = {}

    async def reachable_ports(self, network: str, instance_id: str, wanted: list[int]) -> list[int]:
        return book_ports(self._ports.setdefault((instance_id, network), set()), wanted)

    def release_ports(self, network: str, instance_id: str, ports: list[int]) -> None:
        if taken := self._ports.get((instance_id, network)):
            taken.difference_update(ports)

    async def launch(self, request: ContainerRequest) -> Launched:
        try:
            data = await self.client.fetch("POST", "containers", request_body(request))
        except BrokerError as exc:
            raise _container_error(exc) from exc
        return Launched(container_id=str(data["id"]), ip=str(data["ip"]))

    async def _call(self, method: str, path: str, body: Any = None) -> Any:
        """A call about one container; None when the broker says it is gone (404)."""
        try:
            return await self.client.fetch(method, path, body)
        except BrokerError as exc:
            if exc.status == 404:
                return None
            raise _container_error(exc) from exc

    async def state(self, container_id: str) -> ContainerState | None:
        data = await self._call("GET", f"containers/{quoted(container_id)}")
        if data is None:
            return None
        return ContainerState(
            running=bool(data["running"]),
            exit_code=data.get("exit_code"),
            oom_killed=bool(data.get("oom_killed")),
            error=str(data.get("error") or ""),
        )

    async def signal(self, container_id: str, signum: int) -> None:
        await self._call("POST", f"containers/{quoted(container_id)}/signal", {"signal": signum})

    async def remove(self, container_id: str) -> None:
        await self._call("DELETE", f"containers/{quoted(container_id)}")

    async def logs(self, container_id: str, tail: int = 20) -> str:
        data = await self._call("GET", f"containers/{quoted(container_id)}/logs?tail={int(tail)}")
        return str((data or {}).get("logs", ""))

    async def changes(self, container_id: str) -> list[str]:
        data = await self._call("GET", f"containers/{quoted(container_id)}/changes")
        return [str(p) for p in (data or {}).get("changes", [])]

    async def copy_from(self, container_id: str, path: str, into: IO[bytes]) -> None:
        try:
            await self.client.stream(
                f"containers/{quoted(container_id)}/archive?path={quoted(path)}", into.write
            )
        except BrokerError as exc:
            raise _container_error(exc) from exc

    async def find(self, labels: Mapping[str, str]) -> list[str]:
        query = "&".join(f"label={quoted(f'{k}={v}')}" for k, v in labels.items())
        data = await self._call("GET", f"containers?{query}")
        return [str(c["id"]) for c in (data or {}).get("containers", [])]

    async def sweep(self, instance_id: str) -> list[str]:
        data = await self._call("POST", "sweep", {"instance": instance_id})
        return [str(i) for i in (data or {}).get("removed", [])]
