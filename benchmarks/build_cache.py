"""Build times with both builders: cold, unchanged, one package added, no-cache rebuild, and
pulled from a registry instead of built, each as a ratio to that builder's cold build.

    export JDE_BASE_IMAGE=$(bash scripts/docker-up.sh | tail -n 1)
    .venv/bin/python benchmarks/build_cache.py [-n 3] [--builders legacy,buildkit] [--json]

All on the real engine, with a small environment: one apt package and a requirements.txt with
one pinned pip package, on the base image. The run goes round by round (each round a new
environment and one sample of every case, both builders in turn, so that the machine's drifting
load falls on both alike), then pulls; the table shows medians of -n samples, their ratio to the
builder's cold build, and what pip and apt fetched (from their own log lines: a measure that
the machine's load cannot blur):

- cold: nothing of it cached. The legacy builder builds with ``no_cache``. BuildKit builds with
  ``no_cache`` too (every RUN step runs) and with a cache namespace of its own (empty pip and apt
  cache mounts), so it downloads everything, as on a fresh engine;
- unchanged: the same folder built again (nothing to do but hash and find the image);
- add one package: one more line in requirements.txt (a new comment each time, so the pip step
  runs every time; the system and ipykernel layers come from the layer cache, filled by one
  unmeasured build of the environment with the package first);
- no-cache rebuild: ``no_cache`` again, after the builds above: every RUN step runs; BuildKit
  finds the downloads in its cache mounts, the legacy builder downloads them again;
- pull instead of build: the environment's last image is pushed to a registry on loopback
  (Debian's docker-registry, its own storage in a temp dir), every local image of it is removed
  and the folder is built again. The run checks that only the base image's layers were there
  already (and, with BuildKit, two tiny layers that every environment on the base shares), as
  on a colleague's engine that has the base image and nothing else.

It cleans up after itself: its images (prefix ``jde-bench-RUN``), its registry, and the BuildKit
build cache records of its own builds only, found by its cache namespaces (``/var/cache/
jde-bench-RUN…`` in their descriptions) and the layers they stand on that this run created. It
never prunes the build cache globally: other builds on this engine keep theirs. (A BuildKit
``--no-cache`` would empty every cache mount it touches, which is why ``no_cache`` builds of an
environment pass a new build argument instead.)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
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

from jupyter_docker_env import labels as L
from jupyter_docker_env.config import ca_bundle_from_env
from jupyter_docker_env.engine import Engine
from jupyter_docker_env.environments.images import BuildSettings, ImageBuilder
from jupyter_docker_env.environments.spec import SPEC_FILE
from jupyter_docker_env.models import BuildOptions, BuildResult
from jupyter_docker_env.operations import Operation

CASES = ("cold", "unchanged", "add one package", "no-cache rebuild", "pull instead of build")
BUILDERS = ("legacy", "buildkit")


@contextmanager
def loopback_registry(namespace: str) -> Iterator[str]:
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
        yield f"{host}/{namespace}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(root, ignore_errors=True)


def say(text: str, end: str = "\n") -> None:
    print(text, end=end, file=sys.stderr, flush=True)


def timed(what: str, fn: Callable[[], BuildResult]) -> tuple[float, BuildResult]:
    say(f"  {what} ...", end="")
    os.sync()  # the write-back of earlier steps (removed images, pushed blobs) is not this case's
    t0 = time.perf_counter()
    result = fn()
    elapsed = time.perf_counter() - t0
    say(f" {elapsed:.2f} s")
    return elapsed, result


class BuildCache:
    """The BuildKit build cache records of this run's builds, and their removal."""

    def __init__(self, engine: Engine, marker: str) -> None:
        self.engine = engine
        self.marker = marker  # in the description of every record our cache mounts touched
        self.before = {r["ID"] for r in self.records()}

    def records(self) -> list[dict[str, Any]]:
        return list(self.engine.client.api.df().get("BuildCache") or [])

    def prune(self) -> int:
        """Remove the records of our builds: those that name our cache namespaces, what stands
        on them, and what they stand on that this run created. Returns the bytes freed."""
        records = {r["ID"]: r for r in self.records()}
        parents = {
            i: set(r.get("Parents") or [r.get("Parent")]) & set(records) for i, r in records.items()
        }
        ours = {i for i, r in records.items() if self.marker in (r.get("Description") or "")}
        grown = True
        while grown:
            above = {i for i, p in parents.items() if p & ours}
            below = {p for i in ours for p in parents[i] if p not in self.before}
            grown = not (above | below) <= ours
            ours |= above | below
        # The engine takes one id per filter and keeps a record while another stands on it:
        # prune again while that frees records (an ancestor that others' builds now stand on
        # stays).
        freed = 0
        while ours:
            for record_id in ours:
                answer = self.engine.client.api.prune_builds(filters={"id": [record_id]}, all=True)
                freed += int(answer.get("SpaceReclaimed") or 0)
            left = ours & {r["ID"] for r in self.records()}
            if left == ours:
                break
            ours = left
        return freed


class Bench:
    """One builder's runs over one environment folder."""

    def __init__(
        self, kind: str, base: str, settings: BuildSettings, folder: Path, run: str
    ) -> None:
        self.kind = kind
        self.engine = Engine(builder=kind)
        assert self.engine.builder() == kind, f"this engine cannot build with {kind}"
        self.settings = settings
        self.folder = folder
        self.run = run
        self.builder = ImageBuilder(self.engine, settings)
        self.logs: list[list[str]] = []
        self.base_layers = len(self.engine.inspect_image(base)["RootFS"]["Layers"])  # type: ignore[index]
        self.samples: dict[str, list[float]] = {case: [] for case in CASES}
        self.fetched: dict[str, list[float]] = {case: [] for case in CASES}
        self.edits = 0

    def write(self, salt: str, added: bool = False) -> None:
        """The environment: a new ``salt`` makes it a new one (its own hash and image)."""
        (self.folder / SPEC_FILE).write_text(
            f'apt = ["tini"]\nrequirements = "requirements.txt"\nenv = {{ BENCH = "{salt}" }}\n'
        )
        self.edits += 1
        extra = f"tabulate==0.9.0\n# edit {self.run}-{self.edits}\n" if added else ""
        (self.folder / "requirements.txt").write_text(f"six==1.16.0\n{extra}")

    def build(self, builder: ImageBuilder | None = None, **options: bool) -> BuildResult:
        op = Operation(self.folder.name, "build")
        self.logs.append(op.log)
        return (builder or self.builder).build(self.folder, BuildOptions(**options), op)

    def measure(self, case: str, fn: Callable[[], BuildResult]) -> BuildResult:
        took, result = timed(f"{self.kind}: {case}", fn)
        self.samples[case].append(took)
        self.fetched[case].append(fetched_mb(self.logs[-1]))
        return result

    def round(self, i: int) -> None:
        """One sample of each build case, on a new environment."""
        salt = f"{self.run}-{self.kind}-{i}"
        self.write(salt)
        if self.kind == "buildkit":
            # Empty cache mounts: a namespace of its own, kept for the warm cases after it.
            cache_id = f"{self.settings.cache_id}-{i}"
            self.builder = ImageBuilder(
                self.engine, dataclasses.replace(self.settings, cache_id=cache_id)
            )
        result = self.measure("cold", lambda: self.build(no_cache=True))
        assert result.built, result
        result = self.measure("unchanged", self.build)
        assert (result.built, result.pulled) == (False, False), result
        # A cold build runs every step anew (BuildKit: with a build argument in their cache
        # keys), so first a build that leaves the layers a normal build looks for: unmeasured.
        self.write(salt, added=True)
        say(f"  {self.kind}: (the environment with the package once, to fill the layer cache)")
        self.build()
        self.write(salt, added=True)
        result = self.measure("add one package", self.build)
        assert result.built, result
        ran = [line for line in self.logs[-1] if "Successfully installed" in line]
        assert ran == [line for line in ran if "tabulate" in line], "\n".join(self.logs[-1])
        result = self.measure("no-cache rebuild", lambda: self.build(no_cache=True))
        assert result.built, result

    def push(self) -> None:
        pushed = self.builder.push(self.folder, Operation(self.folder.name, "push"))
        say(f"  {self.kind}: pushed {pushed.image}")

    def pull(self, cache: BuildCache) -> None:
        self.forget()
        cache.prune()  # BuildKit's records hold layers a colleague's engine would not have
        result = self.measure("pull instead of build", self.build)
        assert (result.built, result.pulled) == (False, True), result
        # As on a colleague's engine, only the base image's layers were there already; with
        # BuildKit, the COPY of the CA bundle and the step that points pip at it may also be:
        # they are the same bytes in every environment on this base.
        reused = sum(line.endswith(": Already exists") for line in self.logs[-1])
        shared = 2 if self.kind == "buildkit" else 0
        assert self.base_layers <= reused <= self.base_layers + shared, "\n".join(self.logs[-1])

    def forget(self) -> None:
        """Every local image of this benchmark (registry tags included)."""
        prefix = f"{self.settings.image_prefix}/"
        for image in self.engine.images({L.MANAGED: "true"}):
            tags = image.get("RepoTags") or []
            registry = self.settings.registry.split("/", 1)[0]
            if any(t.startswith((prefix, f"{registry}/")) for t in tags):
                self.engine.remove_image(image["Id"], force=True)


_FETCHED = re.compile(r"^(?:Downloading \S+ \(|Fetched )([\d.]+) ([kMG]?B)\b")
_UNIT = {"B": 1e-6, "kB": 1e-3, "MB": 1.0, "GB": 1e3}


def fetched_mb(log: list[str]) -> float:
    """What a build's pip ("Downloading x.whl (35 kB)") and apt ("Fetched 15.0 MB") fetched."""
    return sum(float(m[1]) * _UNIT[m[2]] for line in log if (m := _FETCHED.match(line)))


def summary(bench: Bench) -> dict[str, dict[str, Any]]:
    cold = statistics.median(bench.samples["cold"])
    return {
        case: {
            "median_s": round(statistics.median(samples), 3),
            "ratio_to_cold": round(statistics.median(samples) / cold, 4),
            "samples_s": [round(x, 3) for x in samples],
            # a pull's layers come from the registry, not from pip or apt
            "fetched_mb": (
                None if case == CASES[-1] else round(statistics.median(bench.fetched[case]), 2)
            ),
        }
        for case, samples in bench.samples.items()
    }


def table(results: dict[str, dict[str, dict[str, Any]]]) -> str:
    width = max(len(c) for c in CASES) + 2
    head = f"{'median s':>10}{'of cold':>9}{'fetched':>10}"
    lines = [f"{'':<{width}}" + "".join(f"{kind:^{len(head) + 3}}" for kind in results)]
    lines.append(f"{'case':<{width}}" + "   ".join(head for _ in results))
    for case in CASES:
        cells = []
        for rows in results.values():
            row = rows[case]
            fetched = "-" if row["fetched_mb"] is None else f"{row['fetched_mb']:.2f} MB"
            cells.append(f"{row['median_s']:>10.2f}{row['ratio_to_cold']:>9.3f}{fetched:>10}")
        lines.append(f"{case:<{width}}" + "   ".join(cells))
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--base", default=os.environ.get("JDE_BASE_IMAGE"), help="base image")
    p.add_argument("-n", type=int, default=3, help="repeats of every case (default 3)")
    p.add_argument("--builders", default=",".join(BUILDERS), help="legacy,buildkit (default)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = p.parse_args()
    if not args.base:
        sys.exit("set JDE_BASE_IMAGE or --base (`bash scripts/docker-up.sh | tail -n 1`)")
    kinds = [b for b in args.builders.split(",") if b]
    if not set(kinds) <= set(BUILDERS):
        sys.exit(f"--builders: {args.builders!r} is not a list of {', '.join(BUILDERS)}")
    ca_bundle = ca_bundle_from_env()
    if not ca_bundle:
        say("warning: no PIP_CERT/REQUESTS_CA_BUNDLE/SSL_CERT_FILE: builds use no CA bundle")

    run = uuid.uuid4().hex[:8]
    prefix = f"jde-bench-{run}"
    engine = Engine()
    if engine.inspect_image(args.base) is None:
        sys.exit(f"the base image {args.base} is not on this engine (`make docker` makes it)")
    cache = BuildCache(engine, f"/var/cache/{prefix}")
    work = Path(tempfile.mkdtemp(prefix="jde-bench-"))
    benches: list[Bench] = []
    try:
        with loopback_registry(prefix) as registry:
            for kind in kinds:
                folder = work / kind / f"bench-{kind}"
                folder.mkdir(parents=True)
                settings = BuildSettings(
                    default_base=args.base,
                    ca_bundle=ca_bundle,
                    image_prefix=prefix,
                    registry=registry,
                    cache_id=f"{prefix}-{kind}",
                )
                benches.append(Bench(kind, args.base, settings, folder, run))
            say(f"environments on {args.base}, registry {registry}")
            # Round by round, both builders in turn: the machine's load drifts over a run.
            for i in range(args.n):
                for bench in benches:
                    bench.round(i)
            for bench in benches:
                bench.push()
            for _ in range(args.n):
                for bench in benches:
                    bench.pull(cache)
    finally:
        for bench in benches:
            bench.forget()
            bench.engine.close()
        freed = cache.prune()
        say(f"removed this run's images and {freed / 1e6:.0f} MB of its BuildKit build cache")
        shutil.rmtree(work, ignore_errors=True)
        engine.close()

    results = {bench.kind: summary(bench) for bench in benches}
    print(f"\nBuild times, medians of {args.n}, on {args.base}")
    print("(fetched: what pip and apt downloaded, from their own log lines)\n")
    print(table(results))
    if args.json:
        print(json.dumps({"n": args.n, "base": args.base, "builders": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
