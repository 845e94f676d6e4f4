"""Kernels in containers: DockerEnvProvisioner against the real Docker engine.

Every kernel here comes from a kernel spec with an empty argv, as the server extension writes
them, and carries the test label plus one instance id per module, swept at the end. Tests that
take ``jde_kernel`` run twice: with a cold start, and with a warm one (a container a warm pool
started ahead of time claimed by the kernel): both must behave the same.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import nbformat
import psutil
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from jupyter_core.paths import jupyter_runtime_dir
from nbclient import NotebookClient

from jupyter_docker_env.containers import WarmPools
from jupyter_docker_env.containers.pool import CLAIM_PIPE
from jupyter_docker_env.engine import Engine
from jupyter_docker_env.kernels.provisioner import (
    CONNECTION_FILE,
    CONTAINER_RUNTIME_DIR,
    DockerEnvProvisioner,
    instance_id_for,
    sweep_orphans,
)
from jupyter_docker_env.kernels.resources import parse_gpus, parse_memory
from jupyter_docker_env.labels import MANAGED as LABEL_MANAGED
from jupyter_docker_env.labels import label

from .conftest import (
    JDE_PREFIX,
    EngineProxy,
    check_inside,
    jde_build_image,
    jde_kernel_spec_json,
)

INSTANCE = f"test-{uuid.uuid4().hex[:12]}"
SECRET = "JDE_TEST_SERVER_SECRET"


# -- fixtures ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def jde_instance(jde_engine: Engine) -> Iterator[str]:
    """The server instance id of this module's kernels; whatever carries it is swept after."""
    yield INSTANCE
    for c in jde_engine.containers({label("instance"): INSTANCE}):
        jde_engine.remove_container(c["Id"])


@pytest.fixture
def jde_workspace(jde_tmp: Path) -> Path:
    """A user's workspace (owned by uid 1000 when the tests run as root) with a notebook folder."""
    (jde_tmp / "analysis").mkdir()
    (jde_tmp / "analysis" / "data.txt").write_text("hello from the workspace\n")
    if os.geteuid() == 0:
        for path in (jde_tmp, jde_tmp / "analysis", jde_tmp / "analysis" / "data.txt"):
            os.chown(path, 1000, 1000)
    return jde_tmp


KernelSpecFactory = Callable[..., tuple[KernelSpecManager, str]]


@pytest.fixture
def jde_kernel_spec(
    jde_kernel_image: str, jde_instance: str, jde_workspace: Path, tmp_path: Path
) -> KernelSpecFactory:
    """Write a kernel spec as the server extension does; config overrides are keyword args."""

    def make(**config: Any) -> tuple[KernelSpecManager, str]:
        name = f"jde-test-{uuid.uuid4().hex[:6]}"
        spec = jde_kernel_spec_json(
            jde_kernel_image,
            "test-env",
            **{"workspace": str(jde_workspace), "instance_id": jde_instance, **config},
        )
        (tmp_path / "kernels" / name).mkdir(parents=True)
        (tmp_path / "kernels" / name / "kernel.json").write_text(json.dumps(spec))
        return KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")]), name

    return make


async def warm_pool_for(ksm: KernelSpecManager, name: str, env: dict[str, str] | None) -> WarmPools:
    """Enable warm pools for the spec's instance (as a server does) and wait until the pool of
    the placement a kernel started with ``env`` gets holds a ready container."""
    spec = ksm.get_kernel_spec(name)
    config = spec.metadata["kernel_provisioner"]["config"]
    settings = DockerEnvProvisioner(kernel_spec=spec, kernel_id="warm", **config)
    pools = settings.containers
    assert isinstance(pools, WarmPools)
    pools.enable_pools(config["instance_id"], settings.pool_settings())
    request = settings.warm_request(dict(os.environ if env is None else env))
    assert request is not None, "this kernel spec starts cold"
    await pools.prewarm(request)
    deadline = time.monotonic() + 120
    while not any(p.ready for p in pools.pool_states(config["instance_id"])):
        states = pools.pool_states(config["instance_id"])
        assert not any(p.error for p in states), states
        assert time.monotonic() < deadline, f"no warm kernel after 120 s: {states}"
        await asyncio.sleep(0.05)
    return pools


@pytest.fixture
def jde_kernels(
    jde_kernel_spec: KernelSpecFactory,
    jde_workspace: Path,
    jp_asyncio_loop: asyncio.AbstractEventLoop,
) -> Iterator[Callable[..., Any]]:
    """``start(kind, env=None, **config)``: a kernel started cold or warm (config overrides as
    keyword args). All are shut down, and this module's warm pools removed, afterwards."""
    managers: list[AsyncKernelManager] = []

    async def start(
        kind: str, env: dict[str, str] | None = None, **config: Any
    ) -> AsyncKernelManager:
        ksm, name = jde_kernel_spec(**config)
        if kind == "warm":
            await warm_pool_for(ksm, name, env)
        km = AsyncKernelManager(kernel_name=name, kernel_spec_manager=ksm)
        managers.append(km)
        await km.start_kernel(cwd=str(jde_workspace / "analysis"), env=env)
        assert provisioner(km).warm_started is (kind == "warm")
        return km

    yield start

    async def shutdown() -> None:
        # every back end a kernel used (a spec may set its own connect_mode) and the default
        backends = {id(b): b for b in [DockerEnvProvisioner(instance_id=INSTANCE).containers]}
        for km in managers:
            backends[id(provisioner(km).containers)] = provisioner(km).containers
            if km.has_kernel:
                await km.shutdown_kernel(now=True)
        for backend in backends.values():
            assert isinstance(backend, WarmPools)
            await backend.close_pools(INSTANCE)

    jp_asyncio_loop.run_until_complete(shutdown())


@pytest.fixture(params=["cold", "warm"])
def jde_kernel(
    request: pytest.FixtureRequest, jde_kernels: Callable[..., Any]
) -> Callable[..., Any]:
    """Start kernels (``env``, config overrides), cold in one run of the test, warm in the other."""
    return functools.partial(jde_kernels, request.param)


@pytest.fixture
def jde_cold_kernel(jde_kernels: Callable[..., Any]) -> Callable[..., Any]:
    """Start kernels that no warm pool serves (GPU requests) cold."""
    return functools.partial(jde_kernels, "cold")


def provisioner(km: AsyncKernelManager) -> DockerEnvProvisioner:
    assert isinstance(km.provisioner, DockerEnvProvisioner)
    return km.provisioner


def kernel_containers(engine: Engine, km: AsyncKernelManager) -> list[dict[str, Any]]:
    """The kernel's container, found as its server would: by kernel id (a cold start) or by
    the container its provisioner holds (a warm container keeps its pool's labels)."""
    cold = engine.containers({label("kernel-id"): str(km.kernel_id)})
    held = provisioner(km).container_id
    warm = [{"Id": held}] if held and engine.inspect_container(held) else []
    return cold or warm


async def run_code(km: AsyncKernelManager, code: str, seconds: float = 30) -> tuple[dict, str]:
    """Execute ``code``; return the reply content and what it printed."""
    kc = km.client()
    kc.start_channels()
    try:
        await kc.wait_for_ready(timeout=60)
        out: list[str] = []

        def hook(msg: dict[str, Any]) -> None:
            if msg["msg_type"] == "stream":
                out.append(msg["content"]["text"])

        reply = await kc.execute_interactive(code, timeout=seconds, output_hook=hook)
        return reply["content"], "".join(out)
    finally:
        kc.stop_channels()


async def exit_code(km: AsyncKernelManager, within: float) -> int | None:
    """Poll as the kernel restarter does until the kernel's container has stopped."""
    deadline = time.monotonic() + within
    while (code := await provisioner(km).poll()) is None and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.2)
    return code


# -- unit behaviour (no engine) ------------------------------------------------------------
def test_a_server_instance_id_survives_a_restart_and_tells_servers_apart(tmp_path: Path) -> None:
    # Given a server's root dir and port, when the server restarts with the same settings
    # Then it computes the same id; another port or root dir is another server
    assert instance_id_for(str(tmp_path), 8888) == instance_id_for(str(tmp_path), 8888)
    assert instance_id_for(str(tmp_path), 8888) != instance_id_for(str(tmp_path), 8889)
    assert instance_id_for(str(tmp_path), 8888) != instance_id_for(str(tmp_path / "x"), 8888)


@pytest.mark.parametrize(
    ("gpus", "request_"),
    [
        ("", None),
        ("all", {"count": -1}),
        ("2", {"count": 2}),
        ("0,1", {"device_ids": ["0", "1"]}),
        ("device=3", {"device_ids": ["3"]}),
    ],
)
def test_gpu_settings_become_docker_device_requests(
    gpus: str, request_: dict[str, Any] | None
) -> None:
    parsed = parse_gpus(gpus)
    if request_ is None:
        assert parsed is None
    else:
        assert parsed == {"driver": "", "capabilities": [["gpu"]], **request_}


def test_memory_sizes_are_read_like_docker_reads_them() -> None:
    assert parse_memory("512m") == 512 * 1024**2
    assert parse_memory("2g") == 2 * 1024**3
    assert parse_memory("1.5GiB") == int(1.5 * 1024**3)
    with pytest.raises(ValueError, match="not a size"):
        parse_memory("lots")


def test_only_allow_listed_variables_enter_the_container() -> None:
    # Given a server environment full of secrets and a few locale settings
    env = {SECRET: "s3cr3t", "LANG": "C.UTF-8", "LC_ALL": "C", "JPY_PARENT_PID": "1"}
    env |= {"KERNEL_MEMORY": "1g", "AWS_SECRET_ACCESS_KEY": "x"}
    # When the provisioner builds the container's environment
    out = DockerEnvProvisioner(extra_env={"MY_SETTING": "1"})._container_env(env)
    # Then only the allow-list, the configured extras and HOME are there
    assert set(out) == {"LANG", "LC_ALL", "MY_SETTING", "HOME", "TINI_KILL_PROCESS_GROUP"}


def test_a_kernel_never_runs_as_root_unless_an_admin_allows_it(jde_tmp: Path) -> None:
    with pytest.raises(PermissionError, match="allow_root = True"):
        DockerEnvProvisioner(user="0:0")._user_for(str(jde_tmp))
    assert DockerEnvProvisioner(user="0:0", allow_root=True)._user_for(str(jde_tmp)) == (0, 0)


# -- against the engine --------------------------------------------------------------------
@pytest.mark.docker
@pytest.mark.parametrize("start", ["cold", "warm"])
async def test_a_notebook_uses_workspace_files_by_relative_path_and_owns_what_it_writes(
    start: str,
    jde_kernel_spec: KernelSpecFactory,
    jde_workspace: Path,
    jde_engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a notebook in the workspace's analysis folder, a data file beside it, and a server
    # whose environment holds a secret (and, for a warm start, a kernel waiting in a pool)
    monkeypatch.setenv(SECRET, "must-not-leak")
    instance = f"test-nb-{uuid.uuid4().hex[:8]}"
    ksm, name = jde_kernel_spec(instance_id=instance)
    monkeypatch.setenv("JUPYTER_PATH", str(Path(ksm.kernel_dirs[0]).parent))
    pools = await warm_pool_for(ksm, name, None) if start == "warm" else None
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("print(open('data.txt').read().strip())"),
        nbformat.v4.new_code_cell("open('result.txt', 'w').write('written by the kernel')"),
        nbformat.v4.new_code_cell(
            "import os\n"
            "print(os.path.exists('/.dockerenv'), os.getcwd(), os.getuid(), os.getgid())\n"
            "open(os.path.join(os.environ['HOME'], 'probe'), 'w').write('home is writable')\n"
            f"print(os.environ.get('{SECRET}'), 'JPY_PARENT_PID' in os.environ)"
        ),
    ]

    # When nbclient executes it on the containerized kernel, as `jupyter execute` would
    used: set[tuple[str, bool]] = set()

    def note_container(**_: Any) -> None:
        prov = provisioner(client.km)
        used.add((str(prov.container_id), prov.warm_started))

    client = NotebookClient(
        nb,
        kernel_name=name,
        timeout=60,
        resources={"metadata": {"path": str(jde_workspace / "analysis")}},
        on_cell_executed=note_container,
    )
    await client.async_execute()

    # Then the kernel read the file by its relative path, inside a container, as the owner
    outputs = ["".join(o.get("text", "") for o in cell.outputs) for cell in nb.cells]
    owner = os.stat(jde_workspace)
    assert outputs[0] == "hello from the workspace\n"
    assert outputs[2].splitlines() == [
        f"True {jde_workspace / 'analysis'} {owner.st_uid} {owner.st_gid}",
        "None False",
    ]
    # And the file it wrote belongs to the workspace's owner
    result = jde_workspace / "analysis" / "result.txt"
    assert result.read_text() == "written by the kernel"
    assert (result.stat().st_uid, result.stat().st_gid) == (owner.st_uid, owner.st_gid)
    # And it started as asked, and once nbclient is done its container is gone
    ((container_id, warm),) = used
    assert warm is (start == "warm")
    assert jde_engine.inspect_container(container_id) is None
    assert jde_engine.containers({label("instance"): instance, label("kernel-id"): None}) == []
    if pools is not None:
        await pools.close_pools(instance)
    await sweep_orphans(jde_engine, instance)


@pytest.mark.docker
async def test_the_container_is_labelled_limited_and_keeps_the_key_private(
    jde_kernel: Callable[..., Any], jde_engine: Engine, jde_workspace: Path
) -> None:
    # Given a kernel started with a CPU limit from configuration and memory asked at start
    km = await jde_kernel(env={"KERNEL_MEMORY": "1g", "LANG": "C.UTF-8"}, cpus=1.5)
    prov = provisioner(km)

    # When we look at its container
    attrs = jde_engine.inspect_container(str(prov.container_id))
    assert attrs is not None

    # Then it carries the labels that let the server own and sweep it (a warm container keeps
    # its pool's: Docker labels cannot change once it exists)
    labels = attrs["Config"]["Labels"]
    if prov.warm_started:
        assert label("kernel-id") not in labels
        assert labels[label("role")] == "pool"
    else:
        assert labels[label("kernel-id")] == km.kernel_id
    assert labels[label("env")] == "test-env"
    assert labels[label("instance")] == INSTANCE
    assert labels[label("user")]
    assert labels[LABEL_MANAGED] == "true"
    # And the limits and the workspace mount
    host = attrs["HostConfig"]
    assert (host["NanoCpus"], host["Memory"], host["PidsLimit"]) == (1_500_000_000, 1024**3, 1024)
    assert host["Binds"][0] == f"{jde_workspace}:{jde_workspace}:rw"
    # And inside, the kernel (a pool's container when warm) and the network sandbox it joined
    # are confined: nothing but the workspace, its files and HOME mounted, the limits it asked
    owner = os.stat(jde_workspace)
    files = CONTAINER_RUNTIME_DIR if prov.warm_started else CONNECTION_FILE
    check_inside(
        jde_engine,
        str(prov.container_id),
        kind="pool" if prov.warm_started else "kernel",
        user=(owner.st_uid, owner.st_gid),
        mounts={str(jde_workspace): "workspace", files: "ro", prov.home: "tmpfs"},
        pids=1024,
        memory=1024**3,
        nano_cpus=1_500_000_000,
    )
    check_inside(
        jde_engine,
        attrs["HostConfig"]["NetworkMode"].removeprefix("container:"),
        kind="sandbox",
        user=(65534, 65534),
        mounts={},
        pids=8,
        memory=32 * 1024**2,
        read_only=True,
    )
    # And the server's key is nowhere in what `docker inspect` shows, nor in the environment
    assert km.session.key.decode() not in json.dumps(attrs)
    # And inside, the connection file is the kernel user's alone, the kernel works in the
    # notebook's folder, and its environment holds only what the allow-list lets in
    content, out = await run_code(
        km,
        f"import os; s = os.stat({CONNECTION_FILE!r}); "
        "print(oct(s.st_mode & 0o777), s.st_uid == os.getuid(), os.getcwd()); "
        "print(sorted(k for k in os.environ if k in ('LANG', 'KERNEL_MEMORY', 'HOME'))); "
        f"print(any({km.session.key.decode()!r} in v for v in os.environ.values()))",
    )
    assert content["status"] == "ok"
    assert out.splitlines() == [
        f"0o400 True {jde_workspace / 'analysis'}",
        "['HOME', 'LANG']",
        "False",
    ]


@pytest.mark.docker
async def test_interrupt_restart_and_shutdown_behave_as_for_a_local_kernel(
    jde_kernel: Callable[..., Any], jde_engine: Engine
) -> None:
    # Given a kernel that holds state and is busy
    km = await jde_kernel()
    first = provisioner(km).container_id
    kc = km.client()
    kc.start_channels()
    await kc.wait_for_ready(timeout=60)
    msg_id = kc.execute("x = 42\nprint('running', flush=True)\nimport time\ntime.sleep(120)")
    while (msg := await kc.get_iopub_msg(timeout=30))["msg_type"] != "stream":
        pass  # until the cell runs (an interrupt before it would find the kernel idle)
    assert msg["parent_header"]["msg_id"] == msg_id

    # When it is interrupted, the cell stops with KeyboardInterrupt
    await km.interrupt_kernel()
    while (reply := await kc.get_shell_msg(timeout=20))["parent_header"]["msg_id"] != msg_id:
        pass
    assert reply["content"]["ename"] == "KeyboardInterrupt"
    kc.stop_channels()
    assert (await run_code(km, "print(x)"))[1] == "42\n"

    # When it restarts, it runs in a fresh container and the state is gone
    await km.restart_kernel()
    second = provisioner(km).container_id
    assert second not in (None, first)
    assert jde_engine.inspect_container(str(first)) is None
    assert kernel_containers(jde_engine, km)[0]["Id"] == second
    content, _ = await run_code(km, "print(x)")
    assert content["ename"] == "NameError"

    # When it shuts down, no container remains
    await km.shutdown_kernel()
    assert jde_engine.inspect_container(str(second)) is None
    assert kernel_containers(jde_engine, km) == []


@pytest.mark.docker
async def test_a_forced_kill_and_a_kernel_that_dies_leave_no_container(
    jde_kernel: Callable[..., Any], jde_engine: Engine
) -> None:
    # Given two kernels: one is killed by its manager, the other kills itself
    killed, dying = await jde_kernel(), await jde_kernel()
    killed_container = provisioner(killed).container_id
    await killed.shutdown_kernel(now=True)
    assert jde_engine.inspect_container(str(killed_container)) is None

    kc = dying.client()
    kc.start_channels()
    await kc.wait_for_ready(timeout=60)
    kc.execute("import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    kc.stop_channels()

    # When its manager polls, it learns the exit code (a SIGKILL, through the container's init)
    code = await exit_code(dying, within=30)
    assert code == 128 + signal.SIGKILL
    assert not await dying.is_alive()
    # And after the shutdown nothing remains
    dying_container = provisioner(dying).container_id
    await dying.shutdown_kernel(now=True)
    assert jde_engine.inspect_container(str(dying_container)) is None


def host_files(engine: Engine, container_id: str) -> list[Path]:
    """The host folders of the server's files that the container mounts."""
    attrs = engine.inspect_container(container_id)
    assert attrs is not None
    return [
        Path(m["Source"]).parent if m["Destination"] == CONNECTION_FILE else Path(m["Source"])
        for m in attrs["Mounts"]
        if m["Destination"].startswith(CONTAINER_RUNTIME_DIR)
    ]


async def kernel_with_files(
    jde_kernel: Callable[..., Any], engine: Engine
) -> tuple[AsyncKernelManager, DockerEnvProvisioner, str, list[Path]]:
    """A started kernel, its provisioner, its container and the host folders of its files."""
    km = await jde_kernel()
    prov = provisioner(km)
    container = str(prov.container_id)
    files = host_files(engine, container)
    assert files
    assert all(f.is_dir() for f in files)
    return km, prov, container, files


@pytest.mark.docker
async def test_wait_alone_collects_the_container_of_a_kernel_that_ended(
    jde_kernel: Callable[..., Any], jde_engine: Engine
) -> None:
    # Given a kernel that ended on its own (cold: its own container; warm: a pool's)
    km, prov, container, files = await kernel_with_files(jde_kernel, jde_engine)
    kc = km.client()
    kc.start_channels()
    await kc.wait_for_ready(timeout=60)
    kc.execute("import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    kc.stop_channels()
    # When jupyter_client waits for it, and nothing cleans up after (no cleanup())
    code = await asyncio.wait_for(prov.wait(), timeout=60)
    # Then wait() alone returned its exit code and left neither its container nor its files
    assert code == 128 + signal.SIGKILL
    assert jde_engine.inspect_container(container) is None
    assert not any(f.exists() for f in files)


@pytest.mark.docker
async def test_cleanup_alone_removes_the_container_of_a_kernel_never_waited_for(
    jde_kernel: Callable[..., Any], jde_engine: Engine
) -> None:
    # Given a running kernel (as when jupyter_client's wait for a killed kernel timed out)
    km, prov, container, files = await kernel_with_files(jde_kernel, jde_engine)
    # When only cleanup() runs (no wait())
    await prov.cleanup(restart=False)
    # Then it removed the container, its files, and gave its ports back
    assert jde_engine.inspect_container(container) is None
    assert not any(f.exists() for f in files)
    assert prov._ports == []
    assert not km.has_kernel


@pytest.mark.docker
async def test_a_kernel_past_its_memory_limit_is_reported_as_oom_killed(
    jde_kernel: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    # Given a kernel started with 192 MiB of memory
    km = await jde_kernel(env={"KERNEL_MEMORY": "192m"})
    kc = km.client()
    kc.start_channels()
    await kc.wait_for_ready(timeout=60)

    # When the notebook allocates past it
    kc.execute("data = b'x' * (1024 << 20)")
    kc.stop_channels()
    prov = provisioner(km)
    code = await exit_code(km, within=60)

    # Then the kernel's exit says it ran out of memory, with the limit, in the log too
    assert code == 128 + signal.SIGKILL
    assert prov.oom_killed
    assert prov.exit_reason is not None
    assert "kernel was killed because it ran out of memory (limit 192 MiB)" in prov.exit_reason
    assert "ran out of memory" in caplog.text


@pytest.mark.docker
async def test_a_gpu_request_on_an_engine_without_gpus_fails_with_a_clear_error(
    jde_cold_kernel: Callable[..., Any], jde_engine: Engine, jde_instance: str
) -> None:
    before = {c["Id"] for c in jde_engine.containers({label("instance"): jde_instance})}
    # Given this engine, which has no NVIDIA runtime; when a kernel asks for all GPUs
    with pytest.raises(RuntimeError) as err:
        await jde_cold_kernel(env={"KERNEL_GPUS": "all"})
    # Then the error names the problem and what to do, and no container is left behind
    message = str(err.value)
    assert "GPU requested" in message
    assert "has no NVIDIA runtime" in message
    assert 'could not select device driver ""' in message
    assert "install the NVIDIA Container Toolkit on the Docker host" in message
    after = {c["Id"] for c in jde_engine.containers({label("instance"): jde_instance})}
    assert after <= before


def _listening(ports: set[int]) -> dict[int, set[str]]:
    found: dict[int, set[str]] = {}
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port in ports:
            found.setdefault(conn.laddr.port, set()).add(conn.laddr.ip)
    return found


@pytest.mark.docker
@pytest.mark.parametrize(
    ("mode", "start"), [("container-ip", "cold"), ("container-ip", "warm"), ("published", "cold")]
)
async def test_kernel_ports_are_never_bound_on_other_host_interfaces(
    jde_kernels: Callable[..., Any], mode: str, start: str
) -> None:
    # Given a kernel reached at its container's address (cold or warm: a pool's container binds
    # its ports only once claimed), or through published ports (never pooled: they are fixed
    # when a container is created)
    km = await jde_kernels(start, connect_mode=mode)
    assert (await run_code(km, "print(1 + 1)"))[1] == "2\n"

    # When we list what listens on this host's interfaces
    ports = {int(p) for p in km.ports}
    listening = _listening(ports)

    # Then nothing listens for the kernel on the host, or only on loopback when published
    if mode == "container-ip":
        assert listening == {}
        assert not km.ip.startswith("127.")
    else:
        assert listening == {port: {"127.0.0.1"} for port in ports}


@pytest.mark.docker
def test_a_crashed_server_leaves_containers_and_files_that_its_restart_sweeps(
    jde_kernel_spec: KernelSpecFactory, jde_engine: Engine, tmp_path: Path
) -> None:
    # Given a server process with a warm pool that starts a kernel (it takes the waiting one,
    # and the pool refills) and then dies without any cleanup
    instance = f"test-crash-{uuid.uuid4().hex[:8]}"
    ksm, name = jde_kernel_spec(instance_id=instance)
    script = textwrap.dedent(
        f"""
        import asyncio, json, os, signal
        from jupyter_client.kernelspec import KernelSpecManager
        from jupyter_client.manager import AsyncKernelManager
        from tests.test_provisioner import warm_pool_for

        async def main():
            ksm = KernelSpecManager(kernel_dirs={ksm.kernel_dirs!r})
            pools = await warm_pool_for(ksm, {name!r}, None)
            km = AsyncKernelManager(kernel_name={name!r}, kernel_spec_manager=ksm)
            await km.start_kernel()
            assert km.provisioner.warm_started
            while not any(p.ready for p in pools.pool_states({instance!r})):
                await asyncio.sleep(0.05)
            print(json.dumps([km.provisioner.container_id, km.connection_file]), flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

        asyncio.run(main())
        """
    )
    crashed = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        cwd=Path(__file__).parent.parent,
    )
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    kernel_container, connection_file = json.loads(crashed.stdout)
    left = jde_engine.containers({label("instance"): instance})
    roles = sorted(c["Labels"][label("role")] for c in left)
    assert roles == ["pool", "pool", "sandbox"]  # the claimed kernel, the refill, the sandbox
    assert kernel_container in {c["Id"] for c in left}
    files = Path(jupyter_runtime_dir()) / "docker-env-files" / instance
    assert files.is_dir()
    assert Path(connection_file).is_file()

    # When the server starts again and sweeps its instance
    removed = asyncio.run(sweep_orphans(jde_engine, instance))

    # Then the kernel, the pool and the network sandbox are gone, with the files kept for them
    # and the connection file jupyter_client wrote for the kernel
    assert set(removed) == {c["Id"] for c in left}
    assert jde_engine.containers({label("instance"): instance}) == []
    assert not files.exists()
    assert not Path(connection_file).exists()


@pytest.mark.docker
async def test_in_jupyter_server_the_kernel_mounts_root_dir_and_starts_in_the_notebook_folder(
    jde_kernel_image: str,
    jp_serverapp: Any,
    jp_root_dir: Path,
    jp_data_dir: Path,
    jde_engine: Engine,
) -> None:
    # Given a Jupyter server whose root dir belongs to a user, and an environment's kernel spec
    (jp_root_dir / "project").mkdir()
    if os.geteuid() == 0:
        for path in (jp_root_dir, jp_root_dir / "project"):
            os.chown(path, 1000, 1000)
    spec_dir = jp_data_dir / "kernels" / "docker-env-test"
    spec_dir.mkdir(parents=True)
    spec_dir.joinpath("kernel.json").write_text(
        json.dumps(jde_kernel_spec_json(jde_kernel_image, "demo"))
    )
    mkm = jp_serverapp.kernel_manager
    instance = instance_id_for(jp_serverapp.root_dir, jp_serverapp.port)

    # When the server starts it for a notebook in project/, asking for half a CPU
    kernel_id = await mkm.start_kernel(
        kernel_name="docker-env-test",
        path="project",
        env={**os.environ, "KERNEL_CPUS": "0.5", "JPY_SESSION_NAME": "project/nb.ipynb"},
    )
    try:
        km = mkm.get_kernel(kernel_id)
        _, out = await run_code(km, "import os; print(os.getcwd())")
        # Then the kernel starts in the notebook's folder of the mounted root dir
        assert out.strip() == str(jp_root_dir / "project")
        (container,) = jde_engine.containers({label("kernel-id"): kernel_id})
        attrs = jde_engine.inspect_container(container["Id"])
        assert attrs is not None
        # And the per-kernel CPU request and the server's instance id are on its container
        assert attrs["HostConfig"]["NanoCpus"] == 500_000_000
        assert attrs["Config"]["Labels"][label("instance")] == instance
    finally:
        await mkm.shutdown_kernel(kernel_id, now=True)
        await sweep_orphans(jde_engine, instance)
    assert jde_engine.containers({label("kernel-id"): kernel_id}) == []


# -- warm pools ----------------------------------------------------------------------------
def pool_containers(engine: Engine, instance: str) -> list[dict[str, Any]]:
    return engine.containers({label("instance"): instance, label("pool"): None})


async def until(check: Callable[[], Any], seconds: float, what: str) -> Any:
    deadline = time.monotonic() + seconds
    while not (result := check()):
        assert time.monotonic() < deadline, f"not within {seconds} s: {what}"
        await asyncio.sleep(0.05)
    return result


@pytest.fixture
def jde_pools(
    jde_instance: str, jp_asyncio_loop: asyncio.AbstractEventLoop
) -> Iterator[Callable[..., WarmPools]]:
    """``pools(**settings)``: the back end, with warm pools enabled for this module's instance
    as a server enables them (settings override c.DockerEnvProvisioner's); removed after."""
    configured = DockerEnvProvisioner(instance_id=jde_instance)
    backend = configured.containers
    assert isinstance(backend, WarmPools)

    def pools(**settings: Any) -> WarmPools:
        backend.enable_pools(jde_instance, replace(configured.pool_settings(), **settings))
        return backend

    yield pools
    jp_asyncio_loop.run_until_complete(backend.close_pools(jde_instance))


@pytest.mark.docker
async def test_a_claimed_container_serves_one_kernel_and_is_never_handed_out_again(
    jde_kernels: Callable[..., Any],
    jde_pools: Callable[..., WarmPools],
    jde_engine: Engine,
    jde_instance: str,
    jde_workspace: Path,
) -> None:
    # Given a kernel that took a waiting container of a pool of two
    km = await jde_kernels("warm", warm_pool_size=2)
    claimed = str(provisioner(km).container_id)
    attrs = jde_engine.inspect_container(claimed)
    assert attrs is not None

    # Then nothing reads its claim pipe any more: a second claim cannot reach that container
    folder = next(
        m["Source"] for m in attrs["Mounts"] if m["Destination"] == "/run/jupyter-docker-env"
    )
    with pytest.raises(OSError, match="No such device or address") as refused:
        os.open(Path(folder) / CLAIM_PIPE, os.O_WRONLY | os.O_NONBLOCK)
    assert refused.value.errno == errno.ENXIO
    # And the pool refills to two with other containers, and the next kernel takes one of those
    pools = jde_pools()
    await until(lambda: pools.pool_states(jde_instance)[0].ready == 2, 120, "a refill")
    waiting = {c["Id"] for c in pool_containers(jde_engine, jde_instance)} - {claimed}
    assert len(waiting) == 2
    # And a waiting container is confined like the kernel it will become, its claim folder
    # read-only
    owner = os.stat(jde_workspace)
    check_inside(
        jde_engine,
        sorted(waiting)[0],
        kind="pool",
        user=(owner.st_uid, owner.st_gid),
        mounts={
            str(jde_workspace): "workspace",
            CONTAINER_RUNTIME_DIR: "ro",
            provisioner(km).home: "tmpfs",
        },
        pids=1024,
    )
    other = await jde_kernels("warm", warm_pool_size=2)
    assert provisioner(other).container_id in waiting
    # And the claimed container goes with its kernel
    await km.shutdown_kernel(now=True)
    assert jde_engine.inspect_container(claimed) is None


@pytest.mark.docker
async def test_a_restart_takes_a_warm_kernel_when_one_waits(
    jde_kernels: Callable[..., Any], jde_pools: Callable[..., WarmPools], jde_instance: str
) -> None:
    # Given a warm-started kernel whose pool has refilled
    km = await jde_kernels("warm")
    first = provisioner(km).container_id
    pools = jde_pools()
    await until(lambda: pools.pool_states(jde_instance)[0].ready, 120, "a refill")
    # When it restarts, it takes the waiting kernel, and works
    await km.restart_kernel()
    assert provisioner(km).warm_started
    assert provisioner(km).container_id != first
    assert (await run_code(km, "print(1 + 1)"))[1] == "2\n"


@pytest.mark.docker
async def test_a_pool_forms_on_first_use_and_empties_when_idle(
    jde_kernels: Callable[..., Any],
    jde_pools: Callable[..., WarmPools],
    jde_engine: Engine,
    jde_instance: str,
) -> None:
    # Given warm pools that empty after 3 idle seconds
    pools = jde_pools(idle_timeout=3.0)
    # When an environment's first kernel starts (cold: no pool yet)
    await jde_kernels("cold")
    # Then a pool of its placement forms, and empties once nothing started for a while
    assert len(pools.pool_states(jde_instance)) == 1
    await until(lambda: not pools.pool_states(jde_instance), 60, "the idle pool emptied")
    await until(lambda: not pool_containers(jde_engine, jde_instance), 30, "no pool container")


@pytest.mark.docker
async def test_the_idle_memory_budget_caps_all_pools(
    jde_kernel_spec: KernelSpecFactory,
    jde_pools: Callable[..., WarmPools],
    jde_engine: Engine,
    jde_instance: str,
) -> None:
    # Given a budget smaller than one waiting kernel
    pools = jde_pools(memory_budget=1024**2)
    ksm, name = jde_kernel_spec(warm_pool_size=2)
    spec = ksm.get_kernel_spec(name)
    configured = DockerEnvProvisioner(
        kernel_spec=spec, kernel_id="w", **spec.metadata["kernel_provisioner"]["config"]
    )
    # When an environment asks for a pool
    request = configured.warm_request({})
    assert request is not None
    await pools.prewarm(request)
    # Then it stays empty and says why
    await until(lambda: pools.pool_states(jde_instance)[0].error, 30, "the pool's error")
    (state,) = pools.pool_states(jde_instance)
    assert (state.ready, state.starting) == (0, 0)
    assert state.error is not None
    assert "idle memory budget of all warm pools (1 MiB" in state.error
    assert pool_containers(jde_engine, jde_instance) == []


@pytest.mark.docker
async def test_gpu_requests_get_no_pool_unless_allowed(
    jde_kernel_spec: KernelSpecFactory,
    jde_pools: Callable[..., WarmPools],
    jde_engine: Engine,
    jde_instance: str,
) -> None:
    ksm, name = jde_kernel_spec()
    spec = ksm.get_kernel_spec(name)
    configured = DockerEnvProvisioner(
        kernel_spec=spec, kernel_id="w", **spec.metadata["kernel_provisioner"]["config"]
    )
    request = configured.warm_request({"KERNEL_GPUS": "all"})
    assert request is not None
    # Given the default: no warm kernels for GPU requests (they would hold the GPU idle)
    pools = jde_pools()
    await pools.prewarm(request)
    assert pools.pool_states(jde_instance) == []
    # When an administrator allows them, this engine's missing GPU runtime shows in the pool
    pools = jde_pools(gpus=True)
    await pools.prewarm(request)

    def gave_up() -> bool:
        (state,) = pools.pool_states(jde_instance)
        return bool(state.error) and not state.starting  # (it tries a few times first)

    await until(gave_up, 60, "the pool giving up")
    (state,) = pools.pool_states(jde_instance)
    assert state.error is not None
    assert "could not select device driver" in state.error
    assert pool_containers(jde_engine, jde_instance) == []


@pytest.mark.docker
async def test_a_rebuilt_image_is_never_served_from_a_stale_pool(
    jde_kernels: Callable[..., Any],
    jde_pools: Callable[..., WarmPools],
    jde_kernel_image: str,
    jde_engine: Engine,
    jde_instance: str,
) -> None:
    # Given a pool of an environment whose image tag then moves to a rebuilt image
    tag = f"{JDE_PREFIX}/warm-rebuilt:latest"
    original = jde_engine.inspect_image(jde_kernel_image)["Id"]  # type: ignore[index]
    jde_engine.tag(original, *tag.rsplit(":", 1))
    try:
        first = await jde_kernels("warm", image=tag)  # forms the pool; it refills
        pools = jde_pools()
        await until(lambda: pools.pool_states(jde_instance)[0].ready, 120, "a refill")
        rebuilt = jde_build_image(jde_engine, f"FROM {original}\nLABEL rebuilt=1", tag, {})
        rebuilt_id = jde_engine.inspect_image(rebuilt)["Id"]  # type: ignore[index]

        def waiting_images() -> set[str]:
            held = str(provisioner(first).container_id)  # a claimed container keeps its labels
            found = pool_containers(jde_engine, jde_instance)
            return {c["ImageID"] for c in found if c["Id"] != held}

        # When a kernel of it starts, it runs the rebuilt image, started cold
        km = await jde_kernels("cold", image=tag)
        attrs = jde_engine.inspect_container(str(provisioner(km).container_id))
        assert attrs is not None
        assert attrs["Image"] == rebuilt_id
        # And the pool refills with the rebuilt image only
        await until(lambda: waiting_images() == {rebuilt_id}, 120, "a refill of the rebuilt")

        # When the tag moves again and the server refreshes its pools (as after a build)
        await km.shutdown_kernel(now=True)
        jde_engine.tag(original, *tag.rsplit(":", 1))
        await pools.refresh_pools(jde_instance)
        # Then the stale pool is emptied and refilled from the new image, and the previous
        # image, which nothing names or runs any more, is removed
        assert jde_engine.inspect_image(rebuilt_id) is None
        await until(lambda: waiting_images() == {original}, 120, "a refill of the original")
    finally:
        jde_engine.remove_image(tag, force=True)  # the tag; the image keeps its own


@pytest.mark.docker
async def test_a_kernel_lives_on_while_the_engine_does_not_answer_and_dies_with_it(
    jde_kernels: Callable[..., Any], jde_engine: Engine, jde_engine_proxy: EngineProxy
) -> None:
    # Given a kernel whose server reaches the engine through a socket that can go away
    km = await jde_kernels("cold", docker_host=jde_engine_proxy.url)
    prov = provisioner(km)
    container = str(prov.container_id)

    # When the engine stops answering, the kernel, which still answers, is alive and works
    jde_engine_proxy.stop()
    assert await prov.poll() is None
    assert (await run_code(km, "print(1 + 1)"))[1] == "2\n"

    # When its container goes too, the kernel is reported dead with the engine, and why
    jde_engine.remove_container(container)
    assert await exit_code(km, within=10) == -1
    assert prov.engine_lost
    assert prov.exit_reason is not None
    assert "stopped with the Docker engine" in prov.exit_reason
    # And its shutdown does not fail for want of an engine
    await km.shutdown_kernel(now=True)
