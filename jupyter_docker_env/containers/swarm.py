"""Kernels and runs as Docker Swarm services (``c.DockerEnvProvisioner.backend = "swarm"``).

Each kernel or run is a service with one task, restart condition none, labelled as its local
container would be, on an attachable overlay network of its server instance (one per user on a
hub, since each user's server is its own instance), with a ``dnsrr`` endpoint: this back end
never needs a service's virtual IP or the ingress routing mesh (IPVS). The server's engine must
be a Swarm manager. docs/swarm.md is the operator's guide; the choices in short:

- **Reaching a kernel.** A host is never on an overlay network, but a container attached to one
  is. The server instance's *network sandbox* is a small container on the server's own engine,
  on a network the server routes to (``network``, the bridge by default) and on the instance's
  overlay; it runs :mod:`.relay` (with the environment image's ``python3``, so images stay plain
  environment images), which pipes each kernel port from the sandbox's bridge address to the
  kernel task's overlay address. The server tells it what to relay through a Unix socket in a
  folder only the server's user can open. Nothing is published on any node's interfaces, kernel
  traffic between nodes can be encrypted (``network_options``), and ports, like the address,
  survive kernel restarts. It costs one userland hop: benchmarks/swarm_kernel_start.py.
- **Files** a container needs (the connection file with the server's key) become Swarm secrets:
  encrypted in the managers' store, sent only to the node that runs the task, mounted on tmpfs
  with the kernel user's uid, gid and mode 0400; the service spec only references them.
- **Images** are named by registry digest, so every node runs the same bytes and no node asks a
  registry which tag is current; a build for Swarm pushes its content-hash tag
  (c.DockerEnvApp.push_builds) and pre-pulls it on every node with a global job
  (:meth:`SwarmBackend.prepull`), so no kernel start waits for a pull.
- **The workspace** follows the kernel: a shared path at the same place on every node, a volume
  every node can mount (an NFS export through the local driver, say), or, by default, the server's
  own node only (``workspace_mount``).
- **Signals** cannot reach a task on another node: interrupts go to the kernel as messages
  (``interrupt_mode = "message"``), and terminate/kill stop the task (its service scaled to
  zero, keeping the exit for the provisioner to read).
- **A lost node** (Down in the manager's view) makes its kernels dead with the node named, within
  the dispatcher's heartbeat period times about three, instead of a kernel that hangs.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import secrets as _random
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from traitlets import Bool, Dict, Enum, Float, List, Unicode, default
from traitlets.config import LoggingConfigurable

from .. import labels as L
from ..config import os_user
from ..engine import APIError, Engine, EngineError
from . import ContainerError, ContainerRequest, ContainerState, Launched, hardening

#: Task states before the container has stopped (the manager's view).
_LIVE = {
    "new", "allocated", "pending", "assigned", "accepted", "preparing", "ready", "starting",
    "running",
}  # fmt: skip
_ENDED = {"shutdown": "shut down", "orphaned": "lost", "remove": "removed"}
# Kernel ports in the network sandbox: below Linux's ephemeral range, as for local kernels.
_SANDBOX_PORTS = range(20000, 32000)
_RELAY_DIR = "/run/jupyter-docker-env-relay"  # the relay's folder inside the sandbox
# The role label of the Swarm network sandbox: unlike a local back end's sandbox, kernels never
# join its network namespace, so neither back end may take the other's for its own.
_RELAY_ROLE = "relay"
_RELAY = Path(__file__).with_name("relay.py")
_SOCKET_PATH_MAX = 100  # AF_UNIX paths are at most 107 bytes


@dataclass
class _Relay:
    """The network sandbox of a server instance: its container, address and relayed ports."""

    container_id: str = ""
    ip: str = ""
    folder: Path | None = None
    started_for: tuple[ContainerRequest, str] | None = None  # (a request, the overlay)
    ports: set[int] = field(default_factory=set)  # allocated to this instance's kernels
    targets: dict[tuple[int, ...], str] = field(default_factory=dict)  # ports → task address
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def socket(self) -> Path:
        assert self.folder is not None
        return self.folder / "control.sock"


@dataclass
class _Launch:
    """What this process remembers of a service it started."""

    relay: _Relay | None
    ports: tuple[int, ...]
    mem_limit: int | None
    stop_signal: int = 0  # set once Jupyter asked it to stop


@dataclass(frozen=True)
class Cluster:
    """The manager this server talks to."""

    node_id: str
    api_version: tuple[int, int]


def _api(version: str | None) -> tuple[int, int]:
    major, _, minor = (version or "1.41").partition(".")
    return int(major), int(minor or 0)


class SwarmBackend(LoggingConfigurable):
    """Kernels and runs as services of the Swarm whose manager is the server's engine."""

    name = "swarm"
    #: Signals cannot reach a task on another node; ipykernel takes interrupts on its control
    #: channel (the provisioner sets the kernel spec's interrupt_mode from this).
    interrupt_mode = "message"

    workspace_mount = Enum(
        ["server-node", "shared-path", "volume"],
        default_value="server-node",
        config=True,
        help="How the workspace reaches a kernel on any node. server-node: kernels run only on "
        "the server's own node (a constraint), where the workspace is. shared-path: every node "
        "has the workspace at the same path (a shared file system mounted alike everywhere). "
        "volume: every node mounts it as a volume of workspace_volume_driver with "
        "workspace_volume_options (e.g. an NFS export through the local driver).",
    )
    workspace_volume_driver = Unicode(
        "local",
        config=True,
        help="The volume driver of the workspace volume (workspace_mount = 'volume').",
    )
    workspace_volume_options = Dict(
        key_trait=Unicode(),
        value_trait=Unicode(),
        config=True,
        help="Driver options of the workspace volume; '{workspace}' in a value is replaced by "
        "the workspace's path. NFS through the local driver: {'type': 'nfs', 'o': "
        "'addr=nfs.example.com,rw,nfsvers=4.1', 'device': ':/export{workspace}'}.",
    )
    placement = List(
        Unicode(),
        config=True,
        help="Swarm placement constraints of every kernel and run, e.g. "
        "['node.labels.pool==notebooks']; a kernel spec adds its own "
        "(c.DockerEnvProvisioner.placement).",
    )
    gpu_scheduling = Enum(
        ["label", "generic-resource"],
        default_value="label",
        config=True,
        help="How a kernel or run that asks for GPUs gets them. label: it runs only on nodes of "
        "gpu_placement, whose NVIDIA runtime (their default runtime) gives it the GPUs it names, "
        "or all of the node's; kernels on a node share its GPUs. generic-resource: it reserves "
        "that many gpu_resource generic resources, so GPUs are never shared; but Swarm's "
        "constraint enforcer stops tasks that hold generic resources whenever their node is "
        "updated (a label, a restart, another overlay network reaching it): see docs/swarm.md.",
    )
    gpu_resource = Unicode(
        "NVIDIA-GPU",
        config=True,
        help="The generic resource kind GPU nodes advertise (daemon.json node-generic-resources: "
        "KIND=GPU-uuid), for gpu_scheduling = 'generic-resource'.",
    )
    gpu_placement = List(
        Unicode(),
        default_value=["node.labels.gpu==true"],
        config=True,
        help="Placement constraints added when a kernel or run asks for GPUs: the node pool "
        "that has them.",
    )
    reserve = Float(
        1.0,
        min=0.0,
        max=1.0,
        config=True,
        help="The fraction of a kernel's CPU and memory limits that its task reserves, so the "
        "scheduler places it only where that much is free. 1: no overcommit; 0: reserve nothing.",
    )
    network_options = Dict(
        key_trait=Unicode(),
        value_trait=Unicode(),
        config=True,
        help="Driver options of each server instance's overlay network, e.g. {'encrypted': ''} "
        "to encrypt kernel traffic between nodes (IPsec; ESP must pass between nodes).",
    )
    start_timeout = Float(
        60.0,
        config=True,
        help="Seconds a kernel's task may take to start running (scheduling, pulling, "
        "starting) before the start fails with the task's last status.",
    )
    stop_grace_period = Float(
        10.0,
        config=True,
        help="Seconds between the stop signal and SIGKILL when a task is stopped.",
    )
    registry = Unicode(
        config=True,
        help="The registry (HOST[:PORT]/NAMESPACE) whose digests name images in services. "
        "Default: c.DockerEnvApp.registry; empty: any registry the image was pushed to.",
    )
    prepull = Bool(
        True,
        config=True,
        help="After each build, pull the new image on every node (a global job), so that no "
        "kernel start waits for a pull.",
    )
    prepull_timeout = Float(
        900.0, config=True, help="Seconds a pre-pull may take on all nodes together."
    )

    @default("registry")
    def _default_registry(self) -> str:
        return str(self.config.get("DockerEnvApp", {}).get("registry", ""))

    def __init__(
        self, engine: Engine, files_dir: Path, connect_mode: str = "auto", **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        if connect_mode not in ("auto", "container-ip"):
            raise ValueError(
                f"connect_mode {connect_mode!r}: the swarm back end reaches kernels through its "
                "network sandbox on the server's own engine, at its container address; use "
                "'auto' (docs/swarm.md)"
            )
        self.engine = engine
        self.files_dir = files_dir
        self._cluster: Cluster | None = None
        self._overlays: dict[str, str] = {}  # instance id → overlay network id
        self._relays: dict[tuple[str, str], _Relay] = {}
        self._launched: dict[str, _Launch] = {}
        self._nodes: dict[str, dict[str, Any]] = {}
        self._nodes_at = 0.0
        self._lock = asyncio.Lock()

    # -- the cluster -----------------------------------------------------------------------
    async def cluster(self) -> Cluster:
        if self._cluster is None:
            self._cluster = await self.engine.run(self._find_cluster)
        return self._cluster

    def _find_cluster(self) -> Cluster:
        info = self.engine.system_info()
        swarm = info.get("Swarm") or {}
        if not swarm.get("ControlAvailable"):
            where = self.engine.host or os.environ.get("DOCKER_HOST") or "the local socket"
            state = swarm.get("LocalNodeState") or "inactive"
            raise ContainerError(
                f"The Docker engine at {where} is not a Swarm manager (swarm: {state}), and only "
                "a manager can run kernels as services. Point c.DockerEnvProvisioner.docker_host "
                "at a manager, or set c.DockerEnvProvisioner.backend = 'local'.",
                kind="not-a-manager",
            )
        version = self.engine.api_version()
        if _api(version) < (1, 41):
            raise ContainerError(
                f"The Swarm manager speaks Docker API {version}; the swarm back end needs 1.41 "
                "(Docker 20.10) or later for capability, process and init settings of tasks.",
                kind="engine",
            )
        return Cluster(node_id=str(swarm["NodeID"]), api_version=_api(version))

    async def _node(self, node_id: str) -> dict[str, Any] | None:
        """A node as the manager saw it at most a second ago."""
        if time.monotonic() - self._nodes_at > 1.0 or node_id not in self._nodes:
            nodes = await self.engine.run(self.engine.nodes)
            self._nodes = {n["ID"]: n for n in nodes}
            self._nodes_at = time.monotonic()
        return self._nodes.get(node_id)

    # -- reaching kernels ------------------------------------------------------------------
    async def reachable_ports(self, network: str, instance_id: str, wanted: list[int]) -> list[int]:
        relay = self._relays.setdefault((instance_id, network), _Relay())
        if wanted and all(p in relay.ports for p in wanted):
            return wanted  # a restart: same ports, same address
        free = [p for p in _SANDBOX_PORTS if p not in relay.ports]
        ports = _random.SystemRandom().sample(free, len(wanted))
        relay.ports.update(ports)
        return ports

    def release_ports(self, network: str, instance_id: str, ports: list[int]) -> None:
        if relay := self._relays.get((instance_id, network)):
            relay.ports.difference_update(ports)

    # -- lifecycle -------------------------------------------------------------------------
    async def launch(self, request: ContainerRequest) -> Launched:
        cluster = await self.cluster()
        image = await self.engine.run(self._pinned, request.image)
        if request.device_requests and self.gpu_scheduling == "generic-resource":
            await self.engine.run(self._check_gpus, request)
        # Only what the server must reach joins the instance's overlay; a run's task keeps to
        # its node's default bridge (and does not touch the node: see the GPU caveat).
        overlay = await self._overlay(request.instance_id) if request.ports else ""
        relay = await self._relay(request, overlay) if request.ports else None
        secret_refs = await self.engine.run(self._create_secrets, request)
        try:
            spec = self.service_spec(request, image, overlay, secret_refs, cluster)
            service_id = await self.engine.run(self.engine.create_service, spec)
        except BaseException as exc:
            await self.engine.run(self._remove_secrets, [r["SecretID"] for r in secret_refs])
            if isinstance(exc, APIError):
                raise ContainerError(_explanation(exc)) from exc
            raise
        self._launched[service_id] = _Launch(relay, request.ports, request.mem_limit)
        try:
            task = await self._running(service_id)
            if relay is not None:
                await self._map(relay, request.ports, _address(task, overlay))
        except BaseException:
            await self.remove(service_id)
            raise
        self.log.debug("%s runs as service %s on node %s", request.name, service_id, task["NodeID"])
        return Launched(container_id=service_id, ip=relay.ip if relay else "")

    async def _running(self, service_id: str) -> dict[str, Any]:
        """The service's task once it runs; ContainerError when it cannot."""
        deadline = time.monotonic() + self.start_timeout
        delay = 0.02
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            tasks = await self.engine.run(self.engine.tasks, service_id)
            if tasks:
                last = tasks[0]
                state = last["Status"]["State"]
                if state == "running" or _ran(last):
                    return last  # how it ended, if it did already, is state()'s to say
                if state not in _LIVE:
                    raise _task_error(last)
                if _unplaceable(str(last["Status"].get("Err") or "")):
                    constraints = last["Spec"].get("Placement", {}).get("Constraints") or []
                    raise ContainerError(
                        f"no node of the Swarm fits its placement ({', '.join(constraints)}): "
                        f"{last['Status']['Err']}",
                        kind="placement",
                    )
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.25)
        status = last.get("Status") or {}
        why = status.get("Err") or status.get("Message") or "no task yet"
        raise ContainerError(
            f"its task did not start within {self.start_timeout:g} s "
            f"(c.SwarmBackend.start_timeout); last state {status.get('State', 'none')}: {why}",
            kind="timeout",
        )

    async def state(self, container_id: str) -> ContainerState | None:
        tasks = await self.engine.run(self.engine.tasks, container_id)
        launch = self._launched.get(container_id)
        stopped = launch.stop_signal if launch else 0
        if not tasks:
            return ContainerState(running=False, exit_code=128 + stopped) if stopped else None
        task = tasks[0]
        status = task["Status"]
        state = status["State"]
        if state in _LIVE:
            node = await self._node(str(task.get("NodeID") or ""))
            node_state = ((node or {}).get("Status") or {}).get("State", "ready")
            if node is not None and node_state in ("down", "disconnected"):
                name = _hostname(node)
                addr = (node.get("Status") or {}).get("Addr", "?")
                return ContainerState(
                    running=False,
                    exit_code=-1,
                    error=f"its node {name} ({addr}) stopped answering the Swarm manager "
                    f"(node {node_state}) and took the kernel with it",
                )
            return ContainerState(running=True)
        code = (status.get("ContainerStatus") or {}).get("ExitCode")
        if stopped:
            return ContainerState(running=False, exit_code=code or 128 + stopped)
        if state == "complete":
            return ContainerState(running=False, exit_code=0)
        if state == "failed":
            code = int(code if code is not None else -1)
            # Nodes report only the exit code. SIGKILL (137) that Jupyter did not send, with a
            # memory limit set, is the kernel's out-of-memory killer: docs/swarm.md.
            oom = code == 128 + signal.SIGKILL and bool(launch and launch.mem_limit)
            return ContainerState(running=False, exit_code=code, oom_killed=oom)
        return ContainerState(running=False, exit_code=int(code) if code else -1, error=_why(task))

    async def signal(self, container_id: str, signum: int) -> None:
        if signum in (signal.SIGTERM, signal.SIGKILL, signal.SIGQUIT, signal.SIGHUP):
            launch = self._launched.setdefault(container_id, _Launch(None, (), None))
            if not launch.stop_signal:
                launch.stop_signal = int(signum)
                await self.engine.run(self.engine.scale_service, container_id, 0)
            return
        # A task on another node is out of reach of signals; interrupts go as messages.
        self.log.warning(
            "Swarm cannot deliver signal %s to service %s; ignored", int(signum), container_id
        )

    async def remove(self, container_id: str) -> None:
        launch = self._launched.pop(container_id, None)
        if launch is not None and launch.relay is not None and launch.ports:
            with contextlib.suppress(ContainerError, OSError):
                await self._control(launch.relay, {"unmap": list(launch.ports)})
            launch.relay.targets.pop(launch.ports, None)
        await self.engine.run(self._remove_service, container_id)

    def _remove_service(self, service_id: str) -> None:
        """Remove a service and the secrets it holds. (Blocking.)"""
        service = self.engine.inspect_service(service_id) or {}
        container = service.get("Spec", {}).get("TaskTemplate", {}).get("ContainerSpec", {})
        self.engine.remove_service(service_id)
        self._remove_secrets([r["SecretID"] for r in container.get("Secrets") or []])

    async def logs(self, container_id: str, tail: int = 20) -> str:
        return await self.engine.run(self.engine.service_logs, container_id, tail)

    async def find(self, labels: Mapping[str, str]) -> list[str]:
        found = await self.engine.run(self.engine.services, {**labels, L.MANAGED: "true"})
        return [str(service["ID"]) for service in found]

    async def changes(self, container_id: str) -> list[str]:
        local = await self._container_here(container_id)
        return await self.engine.run(self.engine.container_changes, local)

    async def copy_from(self, container_id: str, path: str, into: IO[bytes]) -> None:
        local = await self._container_here(container_id)
        await self.engine.run(self.engine.copy_from_container, local, path, into)

    async def _container_here(self, service_id: str) -> str:
        """The container of the service's task, when it ran on the server's own node: the
        manager cannot reach into a container on another node (a snapshot run's files)."""
        cluster = await self.cluster()
        tasks = await self.engine.run(self.engine.tasks, service_id)
        if not tasks:
            raise ContainerError(f"the service {service_id} is gone", kind="gone")
        task = tasks[0]
        if task.get("NodeID") != cluster.node_id:
            node = await self._node(str(task.get("NodeID")))
            raise ContainerError(
                f"its task ran on node {_hostname(node) if node else '?'}, and Swarm cannot "
                "copy files out of a container on another node: write results into the "
                "workspace (runs without --snapshot), or keep tasks on the server's node "
                "(c.SwarmBackend.workspace_mount = 'server-node')",
                kind="unsupported",
            )
        return str(task["Status"]["ContainerStatus"]["ContainerID"])

    async def sweep(self, instance_id: str) -> list[str]:
        try:
            await self.cluster()
        except ContainerError as exc:
            self.log.warning("Not sweeping Swarm services: %s", exc)
            return []
        return await self.engine.run(self._sweep, instance_id)

    def _sweep(self, instance_id: str) -> list[str]:
        owned: dict[str, str | None] = {L.MANAGED: "true", L.INSTANCE: instance_id}
        removed = []
        for service in self.engine.services(owned):
            self._remove_service(service["ID"])
            removed.append(str(service["ID"]))
        self._remove_secrets([s["ID"] for s in self.engine.secrets(owned)])
        for container in self.engine.containers({**owned, L.ROLE: _RELAY_ROLE}):
            attrs = self.engine.inspect_container(container["Id"]) or {}
            self.engine.remove_container(container["Id"])
            removed.append(str(container["Id"]))
            for mount in attrs.get("Mounts") or []:
                if mount.get("Destination") == _RELAY_DIR:
                    shutil.rmtree(mount["Source"], ignore_errors=True)
        with contextlib.suppress(OSError):
            (self.files_dir / instance_id).rmdir()  # once it holds nothing (local kernels' files)
        for network in self.engine.networks(owned):
            self._remove_network(network["Id"])
        for key in [k for k in self._relays if k[0] == instance_id]:
            self._relays.pop(key)
        self._overlays.pop(instance_id, None)
        return removed

    def _remove_network(self, network_id: str) -> None:
        # Tasks leave the network a moment after their service is gone.
        deadline = time.monotonic() + 15
        while True:
            try:
                self.engine.remove_network(network_id)
                return
            except APIError as exc:
                if time.monotonic() > deadline:
                    self.log.warning("Overlay network %s stays: %s", network_id, exc)
                    return
                time.sleep(0.25)

    # -- what a service is made of ---------------------------------------------------------
    def service_spec(
        self,
        request: ContainerRequest,
        image: str,
        overlay: str,
        secret_refs: list[dict[str, Any]],
        cluster: Cluster,
    ) -> dict[str, Any]:
        """The service for ``request`` (Docker API shape): :func:`hardening`, translated.

        Every hardening option is either carried over or refused, so a new confinement cannot
        be silently dropped on Swarm.
        """
        options = hardening(request)
        labels = {
            **request.labels,
            L.MANAGED: "true",
            L.INSTANCE: request.instance_id,
            L.ROLE: request.role,
            L.USER: os_user(),
        }
        container: dict[str, Any] = {
            "Image": image,
            "Args": list(request.command),
            "Env": [f"{k}={v}" for k, v in request.environment.items()],
            "Dir": request.working_dir,
            "Labels": labels,
            "User": options.pop("user"),
            "Init": options.pop("init"),
            "StopGracePeriod": int(self.stop_grace_period * 1e9),
            "Secrets": secret_refs,
            "Mounts": [],
        }
        if options.pop("privileged"):
            raise ContainerError("Swarm services cannot be privileged", kind="engine")
        if caps := options.pop("cap_drop", None):
            container["CapabilityDrop"] = caps
        for opt in options.pop("security_opt", []):
            if opt != "no-new-privileges:true":
                raise ContainerError(f"security option {opt!r} has no Swarm equivalent")
            _no_new_privileges(container, cluster)
        for source, bind in options.pop("volumes").items():
            if source != request.workspace:
                raise ContainerError(f"only the workspace can be mounted on Swarm, not {source}")
            container["Mounts"].append(self._workspace_mount(request.workspace, bind["bind"]))
        for target in options.pop("tmpfs", {}):
            # Swarm's tmpfs takes no owner: a private HOME, sticky and world-writable like /tmp
            container["Mounts"].append(
                {"Type": "tmpfs", "Target": target, "TmpfsOptions": {"Mode": 0o1777}}
            )
        limits: dict[str, Any] = {}
        reservations: dict[str, Any] = {}
        if pids := options.pop("pids_limit", None):
            limits["Pids"] = pids
        if nano := options.pop("nano_cpus", None):
            limits["NanoCPUs"] = nano
            reservations["NanoCPUs"] = int(nano * self.reserve)
        if memory := options.pop("mem_limit", None):
            options.pop("memswap_limit", None)  # Swarm has no swap setting: docs/swarm.md
            limits["MemoryBytes"] = memory
            reservations["MemoryBytes"] = int(memory * self.reserve)
        constraints = [*self.placement, *request.placement]
        if requests := options.pop("device_requests", None):
            constraints += self.gpu_placement
            if self.gpu_scheduling == "generic-resource":
                reservations["GenericResources"] = [
                    {"DiscreteResourceSpec": {"Kind": self.gpu_resource, "Value": self._gpus(r)}}
                    for r in requests
                ]
            else:  # what `docker run --gpus` tells the NVIDIA runtime, as variables
                ids = [i for r in requests for i in r.get("device_ids") or []]
                container["Env"] += [
                    f"NVIDIA_VISIBLE_DEVICES={','.join(ids) or 'all'}",
                    "NVIDIA_DRIVER_CAPABILITIES=compute,utility",
                ]
        if self.workspace_mount == "server-node":
            constraints.append(f"node.id=={cluster.node_id}")
        if options:
            raise ContainerError(
                f"hardening option(s) {', '.join(sorted(options))} have no Swarm translation "
                "yet: jupyter_docker_env/containers/swarm.py must carry them over"
            )
        return {
            "Name": request.name,
            "Labels": labels,
            "TaskTemplate": {
                "ContainerSpec": container,
                "Resources": {
                    "Limits": limits,
                    "Reservations": {k: v for k, v in reservations.items() if v},
                },
                "RestartPolicy": {"Condition": "none", "MaxAttempts": 0},
                "Placement": {"Constraints": list(dict.fromkeys(constraints))},
                "Networks": [{"Target": overlay}] if overlay else [],
            },
            "Mode": {"Replicated": {"Replicas": 1}},
            "EndpointSpec": {"Mode": "dnsrr"},
        }

    def _workspace_mount(self, workspace: str, target: str) -> dict[str, Any]:
        if self.workspace_mount != "volume":
            return {"Type": "bind", "Source": workspace, "Target": target, "ReadOnly": False}
        options = {
            k: v.replace("{workspace}", workspace) for k, v in self.workspace_volume_options.items()
        }
        # One volume per driver and options: a node keeps a local volume's first options.
        key = json.dumps([self.workspace_volume_driver, sorted(options.items())])
        name = "jde-workspace-" + _digest(key)
        return {
            "Type": "volume",
            "Source": name,
            "Target": target,
            "ReadOnly": False,
            "VolumeOptions": {
                "NoCopy": True,
                "Labels": {L.MANAGED: "true"},
                "DriverConfig": {"Name": self.workspace_volume_driver, "Options": options},
            },
        }

    def _gpus(self, request: dict[str, Any]) -> int:
        count = int(request.get("count") or 0)
        if request.get("device_ids") or count < 1:
            raise ContainerError(
                "On Swarm, ask for a number of GPUs (KERNEL_GPUS=1): the scheduler picks the "
                "devices from what nodes advertise, so 'all' and device ids cannot be reserved",
                kind="gpu",
            )
        return count

    def _check_gpus(self, request: ContainerRequest) -> None:
        """Fail now, not after start_timeout, when no node could ever take the GPUs."""
        wanted = max(self._gpus(dict(r)) for r in request.device_requests)
        best = 0
        for node in self.engine.nodes():
            resources = (node.get("Description") or {}).get("Resources") or {}
            have = 0
            for res in resources.get("GenericResources") or []:
                if (d := res.get("DiscreteResourceSpec")) and d.get("Kind") == self.gpu_resource:
                    have += int(d.get("Value", 0))
                if (n := res.get("NamedResourceSpec")) and n.get("Kind") == self.gpu_resource:
                    have += 1
            best = max(best, have)
        if best < wanted:
            raise ContainerError(
                f"{wanted} GPU(s) requested, but no node of the Swarm advertises that many "
                f"{self.gpu_resource} resources (the most on one node: {best}). GPU nodes "
                f"advertise them in daemon.json (node-generic-resources: "
                f'["{self.gpu_resource}=GPU-…"]) and carry the labels of '
                f"c.SwarmBackend.gpu_placement ({', '.join(self.gpu_placement) or 'none'}); "
                "see docs/swarm.md",
                kind="gpu",
            )

    # -- images ----------------------------------------------------------------------------
    def _pinned(self, image: str) -> str:
        """``image`` as a registry digest that every node can pull, or, where tasks stay on the
        server's node, as the image id there. (Blocking.)"""
        if "@sha256:" in image:
            return image
        data = self.engine.inspect_image(image)
        if data is None:
            raise ContainerError(
                f"the image {image} is not on the server's Docker engine: build the "
                "environment again",
                kind="no-image",
            )
        digests = [str(d) for d in data.get("RepoDigests") or []]
        prefix = self.registry.rstrip("/") + "/" if self.registry else ""
        chosen = [d for d in digests if d.startswith(prefix)] or digests
        if not chosen and self.workspace_mount == "server-node":
            # every task runs on this engine's node, which has the image: by its id
            return str(data["Id"])
        if not chosen:
            raise ContainerError(
                f"the image {image} was never pushed to a registry, so the Swarm's nodes cannot "
                "pull it: set c.DockerEnvApp.registry (builds then push for Swarm) and build "
                "again, or push it (`jupyter docker-env push ENV`)",
                kind="not-in-registry",
            )
        return chosen[0]

    def prepull_image(
        self,
        image: str,
        emit: Callable[[str], None],
        check: Callable[[], None] = lambda: None,
    ) -> list[str]:
        """Pull ``image`` (a digest) on every node kernels may use, with a global job; wait.

        Returns the nodes where it failed, each with the node's reason. ``check`` is called
        while it waits (an operation's cancel raises there). (Blocking.)
        """
        container = {
            "Image": image,
            "Args": ["true"],  # what runs matters not: a task that started had its image
            "User": "65534:65534",
            "CapabilityDrop": ["ALL"],
            "Labels": {L.MANAGED: "true", L.ROLE: "prepull"},
        }
        self._cluster = self._cluster or self._find_cluster()
        _no_new_privileges(container, self._cluster)
        spec = {
            "Name": f"jde-prepull-{_digest(image)[:12]}-{os.urandom(3).hex()}",
            "Labels": {L.MANAGED: "true", L.ROLE: "prepull"},
            "TaskTemplate": {
                "ContainerSpec": container,
                "Resources": {"Limits": {"MemoryBytes": 64 * 1024**2, "Pids": 16}},
                "RestartPolicy": {"Condition": "none", "MaxAttempts": 0},
                "Placement": {"Constraints": list(self.placement)},
            },
            "Mode": {"GlobalJob": {}},
        }
        service_id = self.engine.create_service(spec)
        try:
            deadline = time.monotonic() + self.prepull_timeout
            while True:
                tasks = self.engine.tasks(service_id)
                waiting = [t for t in tasks if t["Status"]["State"] in _LIVE]
                if tasks and not waiting:
                    break
                if time.monotonic() > deadline:
                    late = f"{len(waiting)} node(s) still pulling after {self.prepull_timeout:g} s"
                    return [late]
                check()
                time.sleep(0.5)
            names = {n["ID"]: _hostname(n) for n in self.engine.nodes()}
            failed = []
            for task in tasks:
                status = task["Status"]
                node = names.get(task.get("NodeID"), "?")
                # A pull that worked gets as far as starting the container ("true" may be absent)
                if status["State"] == "rejected" or status.get("Message") == "preparing":
                    failed.append(f"{node}: {status.get('Err') or status['State']}")
                else:
                    emit(f"Pulled on {node}")
            return failed
        finally:
            self.engine.remove_service(service_id)

    # -- the instance's overlay and network sandbox -----------------------------------------
    async def _overlay(self, instance_id: str) -> str:
        if instance_id not in self._overlays:
            async with self._lock:
                if instance_id not in self._overlays:
                    self._overlays[instance_id] = await self.engine.run(
                        self._find_or_create_overlay, instance_id
                    )
        return self._overlays[instance_id]

    def _find_or_create_overlay(self, instance_id: str) -> str:
        owned: dict[str, str | None] = {L.MANAGED: "true", L.INSTANCE: instance_id}
        for network in self.engine.networks(owned):
            if network.get("Driver") == "overlay" and self.engine.in_swarm(network["Id"]):
                return str(network["Id"])
        return self.engine.create_network(
            f"jde-{instance_id}-{os.urandom(2).hex()}",  # a removed one may linger by its name
            driver="overlay",
            attachable=True,
            labels={**owned, L.USER: os_user()},
            options=dict(self.network_options) or None,
        )

    async def _relay(self, request: ContainerRequest, overlay: str) -> _Relay:
        relay = self._relays.setdefault((request.instance_id, request.network), _Relay())
        async with relay.lock:
            if not relay.container_id:
                await self.engine.run(self._start_relay, relay, request, overlay)
        return relay

    async def _map(self, relay: _Relay, ports: tuple[int, ...], target: str) -> None:
        relay.targets[ports] = target
        message = {"map": {"bind": relay.ip, "ports": list(ports), "target": target}}
        try:
            await self._control(relay, message)
        except (OSError, TimeoutError):
            if relay.started_for is None:
                raise
            # The sandbox is gone (removed from outside, or out of memory): start it again and
            # give it every kernel of this instance, not only this one.
            async with relay.lock:
                await self.engine.run(self._start_relay, relay, *relay.started_for)
            for each_ports, each_target in list(relay.targets.items()):
                each = {"bind": relay.ip, "ports": list(each_ports), "target": each_target}
                await self._control(relay, {"map": each})

    async def _control(self, relay: _Relay, message: dict[str, Any]) -> None:
        reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(relay.socket)), 5)
        try:
            writer.write(json.dumps(message).encode() + b"\n")
            await writer.drain()
            reply = json.loads(await asyncio.wait_for(reader.readline(), 10) or b"{}")
        finally:
            writer.close()
        if not reply.get("ok"):
            raise ContainerError(f"the network sandbox refused {message}: {reply.get('error')}")

    def _start_relay(self, relay: _Relay, request: ContainerRequest, overlay: str) -> None:
        """Start the instance's network sandbox with its relay; wait for its socket. Blocking."""
        labels: dict[str, str | None] = {
            L.MANAGED: "true",
            L.INSTANCE: request.instance_id,
            L.ROLE: _RELAY_ROLE,
            L.NETWORK: request.network,
        }
        for old in self.engine.containers(labels):  # an earlier life's, whose socket is lost
            self.engine.remove_container(old["Id"])
        folder = self._relay_folder(request.instance_id)
        shutil.copy(_RELAY, folder / "relay.py")
        # the relay runs as the server's user, never as root
        uid, gid = (os.getuid(), os.getgid()) if os.getuid() else (65534, 65534)
        if os.geteuid() == 0:
            os.chown(folder, uid, gid)
        extra = {k: v for k, v in request.labels.items() if not k.startswith(L.PREFIX)}
        attrs = self.engine.create_container(
            request.image,
            command=["python3", f"{_RELAY_DIR}/relay.py", f"{_RELAY_DIR}/control.sock"],
            entrypoint=[],
            name=f"jupyter-docker-env-relay-{request.instance_id[-8:]}-{os.urandom(3).hex()}",
            labels={**extra, **labels, L.USER: os_user()},
            network=request.network,
            volumes={str(folder): {"bind": _RELAY_DIR, "mode": "rw"}},
            init=True,
            user=f"{uid}:{gid}",
            read_only=True,
            cap_drop=["ALL"],
            security_opt=["no-new-privileges:true"],
            mem_limit=64 * 1024**2,
            pids_limit=64,
        )
        container_id = str(attrs["Id"])
        try:
            self.engine.connect_network(overlay, container_id)
            self.engine.start_container(container_id)
            running = self.engine.inspect_container(container_id) or {}
            networks = running.get("NetworkSettings", {}).get("Networks") or {}
            ip = str((networks.get(request.network) or {}).get("IPAddress") or "")
            deadline = time.monotonic() + 20
            while not (folder / "control.sock").exists():
                state = (self.engine.inspect_container(container_id) or {}).get("State", {})
                if not state.get("Running") or time.monotonic() > deadline:
                    logs = self.engine.container_logs(container_id, 10)
                    raise ContainerError(
                        f"the network sandbox's relay did not start (it needs python3 in the "
                        f"image {request.image}): {logs.strip() or state.get('Error') or '?'}"
                    )
                time.sleep(0.02)
        except BaseException:
            self.engine.remove_container(container_id)
            shutil.rmtree(folder, ignore_errors=True)
            raise
        if relay.folder is not None and relay.folder != folder:
            shutil.rmtree(relay.folder, ignore_errors=True)
        relay.container_id, relay.ip, relay.folder = container_id, ip, folder
        relay.started_for = (request, overlay)

    def _relay_folder(self, instance_id: str) -> Path:
        """A fresh folder only this user can open, short enough for a socket path."""
        folder = self.files_dir / instance_id / f"relay-{os.urandom(3).hex()}"
        if len(str(folder / "control.sock")) <= _SOCKET_PATH_MAX:
            folder.mkdir(parents=True, mode=0o700)
            return folder
        return Path(tempfile.mkdtemp(prefix="jde-relay-"))

    # -- secrets ---------------------------------------------------------------------------
    def _create_secrets(self, request: ContainerRequest) -> list[dict[str, Any]]:
        """One secret per file, owned by the container's user. (Blocking.)"""
        labels = {L.MANAGED: "true", L.INSTANCE: request.instance_id, L.ROLE: request.role}
        refs: list[dict[str, Any]] = []
        try:
            for i, f in enumerate(request.files):
                name = f"{request.name}-{i}-{os.urandom(3).hex()}"[-64:].lstrip("-.")
                secret_id = self.engine.create_secret(name, f.data, labels)
                refs.append(
                    {
                        "SecretID": secret_id,
                        "SecretName": name,
                        "File": {
                            "Name": f.path,
                            "UID": str(request.uid),
                            "GID": str(request.gid),
                            "Mode": f.mode,
                        },
                    }
                )
        except BaseException:
            self._remove_secrets([r["SecretID"] for r in refs])
            raise
        return refs

    def _remove_secrets(self, secret_ids: list[str]) -> None:
        for secret_id in secret_ids:
            with contextlib.suppress(EngineError, APIError):
                self.engine.remove_secret(secret_id)


def _no_new_privileges(container: dict[str, Any], cluster: Cluster) -> None:
    """Keep a task's processes from gaining privileges (setuid binaries, file capabilities)."""
    if cluster.api_version >= (1, 44):
        container["Privileges"] = {"NoNewPrivileges": True}
    else:  # a service cannot ask for it before API 1.44: util-linux's setpriv does
        container["Args"] = ["setpriv", "--no-new-privs", "--", *container["Args"]]


def _address(task: dict[str, Any], overlay: str) -> str:
    for attachment in task.get("NetworksAttachments") or []:
        if attachment["Network"]["ID"] == overlay and attachment.get("Addresses"):
            return str(attachment["Addresses"][0]).split("/")[0]
    raise ContainerError(f"the task {task['ID']} has no address on its overlay network")


def _unplaceable(err: str) -> bool:
    """Does the scheduler say that no node may ever take the task? Not when a node lacks free
    resources or is unavailable right now: those may change while the start waits."""
    reasons = err.partition("(")[2].rstrip(")").split(";")
    return err.startswith("no suitable node") and all(
        "constraints not satisfied" in reason for reason in reasons
    )


def _ran(task: dict[str, Any]) -> bool:
    """Did the task's container start (whatever happened since)?"""
    status = task["Status"]
    return status["State"] == "complete" or (
        status["State"] in ("failed", "shutdown") and status.get("Message") == "started"
    )


def _why(task: dict[str, Any]) -> str:
    """Why a task stopped, in Swarm's words, with what to do where Swarm itself is the cause."""
    status = task["Status"]
    why = str(status.get("Err") or status.get("Message") or "?")
    reserved = task.get("Spec", {}).get("Resources", {}).get("Reservations") or {}
    if reserved.get("GenericResources") and "no longer meets constraints" in why:
        why += (
            " (Swarm's constraint enforcer stops tasks that hold generic resources whenever "
            "their node is updated; c.SwarmBackend.gpu_scheduling = 'label' avoids it: "
            "docs/swarm.md)"
        )
    return f"Swarm {_ENDED.get(status['State'], status['State'])} its task: {why}"


def _task_error(task: dict[str, Any]) -> ContainerError:
    why = _why(task)
    low = why.lower()
    if "no such image" in low or "pull access denied" in low or "manifest unknown" in low:
        return ContainerError(f"a node could not pull the image: {why}", kind="no-image")
    return ContainerError(why)


def _explanation(exc: APIError) -> str:
    return str(getattr(exc, "explanation", None) or exc)


def _hostname(node: dict[str, Any]) -> str:
    return str((node.get("Description") or {}).get("Hostname") or node["ID"])


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]
