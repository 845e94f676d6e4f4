"""Serving images: how big, how fast. The README's scikit-learn example, end to end.

    export JDE_BASE_IMAGE=$(bash scripts/docker-up.sh | tail -n 1)
    .venv/bin/pip install -e '.[bench]'                 # locust, the load generator
    .venv/bin/python benchmarks/serving.py [--requests 2000] [--repeat 3]

1. Builds the environment (the base image + scikit-learn), trains the README's model in a
   container of it (as a notebook on its kernel would), and builds the serving image.
2. Sizes: base, environment image, serving image, the runtime packages (the serving venv's files),
   the kernel-only packages left out (their files in the environment's venv), the model. It
   checks that the serving image is smaller than the environment's by at least the kernel-only
   packages, and at most 5% over base + runtime packages + model.
3. Latency and throughput of POST /predict: the image served on 127.0.0.1 (`serve`'s settings:
   read-only, no capabilities; one gunicorn worker per CPU), locust (benchmarks/serving_load.py)
   sends a fixed number of requests from 1 and from 8 concurrent clients after a warm-up; p50,
   p99 and requests/s, medians of a few runs (the load generator shares the machine's CPUs).

Images are named jde-bench*; the serving image and its container are removed at the end, the
environment's image is kept for the layer cache of the next run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from jupyter_docker_env.config import load_settings
from jupyter_docker_env.engine import Engine
from jupyter_docker_env.environments.manager import EnvironmentManager
from jupyter_docker_env.models import BuildOptions, ServingOptions
from jupyter_docker_env.operations import Operation, OperationFailed
from jupyter_docker_env.serving.manager import ServingManager

PREFIX = "jde-bench"
HERE = Path(__file__).resolve().parent
TRAIN = """
import os
import joblib
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

X, y = load_iris(return_X_y=True)
model = LogisticRegression(max_iter=500).fit(X, y)
os.makedirs("models", exist_ok=True)
joblib.dump(model, "models/model.joblib")
"""
HANDLER = """
import joblib

model = None


def load(path):
    global model
    model = joblib.load(path)


def predict(payload):
    return {"prediction": model.predict(payload["instances"]).tolist()}
"""
BODY = json.dumps({"instances": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]})
# Run with an image's Python: the total size of files under a folder, or of distributions' files.
SIZE_OF_TREE = """
import os, sys
total = 0
for root, _, files in os.walk(sys.argv[1]):
    for name in files:
        path = os.path.join(root, name)
        if not os.path.islink(path):
            total += os.lstat(path).st_size
print(total)
"""
SIZE_OF_DISTS = """
import importlib.metadata as md, os, sys
total = 0
for name in sys.argv[1:]:
    dist = md.distribution(name)
    for entry in dist.files or []:
        path = str(dist.locate_file(entry))
        if os.path.isfile(path) and not os.path.islink(path):
            total += os.lstat(path).st_size
print(total)
"""


def log(op: Operation, line: str) -> None:
    if line.startswith(("Step ", "Done", "Leaving out", "venv:", "Building")):
        print(f"  {line[:140]}", file=sys.stderr, flush=True)


async def finish(op: Operation) -> Any:
    await op.wait()
    if op.state != "succeeded":
        raise OperationFailed(op.error or op.state, op.failed_step)
    return op.result


def train(engine: Engine, image: str, workspace: Path) -> Path:
    container = engine.create_container(
        image,
        command=["/opt/venv/bin/python", "-c", TRAIN],
        working_dir="/work",
        volumes={str(workspace): {"bind": "/work", "mode": "rw"}},
        network_disabled=True,
    )
    try:
        engine.start_container(container["Id"])
        code = engine.wait_container(container["Id"], timeout=300)
        if code != 0:
            sys.exit(f"training failed: {engine.container_logs(container['Id'], tail=30)}")
    finally:
        engine.remove_container(container["Id"])
    return workspace / "models" / "model.joblib"


def python_size(engine: Engine, image: str, script: str, *args: str) -> int:
    return int(engine.run_output(image, ["/opt/venv/bin/python", "-c", script, *args]).strip())


def mb(size: float) -> str:
    return f"{size / 1e6:.1f} MB" if size >= 1e5 else f"{size / 1e3:.1f} kB"


async def build(workspace: Path, base: str) -> tuple[Engine, ServingManager, Any, Any]:
    settings = load_settings(image_prefix=PREFIX, default_base=base)
    engine = Engine(settings.docker_host or None, builder=settings.builder)
    envs = EnvironmentManager(settings=settings, root_dir=workspace, engine=engine)
    serving = ServingManager(settings=settings, environments=envs, engine=engine)
    loc = envs.location_of(workspace / "environments" / "iris")
    print("Building the environment (scikit-learn on the base image)", file=sys.stderr)
    env = await finish(envs.build(loc, BuildOptions(), [log]))
    print("Training the model in a container of it", file=sys.stderr)
    model = train(engine, env.image, workspace)
    print("Building the serving image", file=sys.stderr)
    options = ServingOptions(model=str(model.relative_to(workspace)), handler="serve.py:predict")
    request = await serving.request(loc, options, workspace)
    served = await finish(serving.build(loc, request, [log]))
    return engine, serving, env, served


def sizes(engine: Engine, base: str, env: Any, served: Any) -> dict[str, int]:
    image = served.serving
    kernel_only = [entry.split("==", 1)[0] for entry in image.removed]
    data = {
        "base": int(engine.inspect_image(base)["Size"]),  # type: ignore[index]
        "environment image": int(image.env_image_size or 0),
        "serving image": image.size,
        "runtime packages": python_size(engine, image.id, SIZE_OF_TREE, "/opt/venv"),
        "model": image.model_size,
        "kernel-only packages": python_size(engine, env.image, SIZE_OF_DISTS, *kernel_only),
        "environment venv": python_size(engine, env.image, SIZE_OF_TREE, "/opt/venv"),
    }
    print("\n| what | size |\n|---|---|")
    for key, value in data.items():
        print(f"| {key} | {mb(value)} |")
    saved = data["environment image"] - data["serving image"]
    floor = data["base"] + data["runtime packages"] + data["model"]
    print(
        f"\nserving image = environment image - {mb(saved)} (kernel-only packages: "
        f"{mb(data['kernel-only packages'])}): "
        + ("OK" if saved >= data["kernel-only packages"] else "FAIL")
    )
    over = data["serving image"] / floor - 1
    print(
        f"serving image = base + runtime packages + model + {over:.2%} "
        f"(at most 5%): " + ("OK" if over <= 0.05 else "FAIL")
    )
    print(f"{len(kernel_only)} distributions left out: {', '.join(image.removed)}")
    return data


def latency(serving: ServingManager, image: str, requests: int, repeat: int) -> None:
    async def start() -> Any:
        container = await serving.run(image, 0)
        if not await serving.wait_ready(container, 120):
            sys.exit(f"{image} did not get ready")
        return container

    container = asyncio.run(start())
    try:
        load = [sys.executable, str(HERE / "serving_load.py"), container.url, "--body", BODY]
        subprocess.run(
            [*load, "--users", "8", "--requests", "200"], check=True, capture_output=True
        )
        print(
            f"\nPOST /predict: {requests} requests of 2 instances each, median of {repeat} runs; "
            f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} before\n"
        )
        print("| clients | p50 | p99 | requests/s | failures |\n|---|---|---|---|---|")
        for users in (1, 8):
            rows = []
            for _ in range(repeat):
                out = subprocess.run(
                    [*load, "--users", str(users), "--requests", str(requests)],
                    check=True,
                    capture_output=True,
                    text=True,
                ).stdout
                rows.append(json.loads(out.strip().splitlines()[-1]))
            p50, p99, rps = (
                statistics.median(r[k] for r in rows) for k in ("p50_ms", "p99_ms", "rps")
            )
            failures = sum(r["failures"] for r in rows)
            print(f"| {users} | {p50:.2f} ms | {p99:.2f} ms | {rps:.0f} | {failures} |")
    finally:
        asyncio.run(serving.stop(container.id))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--requests", type=int, default=2000, help="per run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per concurrency")
    args = parser.parse_args()
    base = os.environ.get("JDE_BASE_IMAGE")
    if not base:
        sys.exit(
            "set JDE_BASE_IMAGE (export JDE_BASE_IMAGE=$(bash scripts/docker-up.sh | tail -n 1))"
        )
    with tempfile.TemporaryDirectory(prefix="jde-bench-serving-") as tmp:
        workspace = Path(tmp)
        env_dir = workspace / "environments" / "iris"
        env_dir.mkdir(parents=True)
        (env_dir / "docker-env.toml").write_text(f'base = "{base}"\npip = ["scikit-learn"]\n')
        (workspace / "serve.py").write_text(HANDLER)
        engine, serving, env, served = asyncio.run(build(workspace, base))
        try:
            sizes(engine, base, env, served)
            latency(serving, served.image, args.requests, args.repeat)
        finally:
            asyncio.run(serving.remove(served.image))
            serving.close()
            serving.environments.close()


if __name__ == "__main__":
    main()
