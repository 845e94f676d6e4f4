"""Build times: cold, unchanged, one package added, and pulled from a registry instead of built.

    export JDE_BASE_IMAGE=$(bash scripts/docker-up.sh | tail -n 1)
    .venv/bin/python benchmarks/build_cache.py [-n 3]        (or: make bench)

All on the real engine with a small environment (one pinned pip package on the base image). The
cold build uses ``no_cache`` and a spec unique to this run, so no layer of it is cached. The other
cases are timed in the same run and printed with their ratio to the cold build (medians of -n):

- unchanged: the same folder built again (nothing to do but hash and look up the image);
- add one package: one more pip package (the base and ipykernel layers come from the cache);
- pull instead of build: the last cold build is pushed to a registry on loopback (Debian's
  docker-registry, its own storage in a temp dir), every local image of it is removed, as on a
  colleague's engine that has the base image and nothing else, and the folder is built again.
  The run checks that the pull downloaded every layer but the base image's.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from jupyter_docker_env.app import ca_bundle_from_env
from jupyter_docker_env.builder import LABEL_ENV, Builder, BuildOptions, BuildSettings
from jupyter_docker_env.engine import LABEL_MANAGED, Engine
from jupyter_docker_env.jobs import Job
from jupyter_docker_env.spec import SPEC_FILE

PREFIX = "jde-bench"


@contextmanager
def loopback_registry() -> Iterator[str]:
    """A docker-registry on a free loopback port with throwaway storage; yields HOST:PORT/NS."""
    binary = shutil.which("docker-registry")
    if binary is None:
        sys.exit("Debian's docker-registry is needed (`make docker` installs it)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        host = f"127.0.0.1:{s.getsockname()[1]}"
    root = Path(tempfile.mkdtemp(prefix="jde-bench-registry-"))
    (root / "config.yml").write_text(
        f"version: 0.1\nlog: {{level: error}}\nhttp: {{addr: {host}, secret: jde-bench}}\n"
        f"storage: {{filesystem: {{rootdirectory: {root / 'data'}}}}}\n"
    )
    proc = subprocess.Popen(
        [binary, "serve", str(root / "config.yml")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                urllib.request.urlopen(f"http://{host}/v2/", timeout=1).close()
                break
            except (urllib.error.URLError, OSError):
                if time.monotonic() > deadline or proc.poll() is not None:
                    sys.exit(f"docker-registry did not start on {host}")
                time.sleep(0.1)
        yield f"{host}/{PREFIX}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(root, ignore_errors=True)


def timed(what: str, fn: Callable[[], dict[str, Any]]) -> tuple[float, dict[str, Any]]:
    print(f"  {what} ...", end="", flush=True, file=sys.stderr)
    os.sync()  # the write-back of earlier steps (removed images, pushed blobs) is not this case's
    t0 = time.perf_counter()
    result = fn()
    elapsed = time.perf_counter() - t0
    print(f" {elapsed:.2f} s", file=sys.stderr)
    return elapsed, result


def remove_env_images(engine: Engine, name: str) -> None:
    """Every local image of the environment, with all its tags (registry tags included)."""
    for image in engine.images({LABEL_MANAGED: "true", LABEL_ENV: name}):
        engine.remove_image(image["Id"], force=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--base", default=os.environ.get("JDE_BASE_IMAGE"), help="base image")
    p.add_argument("-n", type=int, default=3, help="repeats of the cold, unchanged and pull cases")
    args = p.parse_args()
    if not args.base:
        sys.exit("set JDE_BASE_IMAGE or --base (`bash scripts/docker-up.sh | tail -n 1`)")
    ca_bundle = ca_bundle_from_env()
    if not ca_bundle:
        print("warning: no PIP_CERT/REQUESTS_CA_BUNDLE/SSL_CERT_FILE: builds use no CA bundle")

    engine = Engine()
    run = uuid.uuid4().hex[:8]
    name = f"bench-{run}"
    work = Path(tempfile.mkdtemp(prefix="jde-bench-"))
    folder = work / name
    folder.mkdir()

    def write_spec(salt: int, pip: str = '"six==1.16.0"') -> None:
        # A new salt is a new environment (its own hash and tag) with the same layers' recipe.
        (folder / SPEC_FILE).write_text(f'pip = [{pip}]\nenv = {{ RUN = "{run}-{salt}" }}\n')

    base = engine.inspect_image(args.base)
    if base is None:
        sys.exit(f"the base image {args.base} is not on this engine (`make docker` makes it)")
    base_layers = len(base["RootFS"]["Layers"])
    times: dict[str, list[float]] = {}
    try:
        with loopback_registry() as registry:
            builder = Builder(
                engine,
                BuildSettings(
                    default_base=args.base,
                    ca_bundle=ca_bundle,
                    image_prefix=PREFIX,
                    registry=registry,
                ),
            )
            jobs: list[Job] = []

            def build(**options: bool) -> dict[str, Any]:
                jobs.append(Job(name, "build"))
                return builder.build(folder, BuildOptions(**options), jobs[-1])

            print(f"environment {name} on {args.base}, registry {registry}", file=sys.stderr)
            colds = times["cold build (no cache)"] = []
            for salt in range(args.n):
                write_spec(salt)
                took, cold = timed("cold build", lambda: build(no_cache=True))
                assert cold["built"], cold
                colds.append(took)

            unchanged = times["unchanged rebuild"] = []
            for _ in range(args.n):
                took, again = timed("unchanged rebuild", build)
                assert (again["built"], again["pulled"]) == (False, False), again
                unchanged.append(took)

            write_spec(args.n - 1, '"six==1.16.0", "tabulate==0.9.0"')
            took, added = timed("add one package", build)
            assert added["built"], added
            times["add one package"] = [took]

            # Share the last cold build: its layers exist nowhere else, unlike those that the
            # layer cache hands to other builds.
            write_spec(args.n - 1)
            took, _ = timed("push", lambda: builder.push(folder, Job(name, "push")))
            times["push (2 tags)"] = [took]
            pulls = times["pull instead of build"] = []
            for _ in range(args.n):
                remove_env_images(engine, name)
                took, pulled = timed("pull instead of build", build)
                assert (pulled["built"], pulled["pulled"]) == (False, True), pulled
                assert (pulled["image_id"], pulled["lock"]) == (cold["image_id"], cold["lock"])
                # As on a colleague's engine, only the base image's layers were there already.
                reused = sum(line.endswith(": Already exists") for line in jobs[-1].log)
                assert reused == base_layers, "\n".join(jobs[-1].log)
                pulls.append(took)
    finally:
        remove_env_images(engine, name)
        shutil.rmtree(work, ignore_errors=True)
        engine.close()

    cold_s = statistics.median(times["cold build (no cache)"])
    print(f"\n{'case':<24}{'seconds':>9}{'cold / case':>13}   samples (median shown)")
    for case, samples in times.items():
        took = statistics.median(samples)
        shown = " ".join(f"{t:.2f}" for t in samples)
        print(f"{case:<24}{took:>9.2f}{cold_s / took:>12.1f}x   {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
