"""An :class:`EnvSpec` → a cache-friendly Dockerfile and a whitelist .dockerignore.

Layers go from what changes least to what changes most (system packages, conda, the kernel's
virtual environment, the user's pip packages), so adding one pip package reuses the rest.

Two flavours of the same image: for BuildKit, ``RUN --mount=type=cache`` keeps pip's, apt's and
conda's downloads between builds (adding a package or ``--no-cache`` never downloads again what
was downloaded before); the portable flavour, written into the environment's folder, builds with
any builder, so plain `docker build .` in the folder builds the same environment.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from ..labels import label_instruction
from ..models import EnvSpec
from .spec import CA_FILE, GENERATED_MARK, SPEC_FILE, conda_needed, environment_pip_deps

# Bump whenever the rendered Dockerfile changes for the same spec: it is part of the image hash.
RENDERER_VERSION = "2"
VENV = "/opt/venv"
INPUTS = "/opt/docker-env"
CA_PATH = f"{INPUTS}/{CA_FILE}"
CACHE = "/var/cache/docker-env"


def _cache(name: str, target: str, scope: str) -> str:
    """A BuildKit cache mount. Builds of one ``scope`` share it, and only they: a build runs
    code as root with the mount writable, so the broker gives each hub user their own scope."""
    scoped = f"docker-env-{name}" + (f"-{scope}" if scope else "")
    return f"--mount=type=cache,id={scoped},target={target},sharing=locked"


PIP_CACHE = _cache("pip", "/root/.cache/pip", "")  # the single-user server's own builds


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
    def __init__(self, cache_mounts: bool, cache_scope: str = "") -> None:
        self.cache_mounts = cache_mounts
        self.pip_cache = _cache("pip", "/root/.cache/pip", cache_scope)
        # apt keeps its downloads out of /var/cache/apt, which Docker's official images clean
        # after every install, and its package lists in their usual place.
        self.apt_cache = (
            f"{_cache('apt', f'{CACHE}/apt', cache_scope)} "
            f"{_cache('apt-lists', '/var/lib/apt/lists', cache_scope)}"
        )
        self.conda_cache = _cache("conda", f"{CACHE}/conda", cache_scope)

    def run(self, *commands: str, mounts: str = "") -> str:
        prefix = f"RUN {mounts} " if self.cache_mounts and mounts else "RUN "
        return prefix + " \\\n && ".join(commands) + "\n"

    def pip(self, args: str) -> str:
        if self.cache_mounts:
            return self.run(f"pip install {args}", mounts=self.pip_cache)
        return self.run(f"pip install --no-cache-dir {args}")

    def apt(self, packages: tuple[str, ...]) -> str:
        install = "apt-get install -y --no-install-recommends"
        if not self.cache_mounts:
            return self.run(
                "apt-get update", f"{install} {_quoted(packages)}", "rm -rf /var/lib/apt/lists/*"
            )
        return self.run(
            f"mkdir -p {CACHE}/apt/partial",
            "apt-get update",
            f"{install} -o Dir::Cache::Archives={CACHE}/apt {_quoted(packages)}",
            mounts=self.apt_cache,
        )

    def conda(self, command: str) -> str:
        if self.cache_mounts:
            return self.run(f"CONDA_PKGS_DIRS={CACHE}/conda {command}", mounts=self.conda_cache)
        return self.run(command, "conda clean -afy")


def render(
    spec: EnvSpec,
    folder: Path,
    *,
    cache_mounts: bool = False,
    cache_scope: str = "",
    labels: dict[str, str] | None = None,
) -> str:
    """The Dockerfile for a spec-kind environment (Dockerfile-kind folders are used as is).

    ``labels`` become one LABEL instruction (the legacy builder makes a step of each ``--label``).
    """
    r = _Renderer(cache_mounts, cache_scope)
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
    out.append(r.pip("ipykernel"))
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
    if spec.env:
        out.append("ENV " + " ".join(f"{k}={shlex.quote(v)}" for k, v in spec.env.items()) + "\n")
    if labels:
        out.append(label_instruction(labels))
    return "".join(out)


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
                 "venv": sys.prefix != sys.base_prefix and where.startswith(sys.prefix)}
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
