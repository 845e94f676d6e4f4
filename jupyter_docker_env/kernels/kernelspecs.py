"""Step 4: built environments → kernel specs that select the docker-env provisioner.

The server keeps one folder of generated specs, added to its KernelSpecManager's search path, so
a new environment's kernel appears in /api/kernelspecs as soon as its build ends. The CLI writes
the same kernel.json into a user's or a prefix's kernels folder for nbclient, papermill and
editors that only read files.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

PROVISIONER = "docker-env-provisioner"
KERNEL_PREFIX = "docker-env-"


def kernel_name(env_name: str) -> str:
    """Stable across rebuilds: the spec points at the environment's `latest` tag."""
    return f"{KERNEL_PREFIX}{env_name}"


def kernel_json(
    env_name: str, image: str, gpu: bool, extra_config: dict[str, Any] | None = None
) -> dict[str, Any]:
    config: dict[str, Any] = {"image": image, "env_name": env_name}
    if gpu:
        config["gpus"] = "all"
    config.update(extra_config or {})
    return {
        # The provisioner builds the container's command itself.
        "argv": ["python", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": f"{env_name} (Docker env)",
        "language": "python",
        "interrupt_mode": "signal",
        "metadata": {
            "debugger": True,
            "docker_env": {"env": env_name},
            "kernel_provisioner": {"provisioner_name": PROVISIONER, "config": config},
        },
    }


def write(kernels_dir: Path, spec: dict[str, Any]) -> Path:
    env_name = spec["metadata"]["docker_env"]["env"]
    folder = kernels_dir / kernel_name(env_name)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "kernel.json"
    text = json.dumps(spec, indent=2, sort_keys=True)
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)
    return path


def sync(kernels_dir: Path, specs: list[dict[str, Any]]) -> None:
    """Make ``kernels_dir`` hold exactly ``specs`` (our generated specs only)."""
    wanted = {kernel_name(s["metadata"]["docker_env"]["env"]) for s in specs}
    for spec in specs:
        write(kernels_dir, spec)
    if kernels_dir.is_dir():
        for child in kernels_dir.iterdir():
            if child.name.startswith(KERNEL_PREFIX) and child.name not in wanted:
                shutil.rmtree(child, ignore_errors=True)
