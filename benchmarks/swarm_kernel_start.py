"""Kernel start and round trips on Swarm, side by side with the local back end, in one run.

    .venv/bin/python benchmarks/swarm_kernel_start.py --image IMAGE [-n 10] [--executes 1000]

Needs root: it makes the two-node Swarm of scripts/swarm-cluster.sh (this engine as manager, a
worker dockerd in a network namespace) and takes it down afterwards. IMAGE has ipykernel on
PATH; it is pushed to the loopback registry (``--registry``) and pre-pulled on both nodes with
the back end's global job, timed, so no start below waits for a pull.

One start = AsyncKernelManager.start_kernel -> client ready -> first ``execute_reply`` of
``1+1``. Three kinds alternate, their order rotating every round:

- local: the local back end (a container on this engine, in the instance's network sandbox);
- swarm/manager: a service placed on the manager node (same machine as the server: the cost of
  a service, its secret and the relay hop, without the overlay's VXLAN);
- swarm/worker: a service on the worker node (all of that, over the overlay).

The first Swarm start of the run also creates the instance's overlay network and network
sandbox: it is reported apart. Then one kernel of each kind answers ``--executes`` tiny executes
one after the other, the kinds taking turns: the relay's cost per message.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager

from jupyter_docker_env.containers.swarm import SwarmBackend
from jupyter_docker_env.engine import shared_engine
from jupyter_docker_env.kernels import kernelspecs
from jupyter_docker_env.kernels.provisioner import backend_for, sweep_orphans

CLUSTER = Path(__file__).resolve().parent.parent / "scripts" / "swarm-cluster.sh"
INSTANCE = f"bench-swarm-{os.getpid()}"
KINDS = ("local", "swarm/manager", "swarm/worker")


def env_of(kind: str) -> str:
    return f"bench-{kind.replace('/', '-')}"


def write_specs(root: Path, image: str, manager: str, worker: str) -> None:
    """A kernel spec for each kind, as the extension writes them."""
    placements = {"local": None, "swarm/manager": manager, "swarm/worker": worker}
    for kind, host in placements.items():
        config: dict[str, Any] = {"instance_id": INSTANCE}
        if host is not None:
            config |= {"backend": "swarm", "placement": [f"node.hostname=={host}"]}
        kernelspecs.write(root, kernelspecs.kernel_json(env_of(kind), image, False, config))


async def start_to_reply(
    ksm: KernelSpecManager, name: str, cwd: str
) -> tuple[float, AsyncKernelManager]:
    """Start a kernel; the seconds until its first ``execute_reply`` of ``1+1``, and the kernel."""
    started = time.perf_counter()
    km = AsyncKernelManager(kernel_name=name, kernel_spec_manager=ksm)
    await km.start_kernel(cwd=cwd)
    kc = km.client()
    kc.start_channels()
    await kc.wait_for_ready(timeout=60)
    reply = await kc.execute_interactive("1+1", timeout=30, output_hook=len)
    elapsed = time.perf_counter() - started
    kc.stop_channels()
    assert reply["content"]["status"] == "ok", reply
    return elapsed, km


def share(image: str, remote: str, backend: SwarmBackend) -> float:
    """Push ``image`` as ``remote`` and pull it on every node; return the pre-pull's seconds."""
    engine = backend.engine
    engine.tag(image, *remote.rsplit(":", 1))
    for _ in engine.push(remote):
        pass
    digest = engine.registry_digest(remote)
    started = time.perf_counter()
    failed = backend.prepull_image(f"{remote.rsplit(':', 1)[0]}@{digest}", lambda line: None)
    if failed:
        raise SystemExit(f"pre-pull failed: {failed}")
    return time.perf_counter() - started


async def round_trips(
    ksm: KernelSpecManager, names: dict[str, str], cwd: str, executes: int
) -> dict[str, float]:
    """Seconds each kind's kernel takes for ``executes`` executes; the kinds take turns, 50
    executes at a time, so that all see the same machine."""
    kernels = {kind: (await start_to_reply(ksm, names[kind], cwd))[1] for kind in KINDS}
    clients = {kind: km.client() for kind, km in kernels.items()}
    for kc in clients.values():
        kc.start_channels()
        await kc.wait_for_ready(timeout=60)
    totals = dict.fromkeys(KINDS, 0.0)
    for turn in range(executes // 50):
        for kind in KINDS[turn % 3 :] + KINDS[: turn % 3]:
            kc = clients[kind]
            started = time.perf_counter()
            for _ in range(50):
                msg_id = kc.execute("1+1")
                while (await kc.get_shell_msg(timeout=30))["parent_header"].get("msg_id") != msg_id:
                    pass
            totals[kind] += time.perf_counter() - started
    for kind, kc in clients.items():
        kc.stop_channels()
        await kernels[kind].shutdown_kernel(now=True)
    return totals


async def measure(ksm: KernelSpecManager, cwd: str, n: int, executes: int) -> None:
    names = {kind: kernelspecs.kernel_name(env_of(kind)) for kind in KINDS}
    first: dict[str, float] = {}
    for kind in KINDS:  # network sandboxes, the overlay: made once per instance
        first[kind], km = await start_to_reply(ksm, names[kind], cwd)
        await km.shutdown_kernel(now=True)
    times: dict[str, list[float]] = {kind: [] for kind in KINDS}
    for i in range(n):
        for kind in KINDS[i % 3 :] + KINDS[: i % 3]:
            elapsed, km = await start_to_reply(ksm, names[kind], cwd)
            times[kind].append(elapsed)
            await km.shutdown_kernel(now=True)
    local = statistics.median(times["local"])
    print(f"start -> first execute_reply of 1+1, medians of {n} (interleaved):")
    for kind in KINDS:
        median = statistics.median(times[kind])
        runs = ", ".join(f"{t:.2f}" for t in times[kind])
        print(f"  {kind:<14} {median:.3f} s  {median / local:5.2f}x   [{runs}]")
    made = ", ".join(f"{k} {v:.2f} s" for k, v in first.items())
    print(f"  first start of each (its sandbox; for Swarm also the overlay): {made}")

    print(f"{executes} sequential executes of 1+1 (round trips), 50 at a time per kind in turn:")
    totals = await round_trips(ksm, names, cwd, executes)
    for kind, total in totals.items():
        each = total / executes * 1e3
        print(f"  {kind:<14} {total:.3f} s  ({each:.2f} ms each, {total / totals['local']:.2f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", required=True, help="an image with ipykernel on PATH")
    parser.add_argument("-n", type=int, default=10, help="starts of each kind (default 10)")
    parser.add_argument("--executes", type=int, default=1000, help="tiny executes per kernel")
    parser.add_argument("--registry", default="127.0.0.1:5000/jde-bench", help="loopback registry")
    args = parser.parse_args()

    # One test Swarm per machine at a time, as for tests/test_swarm.py: wait for theirs
    lock = (Path(tempfile.gettempdir()) / "jde-swarm-test.lock").open("w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    up = subprocess.run(["bash", str(CLUSTER), "up"], capture_output=True, text=True, check=False)
    if up.returncode != 0:
        raise SystemExit(f"the two-node Swarm did not come up:\n{up.stderr}")
    _, worker, _ = up.stdout.split()  # id, hostname, socket
    engine = shared_engine(None)
    backend = backend_for("swarm", engine)
    assert isinstance(backend, SwarmBackend)
    backend.workspace_mount = "shared-path"  # both nodes see this machine's file system
    remote = f"{args.registry}/kernel:{os.getpid()}"
    try:
        prepull = share(args.image, remote, backend)
        print(f"pre-pull of the image on both nodes (a global job): {prepull:.2f} s")
        with tempfile.TemporaryDirectory(prefix="jde-bench-") as tmp:
            root = Path(tmp)
            manager = str(engine.system_info()["Name"])
            write_specs(root / "kernels", args.image, manager, worker)
            workspace = root / "workspace"
            workspace.mkdir()
            root.chmod(0o755)
            if os.geteuid() == 0:  # kernels never run as root: give the workspace to a user
                os.chown(workspace, 1000, 1000)
            ksm = KernelSpecManager(kernel_dirs=[str(root / "kernels")])
            asyncio.run(measure(ksm, str(workspace), args.n, args.executes))
    finally:
        asyncio.run(sweep_orphans(engine, INSTANCE, "swarm"))
        asyncio.run(sweep_orphans(engine, INSTANCE))
        engine.remove_image(remote)  # the local tag; the registry keeps its copy
        subprocess.run(["bash", str(CLUSTER), "down"], check=False)
        lock.close()


if __name__ == "__main__":
    main()
