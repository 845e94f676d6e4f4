"""Kernel start latency: local ipykernel, a cold container, a warm (pooled) container.

    .venv/bin/python benchmarks/kernel_start.py [--image IMAGE] [-n 10] [--executes 1000] [--json]

One start = ``AsyncKernelManager.start_kernel`` → the ``execute_reply`` of ``1+1`` on the shell
channel, sent as soon as the client's channels are open (ZeroMQ queues it until the kernel
listens). The three kinds alternate, in a rotating order, so that all see the same machine; before
every start the warm pool is full and idle, so a refill never competes with a measured start.
The report gives medians (and min-max), the ratios to the local start, the same starts measured
the way ``KernelClient.wait_for_ready`` waits (kernel_info, then an iopub message within 0.2 s,
else again: what jupyter_client and JupyterLab's nudges add on top), the idle memory of a pooled
kernel, and then one kernel of each kind answering ``--executes`` tiny executes in a row.

``--json`` prints one JSON object as the last line (seconds): ``local_cold_s``,
``container_cold_s``, ``container_warm_s`` (medians), their ``*_ready_s`` counterparts with
wait_for_ready, ``warm_claim_s`` (the start_kernel part of a warm start), ``warm_ratio`` and
``pool_idle_memory_bytes``. Without ``--image`` a small kernel image is built from
``$JDE_BASE_IMAGE`` (as the tests build theirs).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager

from jupyter_docker_env.containers import WarmPools
from jupyter_docker_env.engine import shared_engine
from jupyter_docker_env.kernels.provisioner import DockerEnvProvisioner, sweep_orphans

KINDS = ("local_cold", "container_cold", "container_warm")


def write_specs(root: Path, image: str, workspace: Path, run: str) -> dict[str, str]:
    """Kernel specs for each kind; returns kind → spec name."""
    docker = {"image": image, "env_name": "bench", "workspace": str(workspace)}
    specs: dict[str, dict[str, Any]] = {
        "local_cold": {
            "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "local",
            "language": "python",
        }
    }
    for kind, instance in (("container_cold", "cold"), ("container_warm", "warm")):
        config = {**docker, "instance_id": f"bench-{instance}-{run}"}
        specs[kind] = {
            "argv": [],
            "display_name": kind,
            "language": "python",
            "metadata": {
                "kernel_provisioner": {
                    "provisioner_name": "docker-env-provisioner",
                    "config": config,
                }
            },
        }
    for kind, spec in specs.items():
        (root / kind).mkdir(parents=True)
        (root / kind / "kernel.json").write_text(json.dumps(spec))
    return {kind: kind for kind in specs}


async def first_reply(ksm: KernelSpecManager, name: str, cwd: str, ready: bool) -> dict[str, Any]:
    """Start a kernel; time it until the first ``1+1`` reply. ``ready``: wait_for_ready first."""
    t0 = time.perf_counter()
    km = AsyncKernelManager(kernel_name=name, kernel_spec_manager=ksm)
    await km.start_kernel(cwd=cwd)
    started = time.perf_counter() - t0
    kc = km.client()
    kc.start_channels()
    if ready:
        await kc.wait_for_ready(timeout=60)
    msg_id = kc.execute("1+1", silent=False)
    while (reply := await kc.get_shell_msg(timeout=60))["parent_header"].get("msg_id") != msg_id:
        pass
    elapsed = time.perf_counter() - t0
    assert reply["content"]["status"] == "ok", reply
    kc.stop_channels()
    warm = bool(getattr(km.provisioner, "warm_started", False))
    await km.shutdown_kernel(now=True)
    return {"s": elapsed, "start_kernel_s": started, "warm": warm}


async def round_trips(ksm: KernelSpecManager, name: str, cwd: str, count: int) -> float:
    km = AsyncKernelManager(kernel_name=name, kernel_spec_manager=ksm)
    await km.start_kernel(cwd=cwd)
    kc = km.client()
    kc.start_channels()
    await kc.wait_for_ready(timeout=60)
    t0 = time.perf_counter()
    for _ in range(count):
        msg_id = kc.execute("1+1")
        while (await kc.get_shell_msg(timeout=30))["parent_header"].get("msg_id") != msg_id:
            pass
    elapsed = time.perf_counter() - t0
    kc.stop_channels()
    await km.shutdown_kernel(now=True)
    return elapsed


class WarmPool:
    """The warm kind's pool: enabled for its instance, waited for before every start."""

    def __init__(self, ksm: KernelSpecManager, name: str) -> None:
        spec = ksm.get_kernel_spec(name)
        config = spec.metadata["kernel_provisioner"]["config"]
        self.provisioner = DockerEnvProvisioner(kernel_spec=spec, kernel_id="bench", **config)
        backend = self.provisioner.containers
        assert isinstance(backend, WarmPools), "the local back end keeps warm pools"
        self.backend: WarmPools = backend
        self.instance = config["instance_id"]
        self.backend.enable_pools(self.instance, self.provisioner.pool_settings())

    async def fill(self) -> None:
        request = self.provisioner.warm_request(dict(os.environ))
        assert request is not None
        await self.backend.prewarm(request)
        await self.full()

    async def full(self) -> None:
        """Until every pool is full and nothing starts (a refill never overlaps a measure)."""
        while True:
            states = self.backend.pool_states(self.instance)
            if states and all(p.ready >= p.size and not p.starting for p in states):
                return
            if any(p.error for p in states):
                raise RuntimeError(f"the warm pool cannot fill: {states}")
            await asyncio.sleep(0.05)

    def idle_memory(self) -> int:
        states = self.backend.pool_states(self.instance)
        return max((p.idle_memory // max(p.ready, 1) for p in states), default=0)

    async def close(self) -> None:
        await self.backend.close_pools(self.instance)


def build_image() -> str:
    base = os.environ.get("JDE_BASE_IMAGE")
    if not base:
        raise SystemExit("give --image (an image with ipykernel on PATH) or set JDE_BASE_IMAGE")
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.conftest import CA_BUNDLE, JDE_KERNEL_DOCKERFILE, jde_build_image

    ca = Path(CA_BUNDLE or "/etc/ssl/certs/ca-certificates.crt")
    print(f"building the benchmark's kernel image on {base} ...", file=sys.stderr)
    return jde_build_image(
        shared_engine(),
        JDE_KERNEL_DOCKERFILE.format(base=base),
        "jde-bench/kernel:latest",
        {"ca-certificates.crt": ca},
    )


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} s  ({min(values):.2f}-{max(values):.2f})"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", help="an image with ipykernel on PATH (default: build one)")
    parser.add_argument("-n", type=int, default=10, help="starts of each kind (default 10)")
    parser.add_argument("--executes", type=int, default=1000, help="tiny executes per kernel")
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    args = parser.parse_args()
    image = args.image or build_image()
    run = uuid.uuid4().hex[:8]

    with tempfile.TemporaryDirectory(prefix="jde-bench-") as tmp:
        root = Path(tmp)
        os.chmod(root, 0o755)
        workspace = root / "workspace"
        workspace.mkdir()
        if os.geteuid() == 0:  # kernels never run as root: give the workspace to a user
            os.chown(workspace, 1000, 1000)
        names = write_specs(root / "kernels", image, workspace, run)
        ksm = KernelSpecManager(kernel_dirs=[str(root / "kernels")])
        cwd = str(workspace)
        pool = WarmPool(ksm, names["container_warm"])
        try:
            await pool.fill()
            # one of each first: the container kinds start their network sandboxes here
            for kind in KINDS:
                await first_reply(ksm, names[kind], cwd, ready=False)
                await pool.full()
            times: dict[str, list[dict[str, Any]]] = {k: [] for k in KINDS}
            ready: dict[str, list[float]] = {k: [] for k in KINDS}
            for i in range(args.n):
                order = KINDS[i % 3 :] + KINDS[: i % 3]
                for kind in order:
                    await pool.full()
                    times[kind].append(await first_reply(ksm, names[kind], cwd, ready=False))
                for kind in order:
                    await pool.full()
                    ready[kind].append((await first_reply(ksm, names[kind], cwd, ready=True))["s"])
            await pool.full()
            idle_memory = pool.idle_memory()
        finally:
            await pool.close()
        warm_misses = sum(not t["warm"] for t in times["container_warm"])
        medians = {k: statistics.median(t["s"] for t in times[k]) for k in KINDS}
        ready_medians = {k: statistics.median(ready[k]) for k in KINDS}
        claim = statistics.median(t["start_kernel_s"] for t in times["container_warm"])
        local = medians["local_cold"]

        print(f"start -> first execute_reply of 1+1, medians of {args.n} (interleaved):")
        for kind in KINDS:
            seconds = [t["s"] for t in times[kind]]
            print(f"  {kind:<15} {summary(seconds)}   {medians[kind] / local:.2f}x local")
        print(f"  warm starts that found a warm kernel: {args.n - warm_misses}/{args.n}")
        print(f"  of a warm start, start_kernel (claim, until the kernel listens): {claim:.3f} s")
        print("the same, waiting with KernelClient.wait_for_ready before the execute:")
        for kind in KINDS:
            print(f"  {kind:<15} {summary(ready[kind])}   {ready_medians[kind] / local:.2f}x")
        print(
            f"idle memory of a pooled kernel (docker stats, page cache excluded): "
            f"{idle_memory / 1024**2:.1f} MiB"
        )

        trips: dict[str, float] = {}
        if args.executes:
            for kind in ("local_cold", "container_cold"):
                trips[kind] = await round_trips(ksm, names[kind], cwd, args.executes)
            print(f"{args.executes} sequential executes of 1+1 (round trips):")
            for kind, total in trips.items():
                print(f"  {kind:<15} {total:.3f} s   ({total / args.executes * 1e3:.2f} ms each)")
        for instance in ("cold", "warm"):
            await sweep_orphans(shared_engine(), f"bench-{instance}-{run}")

    if args.json:
        result: dict[str, Any] = {f"{k}_s": round(medians[k], 4) for k in KINDS}
        result |= {f"{k}_ready_s": round(ready_medians[k], 4) for k in KINDS}
        result |= {
            "n": args.n,
            "warm_ratio": round(medians["container_warm"] / local, 3),
            "warm_claim_s": round(claim, 4),
            "warm_misses": warm_misses,
            "pool_idle_memory_bytes": idle_memory,
            "image": image,
        }
        per_execute = {k: v / args.executes * 1e3 for k, v in trips.items()}
        result |= {f"{k}_round_trip_ms": round(v, 3) for k, v in per_execute.items()}
        print(json.dumps(result))


if __name__ == "__main__":
    asyncio.run(main())
