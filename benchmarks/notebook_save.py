"""Notebook save latency with and without the hook that records the environment.

    .venv/bin/python benchmarks/notebook_save.py [-n 300] [--packages 150] [--cells 40]

Saves one notebook through jupyter_server's AsyncFileContentsManager (the server's save path:
hooks, validation, signing, atomic write, checkpoint) again and again, in three variants that
alternate every round: no hook registered; the hook registered and the notebook on an
environment's kernel (it writes metadata.docker_env); the hook registered and a notebook on
another kernel. The record is the size of a data-science environment's (``--packages`` locked
distributions), held in memory by the environment service as the server holds it; no engine is
involved, as on the real save path. Prints medians and 95th percentiles, and the hook's own
time per call.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import nbformat
from jupyter_server.services.contents.filemanager import AsyncFileContentsManager

from jupyter_docker_env.models import BaseImage, Lock
from jupyter_docker_env.notebooks.record import NotebookEnv
from jupyter_docker_env.notebooks.saving import pre_save_hook


class Records:
    """The environment service's in-memory records, as the hook reads them."""

    def __init__(self, record: NotebookEnv) -> None:
        self.record = record

    def notebook_record(self, name: str) -> NotebookEnv | None:
        return self.record if name == self.record.env else None


def record(packages: int) -> NotebookEnv:
    pip = tuple(f"package-{i}=={i % 7}.{i % 13}.{i % 5}" for i in range(packages))
    toml = 'base = "python:3.12-slim"\npip = [' + ", ".join(f'"{p}"' for p in pip[:20]) + "]\n"
    return NotebookEnv(
        env="bench",
        kind="spec",
        spec_hash="a" * 64,
        image_id="sha256:" + "b" * 64,
        image_tag="docker-env/bench:" + "a" * 16,
        files={"docker-env.toml": toml},
        lock=Lock(
            pip=pip,
            pip_base=("pip==24.0",),
            apt=("git=1:2.39.5-0+deb12u1",),
            base=BaseImage("python:3.12-slim", "sha256:" + "c" * 64, ""),
        ),
    )


def notebook(kernel: str, cells: int) -> dict[str, Any]:
    nb = nbformat.v4.new_notebook(
        metadata={"kernelspec": {"name": kernel, "display_name": kernel, "language": "python"}}
    )
    for i in range(cells):
        cell = nbformat.v4.new_code_cell(f"x{i} = sum(range({i}))\nprint(x{i})")
        cell.outputs = [nbformat.v4.new_output("stream", text=f"{i * (i - 1) // 2}\n" * 20)]
        nb.cells.append(cell)
    return json.loads(nbformat.writes(nb))  # type: ignore[no-any-return]


def recorded_size(path: Path) -> int:
    """The saved notebook's size, once it is checked to carry its record."""
    assert json.loads(path.read_text())["metadata"]["docker_env"]["env"] == "bench"
    return path.stat().st_size


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=300, help="saves per variant")
    parser.add_argument("--packages", type=int, default=150)
    parser.add_argument("--cells", type=int, default=40)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as root:
        plain = AsyncFileContentsManager(root_dir=root)
        hooked = AsyncFileContentsManager(root_dir=root)
        hook = pre_save_hook(Records(record(args.packages)))  # type: ignore[arg-type]
        hooked.register_pre_save_hook(hook)
        variants = {
            "no hook": (plain, notebook("docker-env-bench", args.cells)),
            "hook, environment kernel": (hooked, notebook("docker-env-bench", args.cells)),
            "hook, other kernel": (hooked, notebook("python3", args.cells)),
        }
        times: dict[str, list[float]] = {name: [] for name in variants}
        for round_ in range(args.n + 10):
            order = list(variants) if round_ % 2 else list(reversed(variants))
            for name in order:
                manager, content = variants[name]
                model = {"type": "notebook", "content": copy.deepcopy(content)}
                t0 = time.perf_counter()
                await manager.save(model, f"{name.replace(' ', '_').replace(',', '')}.ipynb")
                if round_ >= 10:  # warm-up rounds are not counted
                    times[name].append(time.perf_counter() - t0)
        size = recorded_size(Path(root, "hook_environment_kernel.ipynb"))

    model = {"type": "notebook", "content": notebook("docker-env-bench", args.cells)}
    calls = 20_000
    t0 = time.perf_counter()
    for _ in range(calls):
        hook(model=model, path="x.ipynb", contents_manager=None)
    alone = (time.perf_counter() - t0) / calls

    print(f"{args.n} saves per variant, {args.cells} cells, record of {args.packages} packages")
    print(f"notebook with its record: {size / 1024:.0f} KiB")
    print(f"the hook alone: {alone * 1e6:.1f} µs per save")
    base = statistics.median(times["no hook"])
    for name, values in times.items():
        values.sort()
        median = statistics.median(values)
        p95 = values[int(len(values) * 0.95) - 1]
        print(
            f"  {name:<26} median {median * 1e3:6.2f} ms  p95 {p95 * 1e3:6.2f} ms  "
            f"({(median - base) * 1e3:+.2f} ms)"
        )


if __name__ == "__main__":
    asyncio.run(main())
