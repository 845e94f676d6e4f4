"""Kernels on a Docker Swarm: the swarm back end against a real two-node Swarm on this machine.

The module's fixture makes the Swarm with scripts/swarm-cluster.sh (the engine that runs here as
manager, a second dockerd in its own network namespace as worker, advertising one fake GPU) and
takes it down again afterwards, the engine back out of swarm mode. Other sessions' swarm tests
wait for it (a lock file); other tests on the engine are not disturbed: its containers, images and
builds work the same in swarm mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from jupyter_client.manager import AsyncKernelManager
from traitlets.config import Config

from jupyter_docker_env import labels as L
from jupyter_docker_env.config import DockerEnvConfig
from jupyter_docker_env.containers import ContainerError, ContainerFile, ContainerRequest
from jupyter_docker_env.containers.swarm import Cluster, SwarmBackend
from jupyter_docker_env.engine import Engine, shared_engine
from jupyter_docker_env.environments.manager import EnvironmentManager
from jupyter_docker_env.kernels.provisioner import (
    CONNECTION_FILE,
    backend_for,
    instance_id_for,
    sweep_orphans,
)
from jupyter_docker_env.models import BuildOptions, RunRequest
from jupyter_docker_env.runs.manager import RunManager

from .audit.jde_confinement import RELAY_DIR
from .conftest import (
    JDE_PREFIX,
    JDE_SESSION,
    JDE_TEST_LABEL,
    REPO,
    check_inside,
    jde_build_image,
    jde_cannot,
)
from .test_provisioner import (  # the same kernel specs and workspace, on another back end
    KernelSpecFactory,
    exit_code,
    jde_kernel_spec,
    jde_workspace,
    provisioner,
    run_code,
)

__all__ = ["jde_kernel_spec", "jde_workspace"]  # fixtures used by name

INSTANCE = f"test-swarm-{uuid.uuid4().hex[:8]}"
SCRIPT = REPO / "scripts" / "swarm-cluster.sh"
FAKE_GPU = "GPU-jde-test-0"


@dataclass(frozen=True)
class Swarm:
    manager: str  # node ids
    worker: str
    worker_hostname: str
    worker_engine: Engine  # the worker's own dockerd, to look at what is on it

    @property
    def on_worker(self) -> list[str]:
        """A kernel's placement on the worker node."""
        return [f"node.hostname=={self.worker_hostname}"]


# -- the two-node Swarm ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def jde_swarm(jde_engine: Engine) -> Iterator[Swarm]:
    if os.geteuid() != 0:
        jde_cannot("a two-node Swarm on one machine needs root (a network namespace, a dockerd)")
    for tool in ("ip", "nsenter", "unshare", "dockerd", "docker-registry"):
        if shutil.which(tool) is None:
            jde_cannot(f"{tool} is missing: the two-node Swarm needs it (scripts/swarm-cluster.sh)")
    # One test Swarm per machine at a time: another session's swarm tests finish first.
    with open(Path(tempfile.gettempdir()) / "jde-swarm-test.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        env = {**os.environ, "JDE_SWARM_WORKER_GPUS": FAKE_GPU}
        up = subprocess.run(
            ["bash", str(SCRIPT), "up"], env=env, capture_output=True, text=True, timeout=180
        )
        try:
            assert up.returncode == 0, f"the two-node Swarm did not come up:\n{up.stderr}"
            worker, hostname, worker_host = up.stdout.split()
            manager = str(jde_engine.system_info()["Swarm"]["NodeID"])
            worker_engine = Engine(worker_host)
            yield Swarm(manager, worker, hostname, worker_engine)
            worker_engine.close()
        finally:
            down = subprocess.run(
                ["bash", str(SCRIPT), "down"], env=env, capture_output=True, text=True, timeout=180
            )
            assert down.returncode == 0, down.stderr
            assert jde_engine.system_info()["Swarm"]["LocalNodeState"] == "inactive"


@pytest.fixture(scope="module")
def jde_instance(jde_engine: Engine, jde_swarm: Swarm) -> Iterator[str]:
    """This module's server instance; its services, secrets, sandbox and overlay go after."""
    yield INSTANCE
    asyncio.run(sweep_orphans(jde_engine, INSTANCE, "swarm"))
    assert jde_engine.services({L.INSTANCE: INSTANCE}) == []
    assert jde_engine.secrets({L.INSTANCE: INSTANCE}) == []
    backend = backend_for("swarm", shared_engine(None))
    assert isinstance(backend, SwarmBackend)
    assert not (backend.files_dir / INSTANCE).exists()  # the relay's socket folder
    # (its overlay lingers while the lost worker's task holds it: the Swarm goes next)


@pytest.fixture(scope="module")
def jde_swarm_registry(jde_engine: Engine, jde_registry: str) -> Iterator[str]:
    """This module's namespace in the loopback registry every node pulls from (the worker
    reads the same storage); what it pushed there is deleted afterwards."""
    namespace = f"{jde_registry}/{JDE_PREFIX}-on-swarm"
    yield namespace
    for image in jde_engine.images(reference=f"{namespace}/*"):
        for ref in image.get("RepoTags") or []:
            jde_engine.remove_image(ref, force=True)  # a finished task's container may hold it
    with urllib.request.urlopen(f"http://{jde_registry}/v2/_catalog?n=1000") as answer:
        repos = json.load(answer)["repositories"]
    for repo in repos:
        if not repo.startswith(namespace.split("/", 1)[1] + "/"):
            continue
        with urllib.request.urlopen(f"http://{jde_registry}/v2/{repo}/tags/list") as answer:
            tags = json.load(answer)["tags"] or []
        for tag in tags:
            digest = jde_engine.registry_digest(f"{jde_registry}/{repo}:{tag}")
            delete = urllib.request.Request(
                f"http://{jde_registry}/v2/{repo}/manifests/{digest}", method="DELETE"
            )
            with contextlib.suppress(urllib.error.HTTPError):  # two tags, one manifest
                urllib.request.urlopen(delete).close()


@pytest.fixture(scope="module")
def jde_swarm_image(
    jde_swarm: Swarm, jde_engine: Engine, jde_kernel_image: str, jde_swarm_registry: str
) -> str:
    """The kernel image (kernel specs name it by its local tag), pushed to the registry and
    pulled on both nodes as a build for Swarm does, so no start waits for a pull."""
    image_id = str((jde_engine.inspect_image(jde_kernel_image) or {})["Id"])
    remote = f"{jde_swarm_registry}/kernel:{image_id.split(':')[1][:12]}"
    jde_engine.tag(image_id, *remote.rsplit(":", 1))
    for _ in jde_engine.push(remote):
        pass
    backend = backend_for("swarm", shared_engine(None))
    assert isinstance(backend, SwarmBackend)
    digest = f"{remote.rsplit(':', 1)[0]}@{jde_engine.registry_digest(remote)}"
    pulled: list[str] = []
    assert backend.prepull_image(digest, pulled.append) == []
    assert sorted(pulled) == sorted(
        f"Pulled on {n}" for n in (jde_engine.system_info()["Name"], jde_swarm.worker_hostname)
    )
    assert jde_swarm.worker_engine.inspect_image(digest) is not None
    return jde_kernel_image


@pytest.fixture
def jde_backend(
    jde_swarm: Swarm, jde_swarm_image: str, monkeypatch: pytest.MonkeyPatch
) -> SwarmBackend:
    """The process's swarm back end (the one provisioners use); settings changed per test.

    Both nodes share this machine's file system, so the workspace is a shared path."""
    backend = backend_for("swarm", shared_engine(None))
    assert isinstance(backend, SwarmBackend)
    monkeypatch.setattr(backend, "workspace_mount", "shared-path")
    return backend


@pytest.fixture
def jde_kernel(
    jde_kernel_spec: KernelSpecFactory,
    jde_workspace: Path,
    jp_asyncio_loop: asyncio.AbstractEventLoop,
) -> Iterator[Callable[..., Any]]:
    """Start Swarm kernels (``env``, config overrides as keyword args) in the workspace's
    notebook folder; all are shut down afterwards. (Swarm kernels always start cold.)"""
    managers: list[AsyncKernelManager] = []

    async def start(env: dict[str, str] | None = None, **config: Any) -> AsyncKernelManager:
        ksm, name = jde_kernel_spec(**{"backend": "swarm", **config})
        km = AsyncKernelManager(kernel_name=name, kernel_spec_manager=ksm)
        managers.append(km)
        await km.start_kernel(cwd=str(jde_workspace / "analysis"), env=env)
        return km

    yield start

    async def shutdown() -> None:
        for km in managers:
            if km.has_kernel:
                await km.shutdown_kernel(now=True)

    jp_asyncio_loop.run_until_complete(shutdown())


def task_of(engine: Engine, km: AsyncKernelManager) -> dict[str, Any]:
    service = str(provisioner(km).container_id)
    (task,) = [t for t in engine.tasks(service) if t["DesiredState"] == "running"]
    return task


def services_of(engine: Engine, km: AsyncKernelManager) -> list[dict[str, Any]]:
    return engine.services({L.KERNEL_ID: str(km.kernel_id)})


# -- what a service is made of (no engine) ----------------------------------------------------
def _request(**overrides: Any) -> ContainerRequest:
    fields: dict[str, Any] = {
        "role": "kernel",
        "name": "jupyter-kernel-abc",
        "image": "img",
        "command": ("python", "-m", "ipykernel_launcher", "-f", CONNECTION_FILE),
        "workspace": "/home/alice/work",
        "working_dir": "/home/alice/work/nb",
        "uid": 1000,
        "gid": 100,
        "instance_id": "srv-1",
        "environment": {"HOME": "/home/jupyter"},
        "labels": {L.KERNEL_ID: "k1"},
        "nano_cpus": 1_500_000_000,
        "mem_limit": 1024**3,
        "pids_limit": 1024,
        "ports": (20001, 20002),
        "files": (ContainerFile(CONNECTION_FILE, b'{"key": "s3cr3t-key"}', 0o400),),
        "placement": ("node.labels.pool==notebooks",),
        **overrides,
    }
    return ContainerRequest(**fields)


def _spec(backend: SwarmBackend, request: ContainerRequest) -> dict[str, Any]:
    ref = {"SecretID": "sid", "SecretName": "sname", "File": {"Name": CONNECTION_FILE}}
    return backend.service_spec(
        request, "reg/img@sha256:00", "overlay-id", [ref], Cluster("manager-node", (1, 41))
    )


def test_a_kernel_becomes_a_confined_one_task_service_that_holds_no_key() -> None:
    # Given the swarm back end with half of each limit reserved
    backend = SwarmBackend(Engine(), Path("/nonexistent"), reserve=0.5)
    # When a kernel's request becomes a service
    spec = _spec(backend, _request())
    task = spec["TaskTemplate"]
    container = task["ContainerSpec"]
    # Then it is one task, never restarted by Swarm, reached by its task's address (dnsrr)
    assert spec["Mode"] == {"Replicated": {"Replicas": 1}}
    assert task["RestartPolicy"]["Condition"] == "none"
    assert spec["EndpointSpec"] == {"Mode": "dnsrr"}
    assert task["Networks"] == [{"Target": "overlay-id"}]
    # And it is confined as a local kernel's container is: user, init, capabilities, limits,
    # and no privilege gain (which a service cannot ask for before API 1.44: setpriv does)
    assert (container["User"], container["Init"], container["CapabilityDrop"]) == (
        "1000:100",
        True,
        ["ALL"],
    )
    assert container["Args"][:4] == ["setpriv", "--no-new-privs", "--", "python"]
    assert task["Resources"]["Limits"] == {
        "Pids": 1024,
        "NanoCPUs": 1_500_000_000,
        "MemoryBytes": 1024**3,
    }
    assert task["Resources"]["Reservations"] == {"NanoCPUs": 750_000_000, "MemoryBytes": 2**29}
    # And it runs the image by digest, in the notebook's folder, with a private HOME
    assert container["Image"] == "reg/img@sha256:00"
    assert container["Dir"] == "/home/alice/work/nb"
    assert {"Type": "tmpfs", "Target": "/home/jupyter", "TmpfsOptions": {"Mode": 0o1777}} in (
        container["Mounts"]
    )
    # And by default it stays on the server's node, where the workspace is
    assert task["Placement"]["Constraints"] == [
        "node.labels.pool==notebooks",
        "node.id==manager-node",
    ]
    # And it carries the labels a sweep finds it by, and the connection file only by reference
    assert spec["Labels"][L.INSTANCE] == "srv-1"
    assert spec["Labels"][L.KERNEL_ID] == container["Labels"][L.KERNEL_ID] == "k1"
    assert container["Secrets"][0]["SecretID"] == "sid"
    assert "s3cr3t-key" not in json.dumps(spec)


def test_the_workspace_reaches_other_nodes_by_shared_path_or_as_an_nfs_volume() -> None:
    # Given a shared file system mounted alike on every node
    shared = _spec(SwarmBackend(Engine(), Path("/x"), workspace_mount="shared-path"), _request())
    mount = shared["TaskTemplate"]["ContainerSpec"]["Mounts"][0]
    # Then the workspace is a bind mount of the same path, and no node constraint is added
    assert mount == {
        "Type": "bind",
        "Source": "/home/alice/work",
        "Target": "/home/alice/work",
        "ReadOnly": False,
    }
    assert shared["TaskTemplate"]["Placement"]["Constraints"] == ["node.labels.pool==notebooks"]

    # Given an NFS export of the home folders instead
    nfs = SwarmBackend(
        Engine(),
        Path("/x"),
        workspace_mount="volume",
        workspace_volume_options={
            "type": "nfs",
            "o": "addr=nfs.example.com,rw,nfsvers=4.1",
            "device": ":/export{workspace}",
        },
    )
    volume = _spec(nfs, _request())["TaskTemplate"]["ContainerSpec"]["Mounts"][0]
    # Then every node mounts the user's export as a local-driver volume at the same path
    assert volume["Type"] == "volume"
    assert volume["Target"] == "/home/alice/work"
    assert volume["VolumeOptions"]["NoCopy"] is True
    assert volume["VolumeOptions"]["DriverConfig"] == {
        "Name": "local",
        "Options": {
            "type": "nfs",
            "o": "addr=nfs.example.com,rw,nfsvers=4.1",
            "device": ":/export/home/alice/work",
        },
    }
    # And another user's workspace is another volume (a node keeps a volume's first options)
    other = _spec(nfs, _request(workspace="/home/bob/work"))["TaskTemplate"]["ContainerSpec"]
    assert other["Mounts"][0]["Source"] != volume["Source"]


def test_gpu_kernels_go_to_the_gpu_pool_and_see_its_gpus_or_reserve_them() -> None:
    gpu = {"driver": "", "capabilities": [["gpu"]], "count": 2}
    # Given the default: GPU nodes carry a label and run the NVIDIA runtime
    labelled = _spec(SwarmBackend(Engine(), Path("/x")), _request(device_requests=(gpu,)))
    task = labelled["TaskTemplate"]
    # Then a GPU kernel is placed in that pool and the runtime is told to give it the GPUs
    assert "node.labels.gpu==true" in task["Placement"]["Constraints"]
    assert "NVIDIA_VISIBLE_DEVICES=all" in task["ContainerSpec"]["Env"]
    assert "GenericResources" not in task["Resources"]["Reservations"]
    ids = _spec(
        SwarmBackend(Engine(), Path("/x")),
        _request(device_requests=({**gpu, "count": None, "device_ids": ["0", "1"]},)),
    )
    assert "NVIDIA_VISIBLE_DEVICES=0,1" in ids["TaskTemplate"]["ContainerSpec"]["Env"]

    # Given GPUs as generic resources instead
    reserving = SwarmBackend(Engine(), Path("/x"), gpu_scheduling="generic-resource")
    task = _spec(reserving, _request(device_requests=(gpu,)))["TaskTemplate"]
    # Then the kernel reserves two of them in the pool
    assert task["Resources"]["Reservations"]["GenericResources"] == [
        {"DiscreteResourceSpec": {"Kind": "NVIDIA-GPU", "Value": 2}}
    ]
    assert "node.labels.gpu==true" in task["Placement"]["Constraints"]
    # And "all" GPUs, or named devices, cannot be reserved: the error says what to ask for
    with pytest.raises(ContainerError, match=r"ask for a number of GPUs \(KERNEL_GPUS=1\)"):
        _spec(reserving, _request(device_requests=({**gpu, "count": -1},)))


@pytest.mark.parametrize(
    ("err", "never"),
    [
        ("no suitable node (scheduling constraints not satisfied on 2 nodes)", True),
        ("no suitable node (insufficient resources on 1 node; scheduling constraints not "
         "satisfied on 1 node)", False),
        ("no suitable node (1 node not available for new tasks; scheduling constraints not "
         "satisfied on 1 node)", False),
    ],
)  # fmt: skip
def test_a_start_fails_at_once_only_when_no_node_could_ever_take_it(err: str, never: bool) -> None:
    from jupyter_docker_env.containers.swarm import _unplaceable

    assert _unplaceable(err) is never


@pytest.mark.parametrize(
    ("state", "message", "ran"),
    [
        ("complete", "finished", True),  # a quick run, done before its start was seen
        ("failed", "started", True),  # a kernel that exited: poll() reports it, with its logs
        ("failed", "starting", False),  # the container could not start
        ("rejected", "preparing", False),  # e.g. no image, a workspace that is not there
    ],
)
def test_a_task_that_started_counts_as_started_however_it_ended_since(
    state: str, message: str, ran: bool
) -> None:
    from jupyter_docker_env.containers.swarm import _ran

    assert _ran({"Status": {"State": state, "Message": message}}) is ran


def test_a_confinement_swarm_cannot_carry_over_is_refused_not_dropped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a future hardening option that the Swarm translation does not know yet
    from jupyter_docker_env.containers import swarm

    real = swarm.hardening
    monkeypatch.setattr(swarm, "hardening", lambda r: {**real(r), "read_only": True})
    # Then a kernel is not started without it
    with pytest.raises(ContainerError, match="read_only have no Swarm translation"):
        _spec(SwarmBackend(Engine(), Path("/x")), _request())


# -- kernels on the Swarm ---------------------------------------------------------------------
@pytest.mark.docker
async def test_a_kernel_on_the_worker_runs_there_and_behaves_as_a_local_kernel(
    jde_swarm: Swarm,
    jde_backend: SwarmBackend,
    jde_kernel: Callable[..., Any],
    jde_engine: Engine,
    jde_workspace: Path,
) -> None:
    # Given a kernel constrained to the worker node
    km = await jde_kernel(placement=jde_swarm.on_worker)
    prov = provisioner(km)
    first = prov.container_id
    # Then its task runs on the worker
    assert task_of(jde_engine, km)["NodeID"] == jde_swarm.worker
    # and the network sandbox that relays its ports on the server's node is confined
    (relay,) = jde_engine.containers({L.ROLE: "relay", L.INSTANCE: INSTANCE})
    check_inside(
        jde_engine,
        relay["Id"],
        kind="relay",
        user=(os.getuid(), os.getgid()) if os.getuid() else (65534, 65534),
        mounts={RELAY_DIR: "rw"},
        pids=64,
        memory=64 * 1024**2,
        read_only=True,
    )
    # And it runs code, reads the workspace by relative path and owns what it writes
    content, out = await run_code(
        km,
        "import os; print(open('data.txt').read().strip(), os.getcwd()); "
        "open('from-worker.txt', 'w').write('hello')",
    )
    assert content["status"] == "ok", content
    assert out == f"hello from the workspace {jde_workspace / 'analysis'}\n"
    written = jde_workspace / "analysis" / "from-worker.txt"
    assert written.read_text() == "hello"
    assert written.stat().st_uid == 1000

    # When a busy kernel is interrupted, the cell stops and the kernel's state stays
    kc = km.client()
    kc.start_channels()
    await kc.wait_for_ready(timeout=60)
    busy = asyncio.create_task(
        kc.execute_interactive("x = 42\nimport time\ntime.sleep(120)", output_hook=len)
    )
    await asyncio.sleep(1)
    await km.interrupt_kernel()
    reply = await asyncio.wait_for(busy, 20)
    kc.stop_channels()
    assert reply["content"]["ename"] == "KeyboardInterrupt"
    assert (await run_code(km, "print(x)"))[1] == "42\n"

    # When it restarts, a new service runs it on the worker, at the same address, state gone
    address = (km.ip, list(km.ports))
    await km.restart_kernel()
    assert prov.container_id not in (None, first)
    assert jde_engine.inspect_service(str(first)) is None
    assert task_of(jde_engine, km)["NodeID"] == jde_swarm.worker
    assert (km.ip, list(km.ports)) == address
    assert (await run_code(km, "print(x)"))[0]["ename"] == "NameError"

    # When it shuts down, no service and no secret is left
    await km.shutdown_kernel()
    assert services_of(jde_engine, km) == []
    assert jde_engine.secrets({L.INSTANCE: INSTANCE}) == []


@pytest.mark.docker
async def test_the_key_reaches_the_kernel_only_as_its_users_secret_file(
    jde_swarm: Swarm, jde_backend: SwarmBackend, jde_kernel: Callable[..., Any], jde_engine: Engine
) -> None:
    km = await jde_kernel(placement=jde_swarm.on_worker)
    key = km.session.key.decode()
    # The service, its task and the secret's metadata do not hold the key
    service = jde_engine.inspect_service(str(provisioner(km).container_id))
    assert key not in json.dumps(service) + json.dumps(task_of(jde_engine, km))
    assert key not in json.dumps(jde_engine.secrets({L.INSTANCE: INSTANCE}))
    # And inside, the connection file is the kernel user's alone, outside the environment
    _, out = await run_code(
        km,
        f"import os; s = os.stat({CONNECTION_FILE!r}); "
        f"print(oct(s.st_mode & 0o777), s.st_uid == os.getuid(), {key!r} in str(os.environ))",
    )
    assert out.split() == ["0o400", "True", "False"]
    # And the kernel can gain no privileges, no capabilities
    _, out = await run_code(
        km,
        "print([l.split()[1] for l in open('/proc/self/status') "
        "if l.startswith(('NoNewPrivs', 'CapEff'))])",
    )
    assert out == "['0000000000000000', '1']\n"


@pytest.mark.docker
async def test_a_forced_kill_and_a_kernel_that_dies_leave_no_service(
    jde_swarm: Swarm, jde_backend: SwarmBackend, jde_kernel: Callable[..., Any], jde_engine: Engine
) -> None:
    killed, dying = (
        await jde_kernel(placement=jde_swarm.on_worker),
        await jde_kernel(placement=jde_swarm.on_worker),
    )
    # When one is killed by its manager, its service goes
    await killed.shutdown_kernel(now=True)
    assert services_of(jde_engine, killed) == []

    # When the other kills itself, its manager learns the exit code within seconds
    kc = dying.client()
    kc.start_channels()
    await kc.wait_for_ready(timeout=60)
    kc.execute("import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    kc.stop_channels()
    assert await exit_code(dying, within=30) == 128 + signal.SIGKILL
    assert not await dying.is_alive()
    await dying.shutdown_kernel(now=True)
    assert services_of(jde_engine, dying) == []


@pytest.mark.docker
async def test_a_kernel_past_its_memory_limit_on_the_worker_is_reported_as_oom_killed(
    jde_swarm: Swarm, jde_backend: SwarmBackend, jde_kernel: Callable[..., Any]
) -> None:
    km = await jde_kernel(
        env={"KERNEL_MEMORY": "192m"},
        placement=jde_swarm.on_worker,
    )
    kc = km.client()
    kc.start_channels()
    await kc.wait_for_ready(timeout=60)
    kc.execute("data = b'x' * (1024 << 20)")
    kc.stop_channels()
    assert await exit_code(km, within=60) == 128 + signal.SIGKILL
    prov = provisioner(km)
    assert prov.oom_killed
    assert "ran out of memory (limit 192 MiB)" in str(prov.exit_reason)


@pytest.mark.docker
async def test_a_gpu_kernel_is_placed_on_the_gpu_node(
    jde_swarm: Swarm, jde_backend: SwarmBackend, jde_kernel: Callable[..., Any], jde_engine: Engine
) -> None:
    # Given a Swarm whose worker alone carries gpu=true
    # When a kernel asks for a GPU, it lands there, and the NVIDIA runtime is told to give it
    # the node's GPUs (this machine has neither: the variable is all there is to see)
    km = await jde_kernel(env={"KERNEL_GPUS": "1"})
    assert task_of(jde_engine, km)["NodeID"] == jde_swarm.worker
    _, out = await run_code(km, "import os; print(os.environ['NVIDIA_VISIBLE_DEVICES'])")
    assert out == "all\n"
    # When a kernel asks for a pool no node is in, the start fails at once, saying so
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="no node of the Swarm fits its placement"):
        await jde_kernel(placement=["node.labels.pool==nowhere"])
    assert time.monotonic() - started < 15


@pytest.mark.docker
async def test_reserved_gpus_work_until_swarm_updates_the_node(
    jde_swarm: Swarm,
    jde_backend: SwarmBackend,
    jde_kernel: Callable[..., Any],
    jde_engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given GPUs as generic resources, the worker advertising one, and the instance's overlay
    # already on the worker (its first task there updates the node, see below)
    monkeypatch.setattr(jde_backend, "gpu_scheduling", "generic-resource")
    plain = await jde_kernel(placement=jde_swarm.on_worker)
    # When a kernel asks for one GPU, it lands there and is told which GPU it holds
    km = await jde_kernel(env={"KERNEL_GPUS": "1"})
    assert task_of(jde_engine, km)["NodeID"] == jde_swarm.worker
    _, out = await run_code(km, "import os; print(os.environ['DOCKER_RESOURCE_NVIDIA-GPU'])")
    assert out == f"{FAKE_GPU}\n"
    # When a kernel asks for more GPUs than any node has, its start fails now, saying so
    with pytest.raises(RuntimeError, match=r"2 GPU\(s\) requested, but no node of the Swarm"):
        await jde_kernel(env={"KERNEL_GPUS": "2"})
    # When the node is updated (here a label; also a restart, or another user's overlay
    # reaching it), Swarm's constraint enforcer stops the GPU kernel: the documented caveat
    node = jde_engine.client.api.inspect_node(jde_swarm.worker)
    spec = {**node["Spec"], "Labels": {**node["Spec"]["Labels"], "jde-test": "touched"}}
    jde_engine.client.api.update_node(jde_swarm.worker, node["Version"]["Index"], spec)
    assert await exit_code(km, within=30) is not None
    reason = str(provisioner(km).exit_reason)
    assert "Swarm rejected its task: assigned node no longer meets constraints" in reason
    assert "gpu_scheduling = 'label' avoids it" in reason
    # And the kernel without GPUs runs on
    assert await provisioner(plain).poll() is None


@pytest.mark.docker
async def test_the_workspace_as_a_volume_is_mounted_by_the_worker(
    jde_swarm: Swarm,
    jde_backend: SwarmBackend,
    jde_kernel: Callable[..., Any],
    jde_workspace: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given the workspace as a local-driver volume, as an NFS export would be (here the
    # "export" is this machine's folder, bound: nodes share this machine's file system)
    monkeypatch.setattr(jde_backend, "workspace_mount", "volume")
    monkeypatch.setattr(
        jde_backend,
        "workspace_volume_options",
        {"type": "none", "o": "bind", "device": "{workspace}"},
    )
    # When a kernel runs on the worker
    km = await jde_kernel(placement=jde_swarm.on_worker)
    # Then the worker mounted it and the kernel works in it
    _, out = await run_code(km, "print(open('data.txt').read().strip())")
    assert out == "hello from the workspace\n"
    volumes = jde_swarm.worker_engine.client.api.volumes(filters={"label": L.MANAGED})
    assert [v["Options"]["device"] for v in volumes["Volumes"]] == [str(jde_workspace)]


@pytest.mark.docker
async def test_by_default_kernels_stay_on_the_servers_node(
    jde_swarm: Swarm,
    jde_backend: SwarmBackend,
    jde_kernel: Callable[..., Any],
    jde_engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given the default: the workspace is only on the server's node
    monkeypatch.setattr(jde_backend, "workspace_mount", "server-node")
    # When two kernels start, both run on the manager, where the server and its files are
    for _ in range(2):
        km = await jde_kernel()
        assert task_of(jde_engine, km)["NodeID"] == jde_swarm.manager
        assert (await run_code(km, "print(1 + 1)"))[1] == "2\n"


@pytest.mark.docker
async def test_an_image_no_registry_has_runs_only_on_the_servers_node(
    jde_swarm: Swarm,
    jde_backend: SwarmBackend,
    jde_kernel: Callable[..., Any],
    jde_engine: Engine,
    jde_swarm_image: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given an image built on the server's engine and never pushed
    local_only = jde_build_image(
        jde_engine,
        f"FROM {jde_swarm_image}\nLABEL org.jupyter.docker-env.test-local-only=1",
        f"{JDE_PREFIX}/kernel:local-{uuid.uuid4().hex[:6]}",
        {},
    )
    try:
        # When a kernel of it may run on any node, its start fails and says what to do
        with pytest.raises(RuntimeError, match="never pushed to a registry") as err:
            await jde_kernel(image=local_only)
        assert "set c.DockerEnvApp.registry" in str(err.value)
        # When kernels stay on the server's node, that node's image runs, named by its id
        monkeypatch.setattr(jde_backend, "workspace_mount", "server-node")
        km = await jde_kernel(image=local_only)
        image_id = (jde_engine.inspect_image(local_only) or {})["Id"]
        assert task_of(jde_engine, km)["Spec"]["ContainerSpec"]["Image"] == image_id
        assert (await run_code(km, "print(1 + 1)"))[1] == "2\n"
        await km.shutdown_kernel(now=True)
    finally:
        jde_engine.remove_image(local_only, force=True)


@pytest.mark.docker
async def test_a_build_for_swarm_is_pushed_and_pulled_on_every_node_before_any_kernel(
    jde_swarm: Swarm,
    jde_backend: SwarmBackend,
    jde_engine: Engine,
    jde_swarm_registry: str,
    jde_swarm_image: str,
    jde_kernel: Callable[..., Any],
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    # Given kernels on Swarm, a registry, and an environment (a Dockerfile on the kernel image)
    name = f"swarm-{uuid.uuid4().hex[:8]}"
    folder = tmp_path / "environments" / name
    folder.mkdir(parents=True)
    (folder / "Dockerfile").write_text(f"FROM {jde_swarm_image}\nRUN echo {name} > /built\n")
    config = Config()
    config.DockerEnvProvisioner.backend = "swarm"
    config.DockerEnvApp.registry = jde_swarm_registry
    config.DockerEnvApp.image_prefix = JDE_PREFIX
    settings = DockerEnvConfig(config=config)
    assert settings.push_builds  # what a Swarm needs, without being told
    envs = EnvironmentManager(settings=settings, root_dir=tmp_path, engine=jde_engine)

    # When it is built
    op = envs.build(envs.locate(name), BuildOptions())
    await op.wait()
    envs.close()
    request.addfinalizer(lambda: envs.images.remove(name))

    # Then its content-hash tag is in the registry, and every node holds it by digest
    assert op.state == "succeeded", "\n".join(op.log)
    remote = f"{jde_swarm_registry}/{name}"
    digest = jde_engine.registry_digest(f"{remote}:{op.result.spec_hash[:16]}")
    assert digest is not None
    assert jde_swarm.worker_engine.inspect_image(f"{remote}@{digest}") is not None
    assert f"Pulled on {jde_swarm.worker_hostname}" in op.log
    # And a kernel of it on the worker runs that image, named by its digest
    km = await jde_kernel(image=op.result.image, placement=jde_swarm.on_worker)
    spec = task_of(jde_engine, km)["Spec"]["ContainerSpec"]
    assert spec["Image"] == f"{remote}@{digest}"
    assert (await run_code(km, "print(open('/built').read().strip())"))[1] == f"{name}\n"


@contextlib.asynccontextmanager
async def swarm_runs(
    engine: Engine, registry: str, image: str, workspace: Path
) -> AsyncIterator[RunManager]:
    """The run service of a user's workspace whose runs go to the Swarm, with an environment
    "train" (the kernel image) built for it; everything it made is removed afterwards."""
    folder = workspace / "environments" / "train"
    folder.mkdir(parents=True)
    (folder / "Dockerfile").write_text(f"FROM {image}\n")
    if os.geteuid() == 0:
        for path in (workspace, workspace / "environments", folder):
            os.chown(path, 1000, 1000)
    config = Config()
    config.DockerEnvProvisioner.backend = "swarm"
    config.DockerEnvProvisioner.extra_labels = {JDE_TEST_LABEL: JDE_SESSION}
    config.DockerEnvApp.registry = registry
    config.DockerEnvApp.image_prefix = JDE_PREFIX
    config.RunManager.poll_interval = 0.2
    settings = DockerEnvConfig(config=config)
    envs = EnvironmentManager(settings=settings, root_dir=workspace, engine=engine)
    runs = RunManager(settings=settings, environments=envs, workspace=workspace, config=config)
    try:
        build = envs.build(envs.locate("train"), BuildOptions())
        await build.wait()
        assert build.state == "succeeded", "\n".join(build.log)
        yield runs
    finally:
        runs.close()
        envs.images.remove("train")
        envs.close()
        await sweep_orphans(engine, runs.instance_id, "swarm")


@pytest.mark.docker
async def test_a_training_run_on_the_worker_writes_its_output_into_the_workspace(
    jde_swarm: Swarm,
    jde_backend: SwarmBackend,
    jde_engine: Engine,
    jde_swarm_registry: str,
    jde_swarm_image: str,
    jde_tmp: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a user's workspace whose runs go to the Swarm, placed on the worker
    monkeypatch.setattr(jde_backend, "placement", jde_swarm.on_worker)
    workspace = jde_tmp / "ws"
    async with swarm_runs(jde_engine, jde_swarm_registry, jde_swarm_image, workspace) as runs:
        # When a run trains a "model" into the workspace
        train = "import time; open('model.txt', 'w').write('trained'); time.sleep(2)"
        run = await runs.create(RunRequest(env="train", command=("python", "-c", train)))
        while (run := await runs.wait(run.id, until_started=True)).container_id is None:
            assert run.active, run.reason
            await asyncio.sleep(0.1)

        # Then it runs as a service on the worker, and once it succeeded its output is the
        # user's, in the workspace, and its service is gone
        (task,) = jde_engine.tasks(str(run.container_id))
        assert task["NodeID"] == jde_swarm.worker
        run = await runs.wait(run.id)
        assert run.state == "succeeded", run.reason
        model = workspace / "model.txt"
        assert model.read_text() == "trained"
        assert model.stat().st_uid == 1000
        assert jde_engine.inspect_service(str(run.container_id)) is None


@pytest.mark.docker
async def test_a_snapshot_run_on_the_servers_node_hands_back_what_it_wrote(
    jde_swarm: Swarm,
    jde_backend: SwarmBackend,
    jde_engine: Engine,
    jde_swarm_registry: str,
    jde_swarm_image: str,
    jde_tmp: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given runs on the server's node (the default), and a project whose code a run snapshots
    # into an image of its own, never pushed
    monkeypatch.setattr(jde_backend, "workspace_mount", "server-node")
    workspace = jde_tmp / "ws"
    project = workspace / "project"
    project.mkdir(parents=True)
    (project / "train.py").write_text("open('model.bin', 'w').write('weights')\n")
    async with swarm_runs(jde_engine, jde_swarm_registry, jde_swarm_image, workspace) as runs:
        if os.geteuid() == 0:
            for path in (project, project / "train.py"):
                os.chown(path, 1000, 1000)
        # When it runs
        request = RunRequest("train", ("python", "train.py"), cwd="project", snapshot=True)
        run = await runs.create(request)
        run = await runs.wait(run.id)
        # Then what it wrote in its own file system is copied back from the task's container
        assert run.state == "succeeded", run.reason
        assert (project / "model.bin").read_text() == "weights"


@pytest.mark.docker
def test_a_crashed_server_leaves_services_that_its_restart_sweeps(
    jde_swarm: Swarm,
    jde_backend: SwarmBackend,
    jde_kernel_spec: KernelSpecFactory,
    jde_engine: Engine,
) -> None:
    # Given a server process that starts a Swarm kernel and dies without any cleanup
    instance = f"test-swarm-crash-{uuid.uuid4().hex[:8]}"
    ksm, name = jde_kernel_spec(instance_id=instance, backend="swarm")
    # (c.SwarmBackend settings reach the back end through the kernel manager's config)
    script = "\n".join(
        [
            "import asyncio, os, signal",
            "from jupyter_client.kernelspec import KernelSpecManager",
            "from jupyter_client.manager import AsyncKernelManager",
            "from traitlets.config import Config",
            "config = Config({'SwarmBackend': {'workspace_mount': 'shared-path'}})",
            f"ksm = KernelSpecManager(kernel_dirs={ksm.kernel_dirs!r})",
            f"km = AsyncKernelManager(kernel_name={name!r}, kernel_spec_manager=ksm, "
            "config=config)",
            "asyncio.run(km.start_kernel())",
            "print(km.provisioner.container_id, flush=True)",
            "os.kill(os.getpid(), signal.SIGKILL)",
        ]
    )
    crashed = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    owned = {L.INSTANCE: instance}
    (service,) = jde_engine.services(owned)
    assert service["ID"] == crashed.stdout.strip()
    assert jde_engine.secrets(owned)
    assert jde_engine.networks(owned)
    assert jde_engine.containers(owned)  # its network sandbox

    # When the server starts again and sweeps its instance
    removed = asyncio.run(sweep_orphans(jde_engine, instance, "swarm"))

    # Then its service, secret, network sandbox and overlay network are gone
    assert service["ID"] in removed
    assert jde_engine.services(owned) == []
    assert jde_engine.secrets(owned) == []
    assert jde_engine.containers(owned) == []
    # And the overlay, once its last task has left it (Swarm deletes networks lazily)
    deadline = time.monotonic() + 30
    while jde_engine.networks(owned) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert jde_engine.networks(owned) == []


@pytest.fixture
def jp_server_config(jde_base_image: str) -> dict[str, Any]:
    """A Jupyter server whose kernels run on the Swarm (this module's only server)."""
    return {
        "ServerApp": {"jpserver_extensions": {"jupyter_docker_env": True}},
        "DockerEnvApp": {"default_base": jde_base_image, "image_prefix": JDE_PREFIX},
        "DockerEnvProvisioner": {"backend": "swarm"},
        "SwarmBackend": {"workspace_mount": "shared-path"},
    }


@pytest.mark.docker
async def test_a_server_on_swarm_sweeps_its_orphans_at_start_and_starts_kernels_as_services(
    jde_swarm: Swarm,
    jde_backend: SwarmBackend,
    jde_swarm_image: str,
    jp_serverapp: Any,
    jp_root_dir: Path,
    jp_data_dir: Path,
    jde_engine: Engine,
) -> None:
    # Given a server configured for Swarm, its root dir a user's, an environment's kernel spec,
    # and a service that an earlier run of this same server left behind when it crashed
    if os.geteuid() == 0:
        os.chown(jp_root_dir, 1000, 1000)
    instance = instance_id_for(str(jp_serverapp.root_dir), jp_serverapp.port)
    orphan = await jde_backend.launch(
        _request(
            role="run",
            name=f"jupyter-run-orphan-{uuid.uuid4().hex[:6]}",
            image=jde_swarm_image,
            command=("sleep", "600"),
            workspace=str(jp_root_dir),
            working_dir=str(jp_root_dir),
            uid=1000,
            gid=1000,
            instance_id=instance,
            labels={JDE_TEST_LABEL: JDE_SESSION},
            ports=(),
            files=(),
            placement=(),
        )
    )
    spec_dir = jp_data_dir / "kernels" / "docker-env-swarm"
    spec_dir.mkdir(parents=True)
    config = {"image": jde_swarm_image, "placement": jde_swarm.on_worker}
    provisioner_ = {"provisioner_name": "docker-env-provisioner", "config": config}
    spec = {"argv": [], "display_name": "s", "language": "python", "metadata": {}}
    spec["metadata"] = {"kernel_provisioner": provisioner_}
    (spec_dir / "kernel.json").write_text(json.dumps(spec))

    # When the server (re)starts, the orphan's service is gone
    ext = jp_serverapp.web_app.settings["docker_env"]
    await ext._start_jupyter_server_extension(jp_serverapp)
    assert jde_engine.inspect_service(orphan.container_id) is None

    # And a kernel it starts is a service on the worker, gone after its shutdown
    mkm = jp_serverapp.kernel_manager
    kernel_id = await mkm.start_kernel(kernel_name="docker-env-swarm", path="")
    try:
        km = mkm.get_kernel(kernel_id)
        assert task_of(jde_engine, km)["NodeID"] == jde_swarm.worker
        assert (await run_code(km, "print(1 + 1)"))[1] == "2\n"
    finally:
        await mkm.shutdown_kernel(kernel_id, now=True)
        await sweep_orphans(jde_engine, instance, "swarm")
    assert jde_engine.services({L.KERNEL_ID: kernel_id}) == []


# Last: it takes the worker down for good.
@pytest.mark.docker
async def test_a_kernel_whose_node_dies_is_reported_dead_naming_the_node(
    jde_swarm: Swarm,
    jde_backend: SwarmBackend,
    jde_kernel: Callable[..., Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a kernel running on the worker
    km = await jde_kernel(placement=jde_swarm.on_worker)
    assert (await run_code(km, "print(1 + 1)"))[1] == "2\n"

    # When the worker's dockerd is killed
    killed = await asyncio.create_subprocess_exec("bash", str(SCRIPT), "kill-worker")
    assert await killed.wait() == 0
    started = time.monotonic()

    # Then within seconds the kernel is dead, and the reason names the lost node
    code = await exit_code(km, within=30)
    assert code is not None, "the kernel still looks alive 30 s after its node died"
    assert time.monotonic() - started < 15
    reason = str(provisioner(km).exit_reason)
    assert f"its node {jde_swarm.worker_hostname}" in reason
    assert "stopped answering the Swarm manager" in reason
    assert reason in caplog.text
    # And shutting it down does not hang on the lost node
    await asyncio.wait_for(km.shutdown_kernel(now=True), 30)
