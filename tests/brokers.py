"""The launch broker in a thread of this process, beside a stand-in for the hub's REST API (for
the broker tests and benchmarks/broker_kernel_start.py)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import requests
from tornado import web
from traitlets.config import Config

from jupyter_docker_env.broker.app import DockerEnvBroker

BASE_PATH = "/services/broker/"


def run_broker(
    config: Config, hub: web.Application, hub_port: int, broker_port: int
) -> tuple[DockerEnvBroker, str, Callable[[], None]]:
    """Start the broker (``config``, its bind_url on ``broker_port``) and ``hub`` on
    ``hub_port`` in their own thread and event loop; the app, the broker's URL once it answers,
    and a function that stops both."""
    app = DockerEnvBroker(config=config)
    app.initialize([])
    started = threading.Event()
    state: dict[str, Any] = {}

    def serve() -> None:
        async def main() -> None:
            hub.listen(hub_port, "127.0.0.1")
            state["loop"], state["task"] = asyncio.get_running_loop(), asyncio.current_task()
            started.set()
            await app.serve()

        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(main())
        except asyncio.CancelledError:
            pass
        finally:
            loop.close()

    thread = threading.Thread(target=serve, name="jde-broker", daemon=True)
    thread.start()
    assert started.wait(30), "the broker's thread did not start"
    url = f"http://127.0.0.1:{broker_port}{BASE_PATH}"
    for _ in range(100):
        try:
            requests.get(f"{url}api/whoami", timeout=2)
            break
        except requests.ConnectionError:
            time.sleep(0.05)

    def stop() -> None:
        state["loop"].call_soon_threadsafe(state["task"].cancel)
        thread.join(30)

    return app, url, stop
