"""The lock: what is exactly inside an environment's image, read from the image itself.

Captured after every build by running the image (and its base), kept as an image label so it
travels through registries, and written as ``docker-env.lock`` into the folder so it can be
committed. ``--from-lock`` rebuilds exactly it: the base by digest, pip and apt by version.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import tomli_w

from ..engine import Engine, EngineError
from ..models import BaseImage, EnvSpec, Lock
from . import files
from .dockerfile import LOCK_SCRIPT
from .spec import LOCK_FILE, SpecError

HEADER = (
    "# Exact versions inside image {short} of {name}, written by jupyter-docker-env.\n"
    "# pip: installed into the kernel's venv; pip_system: importable, added by apt or conda;\n"
    "# pip_base: importable, from the base image. Build with `--from-lock` to get exactly these.\n"
)


def apt_name(package: str) -> str:
    """``name`` of ``name``, ``name=version`` or ``name:arch``."""
    return re.split(r"[=:]", package, maxsplit=1)[0]


def base_of(engine: Engine, ref: str) -> BaseImage:
    """The base image ``ref`` as the engine has it: its id and, when known, its repo digest."""
    data = engine.inspect_image(ref) or {}
    digests = [str(d) for d in data.get("RepoDigests") or []]
    repo = ref.split("@", 1)[0]
    repo = repo.rpartition(":")[0] if ":" in repo.rpartition("/")[2] else repo
    same_repo = [d for d in digests if d.split("@", 1)[0] == repo]
    return BaseImage(
        image=ref, id=str(data.get("Id", "")), digest=(same_repo or digests or [""])[0]
    )


def capture(engine: Engine, image_id: str, spec: EnvSpec, base: BaseImage | None) -> Lock:
    """Run the image (and its base, to tell what came from it) and record what is inside."""
    dists, conda, apt = _inventory(engine, image_id, [apt_name(a) for a in spec.apt])
    in_base: set[str] = set()
    if base is not None and base.id:
        try:
            base_dists, _, _ = _inventory(engine, base.id, [])
        except EngineError:  # a base without a shell or Python: nothing of it is importable
            base_dists = []
        in_base = {f"{d['name']}=={d['version']}" for d in base_dists}
    pip, pip_system, pip_base = [], [], []
    for dist in dists:
        entry = f"{dist['name']}=={dist['version']}"
        if dist.get("venv"):
            pip.append(entry)
        elif entry in in_base:
            pip_base.append(entry)
        else:
            pip_system.append(entry)
    return Lock(
        pip=tuple(pip),
        pip_system=tuple(pip_system),
        pip_base=tuple(pip_base),
        conda=tuple(conda),
        apt=tuple(apt),
        base=base,
    )


def _inventory(
    engine: Engine, image: str, apt: list[str]
) -> tuple[list[dict[str, Any]], list[str], list[str]]:
    out = engine.run_output(image, ["sh", "-c", LOCK_SCRIPT, "lock", *apt])
    python, _, rest = out.partition("--- conda")
    conda, _, apt_out = rest.partition("--- apt")
    try:
        dists = json.loads(python.strip() or "[]")
    except ValueError as exc:
        raise EngineError(f"reading the Python distributions of {image} failed: {out!r}") from exc
    return (
        dists,
        [line.strip() for line in conda.splitlines() if line.strip()],
        # dpkg-query also names packages that were removed but not purged: no version
        [p for line in apt_out.splitlines() if (p := line.strip()) and not p.endswith("=")],
    )


def read(folder: Path) -> tuple[Lock, str] | None:
    """The folder's lock file and the spec hash it was written for, or None."""
    if not files.present(folder, LOCK_FILE):
        return None
    try:
        data = tomllib.loads(files.read_text(folder, LOCK_FILE))
        return Lock.from_json(data), str(data.get("spec_hash", ""))
    except (tomllib.TOMLDecodeError, RecursionError, TypeError, ValueError) as exc:
        raise SpecError(LOCK_FILE, f"is not a valid lock file: {exc}") from exc


def write(folder: Path, lock: Lock, spec_hash: str, name: str) -> None:
    body: dict[str, Any] = {"spec_hash": spec_hash}
    body.update({k: list(getattr(lock, k)) for k in Lock.SECTIONS})
    if lock.base is not None:
        body["base"] = {"image": lock.base.image, "id": lock.base.id, "digest": lock.base.digest}
    text = HEADER.format(short=spec_hash[:16], name=name) + tomli_w.dumps(body)
    files.write_text(folder, LOCK_FILE, text)


def from_label(raw: str | None) -> Lock | None:
    if not raw:
        return None
    try:
        return Lock.from_json(json.loads(raw))
    except (ValueError, TypeError):
        return None


def to_label(lock: Lock) -> str:
    return json.dumps(lock.to_json(), separators=(",", ":"))


def pin(spec: EnvSpec, lock: Lock) -> EnvSpec:
    """The spec that rebuilds exactly ``lock``: its base by digest, pip and apt by version.

    Build it with ``dockerfile.render(..., locked=True)``: the lock's pip list is whole.
    """
    if not lock.pip:
        raise SpecError(LOCK_FILE, "there is no lock yet: build once without from_lock")
    versions = dict(entry.split("=", 1) for entry in lock.apt if "=" in entry)
    apt = tuple(
        # name[:arch]=version
        f"{a.split('=', 1)[0]}={versions[name]}" if (name := apt_name(a)) in versions else a
        for a in spec.apt
    )
    base = lock.base.pinned if lock.base and spec.base else spec.base
    return spec.pinned(pip=lock.pip, apt=apt, base=base)


def check_base(lock: Lock, base_id: str) -> None:
    """SpecError unless ``base_id`` is the base image that ``lock`` was built on."""
    if lock.base is None or not lock.base.id or lock.base.id == base_id:
        return
    if lock.base.digest:
        why = f"{lock.base.digest} is image {base_id[:19]} on this engine"
    else:
        why = (
            f"{lock.base.image} now names image {base_id[:19]}, and the lock has no digest to "
            "find the old one by (the base never came from a registry)"
        )
    raise SpecError(
        "base",
        f"the lock was built on base image {lock.base.id[:19]}, but {why}. Build without "
        "from_lock to lock the new base, or tag the old image as the base again",
    )
