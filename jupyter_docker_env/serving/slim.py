"""What a serving image keeps of its environment: the runtime, without what only the notebook
kernel (and building packages) needs.

Computed from the distributions' own metadata, read from the environment's image
(:mod:`.probe`): the runtime's roots are what the user asked for (the spec's pip packages, the
requirements file, environment.yml's pip section) and every venv distribution nothing else
requires, less the kernel's and the build tools' own roots. The runtime is everything those roots
require, transitively (``Requires-Dist`` evaluated with the image's environment markers and the
extras asked for). Every other venv distribution goes: ipykernel, IPython, jedi, debugpy, pip,
setuptools and whatever only they required. A kernel-only root that a runtime package does
require (say setuptools for ``pkg_resources``) stays, and the plan says who needs it.

Debian packages the spec installed stay, except compilers, build tools and headers (sections
``devel``/``libdevel``, ``-dev`` packages); the shared libraries a dropped ``-dev`` package
brought (its ``libs`` dependencies) stay in its place.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from packaging.markers import InvalidMarker, UndefinedComparison, UndefinedEnvironmentName
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

#: What the notebook kernel and the Jupyter front ends bring: never a runtime root.
KERNEL_ROOTS = frozenset(
    {
        "ipykernel",
        "ipython",
        "jedi",
        "debugpy",
        "ipywidgets",
        "ipyparallel",
        "jupyter",
        "jupyterlab",
        "notebook",
        "nbclassic",
        "jupyter-server",
        "jupyter-console",
        "qtconsole",
        "voila",
    }
)
#: Installers and build back ends: needed to install or compile packages, not to run them.
BUILD_ROOTS = frozenset(
    {
        "pip",
        "setuptools",
        "wheel",
        "build",
        "pip-tools",
        "cython",
        "meson",
        "meson-python",
        "ninja",
        "cmake",
        "scikit-build",
        "scikit-build-core",
        "setuptools-scm",
        "pybind11",
        "hatchling",
        "flit-core",
        "poetry-core",
        "pdm-backend",
        "maturin",
        "versioneer",
    }
)
NOT_RUNTIME_ROOTS = KERNEL_ROOTS | BUILD_ROOTS
BUILD_SECTIONS = frozenset({"devel", "libdevel"})


@dataclass(frozen=True)
class Dist:
    name: str
    version: str
    venv: bool
    requires: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return canonicalize_name(self.name)

    @property
    def pinned(self) -> str:
        return f"{self.name}=={self.version}"


@dataclass(frozen=True)
class DebPackage:
    name: str
    version: str
    section: str
    depends: tuple[str, ...]  # the first alternative of each dependency, by name

    @property
    def build_only(self) -> bool:
        return self.section.rsplit("/", 1)[-1] in BUILD_SECTIONS or self.name.endswith("-dev")


@dataclass(frozen=True)
class Inventory:
    """What :mod:`.probe` found in an environment's image."""

    python: str
    markers: dict[str, str]
    dists: dict[str, Dist]  # by canonical name
    apt: dict[str, DebPackage] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Inventory:
        dists = [
            Dist(
                name=str(d["name"]),
                version=str(d["version"]),
                venv=bool(d.get("venv")),
                requires=tuple(str(r) for r in d.get("requires") or ()),
            )
            for d in data.get("distributions") or ()
        ]
        apt = [
            DebPackage(
                name=str(p["name"]),
                version=str(p["version"]),
                section=str(p.get("section") or ""),
                depends=tuple(_first_alternatives(str(p.get("depends") or ""))),
            )
            for p in data.get("apt") or ()
        ]
        return cls(
            python=str(data.get("python") or ""),
            markers={str(k): str(v) for k, v in (data.get("markers") or {}).items()},
            dists={d.key: d for d in dists},
            apt={p.name: p for p in apt},
        )


@dataclass(frozen=True)
class Slim:
    """The serving image's share of an environment."""

    keep: tuple[str, ...]  # venv distributions kept, name==version
    remove: tuple[str, ...]  # venv distributions left out, name==version
    needed_by: dict[str, str]  # a kept kernel-only or build root → the runtime package needing it
    system_site_packages: bool  # the runtime needs a distribution from outside the venv
    apt: tuple[str, ...] = ()  # Debian packages to install, name=version

    @property
    def remove_names(self) -> tuple[str, ...]:
        return tuple(entry.split("==", 1)[0] for entry in self.remove)


def plan(
    inventory: Inventory,
    requested: Iterable[str],
    apt_requested: Iterable[str] = (),
    server: Iterable[str] = (),
) -> Slim:
    """Split the environment into what serving keeps and what it leaves out.

    ``requested``: the user's requirement lines (unparseable ones are skipped: every venv
    distribution nothing requires is a root anyway); ``apt_requested``: the spec's Debian package
    names; ``server``: distributions the serving image adds itself (the HTTP server).
    """
    env = inventory.markers
    roots: dict[str, frozenset[str]] = {}
    for line in requested:
        req = _requirement(line)
        if req is not None and canonicalize_name(req.name) not in NOT_RUNTIME_ROOTS:
            root = canonicalize_name(req.name)
            roots[root] = roots.get(root, frozenset()) | frozenset(req.extras)
    required = {
        name
        for dist in inventory.dists.values()
        if dist.venv
        for name, _ in _requires(dist, frozenset(), env, with_extras=False)
    }
    for dist in inventory.dists.values():
        if dist.venv and dist.key not in required and dist.key not in NOT_RUNTIME_ROOTS:
            roots.setdefault(dist.key, frozenset())
    for name in server:
        roots.setdefault(canonicalize_name(name), frozenset())

    keep: dict[str, frozenset[str]] = {}
    needed_by: dict[str, str] = {}
    queue: deque[tuple[str, frozenset[str], str | None]] = deque(
        (name, extras, None) for name, extras in roots.items()
    )
    while queue:
        key, extras, parent = queue.popleft()
        found = inventory.dists.get(key)
        if found is None:
            continue  # asked for but not installed (or the server, added later)
        if key in keep and extras <= keep[key]:
            continue
        keep[key] = keep.get(key, frozenset()) | extras
        if key in NOT_RUNTIME_ROOTS and parent is not None:
            needed_by.setdefault(key, parent)
        for name, sub_extras in _requires(found, keep[key], env, with_extras=True):
            queue.append((name, sub_extras, found.name))

    venv = sorted((d for d in inventory.dists.values() if d.venv), key=lambda d: d.key)
    return Slim(
        keep=tuple(d.pinned for d in venv if d.key in keep),
        remove=tuple(d.pinned for d in venv if d.key not in keep),
        needed_by={inventory.dists[k].name: v for k, v in sorted(needed_by.items())},
        system_site_packages=any(not inventory.dists[k].venv for k in keep),
        apt=tuple(_runtime_apt(inventory, apt_requested)),
    )


def requirement_lines(text: str) -> list[str]:
    """The requirement lines of a requirements file (options, comments and blanks left out)."""
    lines = []
    for raw in text.splitlines():
        line = re.sub(r"(^|\s)#.*$", "", raw).strip()
        if line and not line.startswith("-"):
            lines.append(line)
    return lines


def _requirement(line: str) -> Requirement | None:
    try:
        return Requirement(line)
    except InvalidRequirement:
        return None


def _requires(
    dist: Dist, extras: frozenset[str], env: dict[str, str], with_extras: bool
) -> Iterator[tuple[str, frozenset[str]]]:
    """The distributions ``dist`` requires with these extras in this environment.

    ``with_extras=False`` counts only what it always requires (whatever extras it was installed
    with): what decides that a distribution is no root.
    """
    contexts = [{**env, "extra": extra} for extra in ("", *sorted(extras))]
    for raw in dist.requires:
        req = _requirement(raw)
        if req is None:
            continue
        if req.marker is not None:
            try:
                if with_extras:
                    applies = any(req.marker.evaluate(c) for c in contexts)
                else:
                    applies = req.marker.evaluate(contexts[0])
            except (InvalidMarker, UndefinedComparison, UndefinedEnvironmentName):
                applies = True  # unsure: keep rather than break the runtime
            if not applies:
                continue
        yield canonicalize_name(req.name), frozenset(req.extras)


def _runtime_apt(inventory: Inventory, requested: Iterable[str]) -> Iterator[str]:
    chosen: dict[str, DebPackage] = {}
    for name in requested:
        pkg = inventory.apt.get(name)
        if pkg is None:
            continue
        if not pkg.build_only:
            chosen[pkg.name] = pkg
            continue
        for dep in pkg.depends:  # a -dev package's shared libraries are the runtime's
            lib = inventory.apt.get(dep)
            if lib is not None and not lib.build_only and lib.section.endswith("libs"):
                chosen[lib.name] = lib
    for pkg in chosen.values():
        yield f"{pkg.name}={pkg.version}"


def _first_alternatives(depends: str) -> Iterator[str]:
    """``libc6 (>= 2.34), libfoo1 | libbar1`` → libc6, libfoo1 (names without architecture)."""
    for part in depends.split(","):
        first = part.split("|", 1)[0].strip()
        if first:
            yield first.split(" ", 1)[0].split(":", 1)[0]
