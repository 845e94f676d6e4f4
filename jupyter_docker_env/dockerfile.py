"""Step 2: an :class:`EnvSpec` → a cache-friendly Dockerfile and a whitelist .dockerignore.

Layers go from what changes least to what changes most (system packages, conda, the kernel's
virtual environment, the user's pip packages), so adding one pip package reuses the rest.
The folder stays a plain Docker build context: `docker build .` in it builds the same image.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from .spec import CA_FILE, GENERATED_MARK, SPEC_FILE, EnvSpec, conda_needed, environment_pip_deps

# Bump whenever the rendered Dockerfile changes for the same spec: it is part of the image hash.
RENDERER_VERSION = "1"
VENV = "/opt/venv"
INPUTS = "/opt/docker-env"
CA_PATH = f"{INPUTS}/{CA_FILE}"

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


def _run(*commands: str) -> str:
    return "RUN " + " \\\n && ".join(commands) + "\n"


def _quoted(items: tuple[str, ...] | list[str]) -> str:
    return " ".join(shlex.quote(i) for i in items)


def render(spec: EnvSpec, folder: Path) -> str:
    """The Dockerfile for a spec-kind environment (Dockerfile-kind folders are used as is)."""
    source = SPEC_FILE if spec.kind == "spec" else (spec.requirements or spec.environment)
    out = [
        f"{GENERATED_MARK} from {source}: edit that file, not this one.\n",
        "# Plain `docker build .` builds it too. Behind a TLS-inspecting proxy, first copy\n",
        f"# your CA bundle here as {CA_FILE}; it is never part of the environment's hash.\n",
        f"FROM {spec.base}\n",
        "USER root\n",
        "ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \\\n"
        "    PYTHONUNBUFFERED=1\n",
        # The index comes from the builder's configuration, never from the spec.
        "ARG PIP_INDEX_URL\n",
        # .dockerignore always exists, so the copy succeeds with or without a CA bundle.
        f"COPY .dockerignore {CA_FILE[:-1]}[{CA_FILE[-1]}] {INPUTS}/\n",
        _run(
            f"if [ -f {CA_PATH} ]; then printf '[global]\\ncert = {CA_PATH}\\n' > /etc/pip.conf; fi"
        ),
    ]
    if spec.apt:
        out.append(
            _run(
                "apt-get update",
                f"apt-get install -y --no-install-recommends {_quoted(spec.apt)}",
                "rm -rf /var/lib/apt/lists/*",
            )
        )
    if conda_needed(spec, folder):
        out.append(
            _run(
                "command -v conda >/dev/null || { echo 'docker-env: this environment needs conda "
                f"(conda packages or an environment.yml) but the base image {spec.base} has none; "
                "pick a conda base such as continuumio/miniconda3' >&2; exit 1; }",
                f"if [ -f {CA_PATH} ]; then conda config --system --set ssl_verify {CA_PATH}; fi",
            )
        )
        if spec.conda:
            out.append(_run(f"conda install -y -n base {_quoted(spec.conda)}", "conda clean -afy"))
        if spec.environment:
            out.append(f"COPY {spec.environment} {INPUTS}/\n")
            out.append(
                _run(f"conda env update -n base -f {INPUTS}/{spec.environment}", "conda clean -afy")
            )
    # The kernel's own environment: a venv (Debian's python refuses system-wide pip, PEP 668)
    # that still sees conda's packages. ipykernel comes first so it is cached with the system.
    out.append(
        _run(
            "command -v python3 >/dev/null || { echo 'docker-env: the base image "
            f"{spec.base} has no python3; pick a Python base such as python:3.12-slim' >&2; "
            "exit 1; }",
            f"python3 -m venv --system-site-packages {VENV}",
            f"{VENV}/bin/pip install ipykernel",
        )
    )
    out.append(f"ENV VIRTUAL_ENV={VENV} PATH={VENV}/bin:$PATH\n")
    if spec.environment and not conda_needed(spec, folder):
        # An environment.yml with only python/pip dependencies needs no conda.
        pip_deps = environment_pip_deps(folder / spec.environment)
        if pip_deps:
            out.append(_run(f"pip install {_quoted(pip_deps)}"))
    if spec.requirements:
        out.append(f"COPY {spec.requirements} {INPUTS}/\n")
        out.append(_run(f"pip install -r {INPUTS}/{spec.requirements}"))
    if spec.pip:
        out.append(_run(f"pip install {_quoted(spec.pip)}"))
    if spec.env:
        out.append(
            "ENV " + " \\\n    ".join(f"{k}={shlex.quote(v)}" for k, v in spec.env.items()) + "\n"
        )
    return "".join(out)


# Run in a container of the built image: the exact versions inside it, one section each.
LOCK_SCRIPT = f"""
if [ -x {VENV}/bin/pip ]; then {VENV}/bin/pip list --format=freeze --local 2>/dev/null
else python3 -m pip list --format=freeze 2>/dev/null || python -m pip list --format=freeze; fi
echo '--- conda'
if command -v conda >/dev/null; then conda list --export 2>/dev/null | grep -v '^#'; fi
echo '--- apt'
if [ "$#" -gt 0 ]; then dpkg-query -W -f='${{Package}}=${{Version}}\\n' "$@"; fi
true
"""
