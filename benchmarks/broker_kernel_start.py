"""Kernel start through the launch broker against the same kernel on the local engine.

    .venv/bin/python benchmarks/broker_kernel_start.py [-n 7] [--executes 500] [--json]

On a shared hub a single-user server has no Docker socket: its provisioner asks the broker
(HTTP, the hub token checked against the hub's API, the policy, then the engine). This measures
what that path costs. The broker runs here in its own thread with a stand-in for the hub's REST
API (the token → user lookup the broker caches), builds one environment for the user, and both
kinds start a kernel of that same image on the same workspace folder, cold (no warm pool):

- ``local``: the provisioner's local back end, as on a laptop;
- ``broker``: the provisioner's broker back end, as a hub user's server.

One start = ``AsyncKernelManager.start_kernel`` → the ``execute_reply`` of ``1+1`` (as in
kernel_start.py); the kinds alternate so that both see the same machine. Then one kernel of each
answers ``--executes`` tiny executes in a row (the broker is not on that path: the ratio should
be 1). Prints medians (min-max) and the ratios broker / local; ``--json`` adds one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jupyter_client.kernelspec import KernelSpecManager
from tornado import web
from tornado.httpclient import HTTPClient, HTTPRequest
from traitlets.config import Config

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(1, str(Path(__file__).parent.parent))
from kernel_start import first_reply, round_trips  # the same measure

from jupyter_docker_env import labels as L
from jupyter_docker_env.broker.client import BrokerClient
from jupyter_docker_env.config import ca_bundle_from_env
from jupyter_docker_env.engine import shared_engine
from jupyter_docker_env.kernels import kernelspecs
from tests.brokers import BASE_PATH, run_broker  # the broker as the tests run it
from tests.conftest import jde_free_port

USER, TOKEN, BROKER_TOKEN = "bench", "tok-bench", "tok-broker"
KINDS = ("local", "broker")


class _Hub(web.RequestHandler):
    """The two calls of the hub's REST API the broker makes: who owns a token, and that user."""

    def get(self, name: str = "") -> None:
        token = self.request.headers.get("Authorization", "").removeprefix("token ")
        if token not in (TOKEN, BROKER_TOKEN):
            raise web.HTTPError(403)
        self.finish({"kind": "user", "name": USER, "admin": False, "groups": []})


def start_broker(base: str, workspace: Path, run: str) -> tuple[str, Callable[[], None]]:
    """The broker in its own thread and event loop; (its URL, a stop function)."""
    hub_port, broker_port = jde_free_port(), jde_free_port()
    config = Config()
    config.DockerEnvBroker.update(
        hub_api_url=f"http://127.0.0.1:{hub_port}/hub/api",
        api_token=BROKER_TOKEN,
        bind_url=f"http://127.0.0.1:{broker_port}",
        base_path=BASE_PATH,
        image_prefix=f"jde-bench-{run}",
        allowed_bases=[base],
        default_base=base,
        network_prefix=f"jde-bench-{run}",
        workspace_volume=str(workspace),  # a host folder: the same one the local kernels mount
        workspace_path=str(workspace),
        state_dir=str(workspace.parent / "broker-state"),
        users={USER: "1000:1000"},
        limits={"kernels": 10},
        ca_bundle=ca_bundle_from_env(),
        reap_interval=0.0,
    )
    hub = web.Application([(r"/hub/api/user", _Hub), (r"/hub/api/users/([^/]+)", _Hub)])
    _, url, stop = run_broker(config, hub, hub_port, broker_port)
    logging.getLogger("jupyter_docker_env.broker.audit").setLevel(logging.WARNING)  # one per start
    return url, stop


def call(url: str, method: str, path: str, body: Any = None) -> Any:
    for _ in range(100):
        try:
            response = HTTPClient().fetch(
                HTTPRequest(
                    f"{url}api/{path}",
                    method=method,
                    headers={"Authorization": f"token {TOKEN}"},
                    body=None if body is None else json.dumps(body),
                    request_timeout=600,
                )
            )
            return json.loads(response.body or b"null")
        except ConnectionRefusedError:
            time.sleep(0.05)
    raise RuntimeError(f"the broker at {url} does not answer")


def build(url: str) -> str:
    """The user's environment "bench", built by the broker; its image."""
    started = call(url, "POST", "builds", {"name": "bench", "files": {"docker-env.toml": ""}})
    while (op := call(url, "GET", f"builds/{started['id']}"))["state"] in ("queued", "running"):
        time.sleep(0.5)
    if op["state"] != "succeeded":
        raise RuntimeError("\n".join(op["log"][-20:]))
    return str(op["result"]["image"])


def write_specs(root: Path, image: str, workspace: Path, run: str) -> None:
    """A kernel spec for each kind, as the extension writes them; named docker-env-bench-KIND."""
    for kind in KINDS:
        config = {
            "workspace": str(workspace),
            "instance_id": f"bench-{kind}-{run}",
            "backend": kind,
            "warm": 0,
        }
        kernelspecs.write(root, kernelspecs.kernel_json(f"bench-{kind}", image, False, config))


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} s ({min(values):.3f}-{max(values):.3f})"


async def measure(ksm: KernelSpecManager, cwd: str, n: int, executes: int) -> dict[str, Any]:
    starts: dict[str, list[float]] = {kind: [] for kind in KINDS}
    name = {kind: kernelspecs.kernel_name(f"bench-{kind}") for kind in KINDS}
    for kind in KINDS:  # one unmeasured start each: images, networks and sandboxes exist
        await first_reply(ksm, name[kind], cwd, ready=False)
    for i in range(n):
        for kind in KINDS[i % 2 :] + KINDS[: i % 2]:
            starts[kind].append((await first_reply(ksm, name[kind], cwd, ready=False))["s"])
    loops = {kind: await round_trips(ksm, name[kind], cwd, executes) for kind in KINDS}
    return {"starts": starts, "executes": loops}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=7, help="measured starts of each kind")
    parser.add_argument("--executes", type=int, default=500)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    base = os.environ.get("JDE_BASE_IMAGE")
    if not base:
        sys.exit("set JDE_BASE_IMAGE (the last line of `bash scripts/docker-up.sh`)")
    run = uuid.uuid4().hex[:8]
    folder = Path(tempfile.mkdtemp(prefix="jde-bench-broker-"))
    workspace = folder / "work"
    workspace.mkdir()
    if os.geteuid() == 0:
        os.chown(workspace, 1000, 1000)
    url, stop = start_broker(base, workspace, run)
    engine = shared_engine()
    try:
        image = build(url)
        BrokerClient.instance(url=url, token=TOKEN)
        write_specs(folder / "kernels", image, workspace, run)
        ksm = KernelSpecManager(kernel_dirs=[str(folder / "kernels")])
        result = asyncio.run(measure(ksm, str(workspace), args.n, args.executes))
        call(url, "DELETE", "images/bench")
    finally:
        stop()
        for c in engine.containers({L.MANAGED: "true", L.HUB_USER: USER}):
            engine.remove_container(c["Id"])
        for c in engine.containers({L.MANAGED: "true", L.INSTANCE: f"bench-local-{run}"}):
            engine.remove_container(c["Id"])
        engine.remove_network(f"jde-bench-{run}-{USER}")
        shutil.rmtree(folder, ignore_errors=True)
    starts, loops = result["starts"], result["executes"]
    local, broker = (statistics.median(starts[k]) for k in KINDS)
    print(f"kernel start to first reply, n={args.n} each (median, min-max):")
    for kind in KINDS:
        print(f"  {kind:7} {summary(starts[kind])}")
    print(f"  broker / local: {broker / local:.2f}x (+{(broker - local) * 1000:.0f} ms)")
    print(
        f"{args.executes} executes in a row: " + ", ".join(f"{k} {loops[k]:.2f} s" for k in KINDS)
    )
    print(f"  broker / local: {loops['broker'] / loops['local']:.2f}x")
    if args.json:
        print(json.dumps({"local_s": local, "broker_s": broker, "ratio": broker / local}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
