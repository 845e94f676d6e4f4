"""What a notebook's user sees when a containerized kernel dies, through a real Jupyter server.

The kernel is started and driven over the server's REST API and kernel websocket, as JupyterLab
does; the engine is the real one (an engine outage is a proxy of its socket that stops).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from jupyter_client.jsonutil import json_default
from jupyter_client.session import Session

from jupyter_docker_env.engine import Engine
from jupyter_docker_env.kernels.provisioner import instance_id_for, sweep_orphans
from jupyter_docker_env.labels import label

from .conftest import EngineProxy, jde_kernel_spec_json

pytestmark = pytest.mark.docker
KERNEL = "docker-env-deaths"


@pytest.fixture
def jp_server_config() -> dict[str, Any]:
    return {"ServerApp": {"jpserver_extensions": {"jupyter_docker_env": False}}}


@pytest.fixture
def jde_server_kernel_spec(jde_kernel_image: str, jp_data_dir: Path, jp_root_dir: Path) -> Any:
    """Write the kernel spec a server finds (config overrides as keyword args)."""
    if os.geteuid() == 0:
        os.chown(jp_root_dir, 1000, 1000)  # kernels run as the workspace's owner, never root

    def write(**config: Any) -> str:
        folder = jp_data_dir / "kernels" / KERNEL
        folder.mkdir(parents=True, exist_ok=True)
        spec = jde_kernel_spec_json(jde_kernel_image, "deaths", **config)
        (folder / "kernel.json").write_text(json.dumps(spec))
        return KERNEL

    return write


async def start_kernel(jp_fetch: Any, name: str) -> str:
    reply = await jp_fetch("api", "kernels", method="POST", body=json.dumps({"name": name}))
    return str(json.loads(reply.body)["id"])


async def kernel_model(jp_fetch: Any, kernel_id: str) -> dict[str, Any]:
    return dict(json.loads((await jp_fetch("api", "kernels", kernel_id)).body))


class Notebook:
    """A websocket client of one kernel, as JupyterLab's is (the JSON protocol)."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.session = Session()
        self.messages: list[dict[str, Any]] = []

    def execute(self, code: str) -> str:
        msg = self.session.msg("execute_request", {"code": code, "silent": False})
        msg["channel"] = "shell"
        self.ws.write_message(json.dumps(msg, default=json_default))
        return str(msg["header"]["msg_id"])

    async def until(self, wanted: Any, seconds: float) -> dict[str, Any]:
        """Read messages until one satisfies ``wanted``; return it."""
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            assert left > 0, (
                f"not seen within {seconds} s: {[m['msg_type'] for m in self.messages]}"
            )
            raw = await asyncio.wait_for(self.ws.read_message(), left)
            assert raw is not None, "the server closed the kernel's websocket"
            msg = json.loads(raw)
            self.messages.append(msg)
            if wanted(msg):
                return msg

    def output_of(self, msg_id: str) -> str:
        return "".join(
            m["content"].get("text", "")
            for m in self.messages
            if m["msg_type"] == "stream" and m["parent_header"].get("msg_id") == msg_id
        )


def status(state: str) -> Any:
    return lambda m: m["msg_type"] == "status" and m["content"]["execution_state"] == state


async def test_a_cell_killed_for_memory_says_so_and_the_kernel_is_idle_again_soon(
    jp_fetch: Any,
    jp_ws_fetch: Any,
    jp_serverapp: Any,
    jde_server_kernel_spec: Any,
    jde_engine: Engine,
) -> None:
    # Given a notebook on a kernel limited to 192 MiB
    kernel_id = await start_kernel(jp_fetch, jde_server_kernel_spec(mem_limit="192m"))
    notebook = Notebook(await jp_ws_fetch("api", "kernels", kernel_id, "channels"))
    try:
        await notebook.until(lambda m: True, 30)  # the kernel answers

        # When a cell allocates past the limit
        cell = notebook.execute("data = b'x' * (1024 << 20)")

        # Then, before the kernel restarts, the cell shows that it was killed for memory
        await notebook.until(status("restarting"), 60)
        shown = notebook.output_of(cell)
        assert "ran out of memory (limit 192 MiB)" in shown, notebook.messages[-5:]
        # And the kernel comes back idle by itself (nothing runs in it meanwhile), saying why
        # it restarted
        restarted = time.monotonic()
        while (model := await kernel_model(jp_fetch, kernel_id))["execution_state"] != "idle":
            assert time.monotonic() - restarted < 60, model
            await asyncio.sleep(0.2)
        assert "out of memory" in model.get("reason", "")
        # And the notebook, reconnecting as JupyterLab does after "restarting", is told the
        # kernel is idle (not left "unknown" until it runs something), and runs cells again
        notebook.ws.close()
        notebook = Notebook(await jp_ws_fetch("api", "kernels", kernel_id, "channels"))
        await notebook.until(lambda m: status("idle")(m) and not m["parent_header"], 10)
        again = notebook.execute("print(1 + 1)")
        await notebook.until(
            lambda m: m["msg_type"] == "stream" and m["parent_header"].get("msg_id") == again, 30
        )
        assert notebook.output_of(again) == "2\n"
    finally:
        notebook.ws.close()
        await jp_fetch("api", "kernels", kernel_id, method="DELETE")
        await sweep_orphans(jde_engine, instance_id_for(jp_serverapp.root_dir, jp_serverapp.port))


async def test_a_kernel_that_died_with_the_engine_is_reported_dead_and_not_restarted(
    jp_fetch: Any,
    jp_ws_fetch: Any,
    jp_serverapp: Any,
    jde_server_kernel_spec: Any,
    jde_engine: Engine,
    jde_engine_proxy: EngineProxy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a notebook running a long cell on a kernel whose server reaches the engine through
    # a socket that can go away
    kernel_id = await start_kernel(
        jp_fetch, jde_server_kernel_spec(docker_host=jde_engine_proxy.url)
    )
    notebook = Notebook(await jp_ws_fetch("api", "kernels", kernel_id, "channels"))
    (container,) = jde_engine.containers({label("kernel-id"): kernel_id})
    try:
        await notebook.until(lambda m: True, 30)
        cell = notebook.execute("import time; time.sleep(600)")
        await notebook.until(status("busy"), 30)

        # When the engine goes down, taking the kernel's container with it
        jde_engine_proxy.stop()
        jde_engine.remove_container(container["Id"])

        # Then the cell ends with why, the notebook is told the kernel is dead, and nothing
        # restarts it
        await notebook.until(status("dead"), 30)
        assert "stopped with the Docker engine" in notebook.output_of(cell)
        assert not [m for m in notebook.messages if status("restarting")(m)]
        model = await kernel_model(jp_fetch, kernel_id)
        assert model["execution_state"] == "dead"
        assert "Start Docker again, then start a new kernel" in model["reason"]
        # And its restarter has stopped: nothing polls or restarts it any more
        km = jp_serverapp.kernel_manager.get_kernel(kernel_id)
        assert km._restarter is not None
        assert km._restarter._pcallback is None
        # And the server logged it in words, not restarter tracebacks
        assert "Traceback" not in caplog.text
        assert "stopped with the Docker engine" in caplog.text
        assert (await kernel_model(jp_fetch, kernel_id))["execution_state"] == "dead"
    finally:
        notebook.ws.close()
        await jp_fetch("api", "kernels", kernel_id, method="DELETE")
        await sweep_orphans(jde_engine, instance_id_for(jp_serverapp.root_dir, jp_serverapp.port))
