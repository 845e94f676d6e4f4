"""Helpers of the build, lock and registry tests: environment folders, builds, what is inside."""

from __future__ import annotations

import re
from pathlib import Path

from jupyter_docker_env.engine import Engine
from jupyter_docker_env.environments.images import BuildSettings, ImageBuilder
from jupyter_docker_env.environments.spec import SPEC_FILE
from jupyter_docker_env.models import BuildOptions, BuildResult
from jupyter_docker_env.operations import Operation

from .conftest import CA_BUNDLE, JDE_PREFIX

# The tests' own BuildKit cache namespace: their downloads neither come from nor go to those of
# real environments on this engine.
TEST_CACHE_ID = re.sub(r"[^a-z0-9_.-]", "-", JDE_PREFIX.lower())


def make_builder(
    engine: Engine, base: str, registry: str = "", auth: dict[str, str] | None = None
) -> ImageBuilder:
    assert CA_BUNDLE, "the host's CA bundle (PIP_CERT) is needed for builds to reach PyPI here"
    settings = BuildSettings(
        default_base=base,
        ca_bundle=CA_BUNDLE,
        image_prefix=JDE_PREFIX,
        registry=registry,
        registry_auth=auth,
        cache_id=TEST_CACHE_ID,
    )
    return ImageBuilder(engine, settings)


def make_env(root: Path, name: str, toml: str) -> Path:
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / SPEC_FILE).write_text(toml)
    return folder


def build(builder: ImageBuilder, folder: Path, **options: bool) -> tuple[BuildResult, Operation]:
    op = Operation(env=folder.name, kind="build")
    return builder.build(folder, BuildOptions(**options), op), op


def venv_freeze(engine: Engine, image: str) -> list[str]:
    """What pip itself says is installed in the kernel's venv (not what the lock says)."""
    out = engine.run_output(image, ["/opt/venv/bin/pip", "list", "--format=freeze", "--local"])
    return sorted(out.split())


def step_lines(op: Operation, instruction: str) -> list[str]:
    """The log lines of the first step whose instruction contains ``instruction`` (under each
    of its headers: BuildKit's steps interleave, and the log repeats a header when they do)."""
    headers = [line for line in op.log if line.startswith("Step ") and instruction in line]
    assert headers, f"no step with {instruction!r}:\n" + "\n".join(op.log)
    lines: list[str] = []
    inside = False
    for line in op.log:
        if line.startswith("Step "):
            inside = line == headers[0]
        elif inside:
            lines.append(line)
    return lines
