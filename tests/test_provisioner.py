"""Kernels in containers: DockerEnvProvisioner against the real Docker engine.

Every kernel here comes from a kernel spec with an empty argv, as the server extension writes
them, and carries the test label plus one instance id per module, swept at the end.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nbformat
import psutil
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient

from jupyter_docker_env.engine import Engine
from jupyter_docker_env.kernels.provisioner import (
    CONNECTION_FILE,
    DockerEnvProvisioner,
    instance_id_for,
    sweep_orphans,
)
from jupyter_docker_env.kernels.resources import parse_gpus, parse_memory
from jupyter_docker_env.labels import MANAGED as LABEL_MANAGED
from jupyter_docker_env.labels import label

from .conftest import JDE_SESSION, JDE_TEST_LABEL

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
        spec = {
            "argv": [],
            "display_name": "Python (test env)",
            "language": "python",
            "metadata": {
                "kernel_provisioner": {
                    "provisioner_name": "docker-env-provisioner",
                    "config": {
                        "image": jde_kernel_image,
                        "env_name": "test-env",
                        "workspace": str(jde_workspace),
                        "instance_id": jde_instance,
                        "extra_labels": {JDE_TEST_LABEL: JDE_SESSION},
                        **config,
                    },
                }
            },
        }
        (tmp_path / "kernels" / name).mkdir(parents=True)
        (tmp_path / "kernels" / name / "kernel.json").write_text(json.dumps(spec))
        return KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")]), name

    return make


@pytest.fixture
def jde_kernel(
    jde_kernel_spec: KernelSpecFactory,
    jde_workspace: Path,
    jp_asyncio_loop: asyncio.AbstractEventLoop,
) -> Iterator[Callable[..., Any]]:
    """Start kernels (config overrides as keyword args); all are shut down afterwards."""
    managers: list[AsyncKernelManager] = []

    async def start(env: dict[str, str] | None = None, **config: Any) -> AsyncKernelManager:
        ksm, name = jde_kernel_spec(**config)
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


def provisioner(km: AsyncKernelManager) -> DockerEnvProvisioner:
    assert isinstance(km.provisioner, DockerEnvProvisioner)
    return km.provisioner


def kernel_containers(engine: Engine, kernel_id: str) -> list[dict[str, Any]]:
    return engine.containers({label("kernel-id"): kernel_id})


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
async def test_a_notebook_uses_workspace_files_by_relative_path_and_owns_what_it_writes(
    jde_kernel_spec: KernelSpecFactory,
    jde_workspace: Path,
    jde_engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a notebook in the workspace's analysis folder, a data file beside it, and a server
    # whose environment holds a secret
    monkeypatch.setenv(SECRET, "must-not-leak")
    instance = f"test-nb-{uuid.uuid4().hex[:8]}"
    ksm, name = jde_kernel_spec(instance_id=instance)
    monkeypatch.setenv("JUPYTER_PATH", str(Path(ksm.kernel_dirs[0]).parent))
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
    client = NotebookClient(
        nb,
        kernel_name=name,
        timeout=60,
        resources={"metadata": {"path": str(jde_workspace / "analysis")}},
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
    # And once nbclient is done, no kernel container is left
    assert jde_engine.containers({label("instance"): instance, label("kernel-id"): None}) == []
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

    # Then it carries the labels that let the server own and sweep it
    labels = attrs["Config"]["Labels"]
    assert labels[label("kernel-id")] == km.kernel_id
    assert labels[label("env")] == "test-env"
    assert labels[label("instance")] == INSTANCE
    assert labels[label("user")]
    assert labels[LABEL_MANAGED] == "true"
    # And the limits, the workspace mount and the working directory
    host = attrs["HostConfig"]
    assert (host["NanoCpus"], host["Memory"], host["PidsLimit"]) == (1_500_000_000, 1024**3, 1024)
    assert host["Binds"][0] == f"{jde_workspace}:{jde_workspace}:rw"
    assert attrs["Config"]["WorkingDir"] == str(jde_workspace / "analysis")
    # And the server's key is nowhere in what `docker inspect` shows
    assert km.session.key.decode() not in json.dumps(attrs)
    # And inside, the connection file is the kernel user's alone
    content, out = await run_code(
        km,
        f"import os; s = os.stat({CONNECTION_FILE!r}); "
        "print(oct(s.st_mode & 0o777), s.st_uid == os.getuid())",
    )
    assert content["status"] == "ok"
    assert out.split() == ["0o400", "True"]


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
    msg_id = kc.execute("x = 42\nimport time\ntime.sleep(120)")
    await asyncio.sleep(1)

    # When it is interrupted, the cell stops with KeyboardInterrupt
    await km.interrupt_kernel()
    while (reply := await kc.get_shell_msg(timeout=20))["parent_header"]["msg_id"] != msg_id:
        pass
    assert reply["content"]["ename"] == "KeyboardInterrupt"
    kc.stop_channels()
    assert (await run_code(km, "print(x)"))[1] == "42\n"

    # When it restarts, it runs in a fresh container and the state is gone
    await km.restart_kernel()
    assert provisioner(km).container_id not in (None, first)
    assert kernel_containers(jde_engine, str(km.kernel_id))[0]["Id"] != first
    content, _ = await run_code(km, "print(x)")
    assert content["ename"] == "NameError"

    # When it shuts down, no container remains
    await km.shutdown_kernel()
    assert kernel_containers(jde_engine, str(km.kernel_id)) == []


@pytest.mark.docker
async def test_a_forced_kill_and_a_kernel_that_dies_leave_no_container(
    jde_kernel: Callable[..., Any], jde_engine: Engine
) -> None:
    # Given two kernels: one is killed by its manager, the other kills itself
    killed, dying = await jde_kernel(), await jde_kernel()
    await killed.shutdown_kernel(now=True)
    assert kernel_containers(jde_engine, str(killed.kernel_id)) == []

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
    await dying.shutdown_kernel(now=True)
    assert kernel_containers(jde_engine, str(dying.kernel_id)) == []


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
    jde_kernel: Callable[..., Any], jde_engine: Engine, jde_instance: str
) -> None:
    before = {c["Id"] for c in jde_engine.containers({label("instance"): jde_instance})}
    # Given this engine, which has no NVIDIA runtime; when a kernel asks for all GPUs
    with pytest.raises(RuntimeError) as err:
        await jde_kernel(env={"KERNEL_GPUS": "all"})
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
@pytest.mark.parametrize("mode", ["container-ip", "published"])
async def test_kernel_ports_are_never_bound_on_other_host_interfaces(
    jde_kernel: Callable[..., Any], mode: str
) -> None:
    # Given a kernel reached at its container's address, or through published ports
    km = await jde_kernel(connect_mode=mode)
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
def test_a_crashed_server_leaves_containers_that_its_restart_sweeps(
    jde_kernel_spec: KernelSpecFactory, jde_engine: Engine, tmp_path: Path
) -> None:
    # Given a server process that starts a kernel and then dies without any cleanup
    instance = f"test-crash-{uuid.uuid4().hex[:8]}"
    ksm, name = jde_kernel_spec(instance_id=instance)
    script = textwrap.dedent(
        f"""
        import asyncio, os, signal
        from jupyter_client.kernelspec import KernelSpecManager
        from jupyter_client.manager import AsyncKernelManager

        async def main():
            ksm = KernelSpecManager(kernel_dirs={ksm.kernel_dirs!r})
            km = AsyncKernelManager(kernel_name={name!r}, kernel_spec_manager=ksm)
            await km.start_kernel()
            print(km.provisioner.container_id, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

        asyncio.run(main())
        """
    )
    crashed = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    left = jde_engine.containers({label("instance"): instance})
    assert crashed.stdout.strip() in {c["Id"] for c in left}

    # When the server starts again and sweeps its instance
    removed = asyncio.run(sweep_orphans(jde_engine, instance))

    # Then the kernel and its network sandbox are gone
    assert set(removed) == {c["Id"] for c in left}
    assert jde_engine.containers({label("instance"): instance}) == []


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
    config = {
        "image": jde_kernel_image,
        "env_name": "demo",
        "extra_labels": {JDE_TEST_LABEL: JDE_SESSION},
    }
    spec_dir.joinpath("kernel.json").write_text(
        json.dumps(
            {
                "argv": [],
                "display_name": "demo",
                "language": "python",
                "metadata": {
                    "kernel_provisioner": {
                        "provisioner_name": "docker-env-provisioner",
                        "config": config,
                    }
                },
            }
        )
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
        (container,) = kernel_containers(jde_engine, kernel_id)
        attrs = jde_engine.inspect_container(container["Id"])
        assert attrs is not None
        # And the per-kernel CPU request and the server's instance id are on its container
        assert attrs["HostConfig"]["NanoCpus"] == 500_000_000
        assert attrs["Config"]["Labels"][label("instance")] == instance
    finally:
        await mkm.shutdown_kernel(kernel_id, now=True)
        await sweep_orphans(jde_engine, instance)
    assert kernel_containers(jde_engine, kernel_id) == []
