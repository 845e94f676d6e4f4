"""An :class:`EnvSpec` → a cache-friendly Dockerfile and a whitelist .dockerignore.

Layers go from what changes least to what changes most (system packages, conda, the kernel's
virtual environment, the user's pip packages), so adding one pip package reuses the rest.

Two flavours of the same image: for BuildKit, ``RUN --mount=type=cache`` keeps pip's, apt's and
conda's downloads between builds (adding a package or ``--no-cache`` never downloads again what
was downloaded before); the portable flavour, written into the environment's folder, builds with
any builder, so plain `docker build .` in the folder builds the same environment.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from ..labels import label_instruction
from ..models import EnvSpec
from .spec import CA_FILE, GENERATED_MARK, SPEC_FILE, conda_needed, environment_pip_deps

# Bump whenever the rendered Dockerfile changes for the same spec: it is part of the image hash.
RENDERER_VERSION = "3"
VENV = "/opt/venv"
INPUTS = "/opt/docker-env"
CA_PATH = f"{INPUTS}/{CA_FILE}"
# BuildKit cache mounts: one folder per cache namespace holds pip's, apt's and conda's downloads.
# The namespace is in both the mount ids and the paths, so a build's cache records say whose they
# are (the benchmark prunes its own and nobody else's).
DEFAULT_CACHE_ID = "docker-env"
# BuildKit's --no-cache also empties the cache mounts; a new value of this build argument makes
# every RUN step run again and keeps them.
REBUILD_ARG = "DOCKER_ENV_REBUILD"
_CACHE_ID = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")

DOCKERIGNORE_HEADER = f"""{GENERATED_MARK}: the build context is only what the Dockerfile
# copies, so data, .git, checkpoints and model files never reach the image.
*
!.dockerignore
!{CA_FILE}
"""


def input_files(spec: EnvSpec) -> list[str]:
    """The files of the environment folder that the build copies in (besides the CA bundle)."""
    return [f for f in (spec.requirements, spec.environment) if f]


def dockerignore(spec: EnvSpec) -> str:
    extra = [SPEC_FILE] if spec.kind == "spec" else []
    return DOCKERIGNORE_HEADER + "".join(f"!{f}\n" for f in [*extra, *input_files(spec)])


def _quoted(items: tuple[str, ...] | list[str]) -> str:
    return " ".join(shlex.quote(i) for i in items)


class _Renderer:
    """RUN lines for one flavour: with ``cache_id``, BuildKit cache mounts of that namespace keep
    the downloads between builds; without, the portable flavour keeps none in the image."""

    def __init__(self, cache_id: str | None) -> None:
        if cache_id is not None and not _CACHE_ID.match(cache_id):
            raise ValueError(f"cache namespace {cache_id!r}: lowercase letters, digits, . _ -")
        self.cache_id = cache_id
        self.cache = f"/var/cache/{cache_id}"

    def mount(self, kind: str, target: str | None = None) -> str:
        return (
            f"--mount=type=cache,id={self.cache_id}-{kind},"
            f"target={target or f'{self.cache}/{kind}'},sharing=locked"
        )

    def run(self, *commands: str, mounts: str = "") -> str:
        prefix = f"RUN {mounts} " if self.cache_id and mounts else "RUN "
        return prefix + " \\\n && ".join(commands) + "\n"

    def pip(self, args: str) -> str:
        if not self.cache_id:
            return self.run(f"pip install --no-cache-dir {args}")
        # pip's HTTP cache misses when a proxy strips the index's caching headers: download
        # into a folder of the cache (pip skips files already there), then install from it.
        downloads = f"{self.cache}/pip/downloads"
        return self.run(
            f"export PIP_CACHE_DIR={self.cache}/pip",
            f"pip download --dest {downloads} {args}",
            f"pip install --no-index --find-links {downloads} {args}",
            mounts=self.mount("pip"),
        )

    def apt(self, packages: tuple[str, ...]) -> str:
        install = "apt-get install -y --no-install-recommends"
        if not self.cache_id:
            return self.run(
                "apt-get update", f"{install} {_quoted(packages)}", "rm -rf /var/lib/apt/lists/*"
            )
        # Downloads go to the cache, out of /var/cache/apt that Docker's official images clean
        # after every install; the package lists stay in their usual place, also cached.
        return self.run(
            f"mkdir -p {self.cache}/apt/partial",
            "apt-get update",
            f"{install} -o Dir::Cache::Archives={self.cache}/apt {_quoted(packages)}",
            mounts=f"{self.mount('apt')} {self.mount('apt-lists', '/var/lib/apt/lists')}",
        )

    def conda(self, command: str) -> str:
        if self.cache_id:
            return self.run(
                f"CONDA_PKGS_DIRS={self.cache}/conda {command}", mounts=self.mount("conda")
            )
        return self.run(command, "conda clean -afy")


# The environments' pip cache where plain `pip install` looks (serving images build that way).
PIP_CACHE = _Renderer(DEFAULT_CACHE_ID).mount("pip", "/root/.cache/pip")


def render(
    spec: EnvSpec,
    folder: Path,
    *,
    cache_id: str | None = None,
    labels: dict[str, str] | None = None,
    locked: bool = False,
) -> str:
    """The Dockerfile for a spec-kind environment (Dockerfile-kind folders are used as is).

    ``cache_id``: the BuildKit flavour, with cache mounts of that namespace; None: the portable
    one. ``labels`` become one LABEL instruction (the legacy builder makes a step of each
    ``--label``). ``locked``: ``spec.pip`` is a whole lock (``--from-lock``), installed in one
    step, so that nothing but its exact versions ends up in the venv.
    """
    r = _Renderer(cache_id)
    source = SPEC_FILE if spec.kind == "spec" else (spec.requirements or spec.environment)
    base, apt = spec.base, spec.apt
    out = [
        f"{GENERATED_MARK} from {source}: edit that file, not this one.\n",
        "# Plain `docker build .` builds it too. Behind a TLS-inspecting proxy, first copy\n",
        f"# your CA bundle here as {CA_FILE}; it is never part of the environment's hash.\n",
        f"FROM {base}\n",
        "USER root\n",
        "ENV DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1\n",
        # The index comes from the builder's configuration, never from the spec.
        "ARG PIP_INDEX_URL\n",
        *([f"ARG {REBUILD_ARG}\n"] if cache_id else []),
        # .dockerignore always exists, so the copy succeeds with or without a CA bundle.
        f"COPY .dockerignore {CA_FILE[:-1]}[{CA_FILE[-1]}] {INPUTS}/\n",
        r.run(
            f"if [ -f {CA_PATH} ]; then printf '[global]\\ncert = {CA_PATH}\\n' > /etc/pip.conf; fi"
        ),
    ]
    if apt:
        out.append(r.apt(apt))
    if conda_needed(spec, folder):
        out.append(
            r.run(
                "command -v conda >/dev/null || { echo 'docker-env: this environment needs conda "
                f"(conda packages or an environment.yml) but the base image {spec.base} has none; "
                "pick a conda base such as continuumio/miniconda3' >&2; exit 1; }",
                f"if [ -f {CA_PATH} ]; then conda config --system --set ssl_verify {CA_PATH}; fi",
            )
        )
        if spec.conda:
            out.append(r.conda(f"conda install -y -n base {_quoted(spec.conda)}"))
        if spec.environment:
            out.append(f"COPY {spec.environment} {INPUTS}/\n")
            out.append(r.conda(f"conda env update -n base -f {INPUTS}/{spec.environment}"))
    # The kernel's own environment: a venv (Debian's python refuses system-wide pip, PEP 668)
    # that still sees the system's and conda's packages. ipykernel first, cached with the system.
    out.append(
        r.run(
            "command -v python3 >/dev/null || { echo 'docker-env: the base image "
            f"{spec.base} has no python3; pick a Python base such as python:3.12-slim' >&2; "
            "exit 1; }",
            f"python3 -m venv --system-site-packages {VENV}",
        )
    )
    out.append(f"ENV VIRTUAL_ENV={VENV} PATH={VENV}/bin:$PATH\n")
    # A lock is installed whole in one step, so nothing but its exact versions is in the venv.
    out += [r.pip(_quoted(spec.pip))] if locked else _pip_steps(r, spec, folder)
    if spec.env:
        out.append("ENV " + " ".join(f"{k}={shlex.quote(v)}" for k, v in spec.env.items()) + "\n")
    if labels:
        out.append(label_instruction(labels))
    return "".join(out)


def _pip_steps(r: _Renderer, spec: EnvSpec, folder: Path) -> list[str]:
    """ipykernel first (cached with the system), then the environment's own packages."""
    out = [r.pip("ipykernel")]
    if spec.environment and not conda_needed(spec, folder):
        # An environment.yml with only python/pip dependencies needs no conda.
        pip_deps = environment_pip_deps(folder, spec.environment)
        if pip_deps:
            out.append(r.pip(_quoted(pip_deps)))
    if spec.requirements:
        out.append(f"COPY {spec.requirements} {INPUTS}/\n")
        out.append(r.pip(f"-r {INPUTS}/{spec.requirements}"))
    if spec.pip:
        out.append(r.pip(_quoted(spec.pip)))
    return out


# Run with the image's python: every distribution the kernel can import, and where it lives.
LOCK_PY = """
import importlib.metadata as md, json, os, sys
seen = {}
for dist in md.distributions():
    name = dist.metadata["Name"]
    key = (name or "").lower().replace("_", "-").replace(".", "-")
    if not name or key in seen:
        continue  # the first on sys.path is the one that imports
    where = str(getattr(dist, "_path", "") or "")
    seen[key] = {"name": name, "version": dist.version,
                 "venv": sys.prefix != sys.base_prefix and where.startswith(sys.prefix + os.sep)}
print(json.dumps(sorted(seen.values(), key=lambda d: d["name"].lower())))
"""

# Run in a container of an image: its Python distributions, conda's export and apt versions.
LOCK_SCRIPT = f"""
PY={VENV}/bin/python
[ -x "$PY" ] || PY=$(command -v python3 || command -v python || true)
if [ -n "$PY" ]; then "$PY" -c '{LOCK_PY}'; else echo '[]'; fi
echo '--- conda'
if command -v conda >/dev/null; then conda list --export 2>/dev/null | grep -v '^#'; fi
echo '--- apt'
if [ "$#" -gt 0 ]; then dpkg-query -W -f='${{Package}}=${{Version}}\\n' "$@"; fi
true
"""
