"""Kernel start and round-trip latency: containerized (DockerEnvProvisioner) vs local ipykernel.

    .venv/bin/python benchmarks/kernel_start.py --image IMAGE [-n 10] [--executes 1000]

One start = AsyncKernelManager.start_kernel -> client ready -> first ``execute_reply`` of ``1+1``.
Local and containerized starts alternate (and swap order every round) so that both see the same
machine state; the report gives medians and the ratio. The very first containerized start also
creates the server instance's network sandbox: it is reported apart. Then one kernel of each kind
answers ``--executes`` tiny executes one after the other.
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
from pathlib import Path

from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager


def write_specs(root: Path, image: str, connect_mode: str) -> None:
    specs = {
        "bench-local": {
            "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "local",
            "language": "python",
        },
        "bench-docker": {
            "argv": [],
            "display_name": "docker",
            "language": "python",
            "metadata": {
                "kernel_provisioner": {
                    "provisioner_name": "docker-env-provisioner",
                    "config": {"image": image, "env_name": "bench", "connect_mode": connect_mode},
                }
            },
        },
    }
    for name, spec in specs.items():
        (root / name).mkdir(parents=True)
        (root / name / "kernel.json").write_text(json.dumps(spec))


async def start_to_reply(ksm: KernelSpecManager, name: str, cwd: str) -> tuple[float, object]:
    t0 = time.perf_counter()
    km = AsyncKernelManager(kernel_name=name, kernel_spec_manager=ksm)
    await km.start_kernel(cwd=cwd)
    kc = km.client()
    kc.start_channels()
    await kc.wait_for_ready(timeout=60)
    reply = await kc.execute_interactive("1+1", timeout=30, output_hook=lambda msg: None)
    elapsed = time.perf_counter() - t0
    assert reply["content"]["status"] == "ok", reply
    kc.stop_channels()
    return elapsed, km


async def round_trips(ksm: KernelSpecManager, name: str, cwd: str, count: int) -> float:
    _, km = await start_to_reply(ksm, name, cwd)
    assert isinstance(km, AsyncKernelManager)
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


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", required=True, help="an image with ipykernel on PATH")
    parser.add_argument("-n", type=int, default=10, help="starts of each kind (default 10)")
    parser.add_argument("--executes", type=int, default=1000, help="tiny executes per kernel")
    parser.add_argument(
        "--connect-mode", default="auto", choices=["auto", "container-ip", "published"]
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="jde-bench-") as tmp:
        root = Path(tmp)
        write_specs(root / "kernels", args.image, args.connect_mode)
        workspace = root / "workspace"
        os.mkdir(workspace)
        os.chmod(root, 0o755)
        if os.geteuid() == 0:  # kernels never run as root: give the workspace to a user
            os.chown(workspace, 1000, 1000)
        ksm = KernelSpecManager(kernel_dirs=[str(root / "kernels")])
        cwd = str(workspace)

        first, km = await start_to_reply(ksm, "bench-docker", cwd)
        await km.shutdown_kernel(now=True)  # type: ignore[attr-defined]
        times: dict[str, list[float]] = {"bench-local": [], "bench-docker": []}
        for i in range(args.n):
            order = ["bench-local", "bench-docker"][:: 1 if i % 2 == 0 else -1]
            for name in order:
                elapsed, km = await start_to_reply(ksm, name, cwd)
                times[name].append(elapsed)
                await km.shutdown_kernel(now=True)  # type: ignore[attr-defined]
        local = statistics.median(times["bench-local"])
        docker = statistics.median(times["bench-docker"])
        fmt = ", ".join
        print(f"start -> first execute_reply of 1+1, medians of {args.n} (interleaved):")
        print(
            f"  local ipykernel   {local:.3f} s   [{fmt(f'{t:.2f}' for t in times['bench-local'])}]"
        )
        print(
            f"  container         {docker:.3f} s   "
            f"[{fmt(f'{t:.2f}' for t in times['bench-docker'])}]"
        )
        print(f"  ratio             {docker / local:.2f}x   (target <= 1.25x)")
        print(f"  first container start (creates the network sandbox): {first:.3f} s")

        local_rt = await round_trips(ksm, "bench-local", cwd, args.executes)
        docker_rt = await round_trips(ksm, "bench-docker", cwd, args.executes)
        print(f"{args.executes} sequential executes of 1+1 (round trips):")
        for name, total in (("local ipykernel", local_rt), ("container", docker_rt)):
            print(f"  {name:<17} {total:.3f} s   ({total / args.executes * 1e3:.2f} ms each)")
        print(f"  ratio             {docker_rt / local_rt:.2f}x")


if __name__ == "__main__":
    asyncio.run(main())
