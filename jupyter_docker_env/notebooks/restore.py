"""Recreating a notebook's environment from its record: checked like any spec, written as an
environment folder, then pulled by digest or built with the recorded exact versions.

Trust: a record is input from whoever sent the notebook. :func:`preview` only writes into a
temporary folder and runs nothing; :func:`materialize` writes the environment folder once the user
confirmed; both apply the same validation (``spec.load``) and base allow-list
(``c.DockerEnvApp.allowed_bases``) as any spec, and more for what only a record holds: the lock's
entries must be exact ``name==version`` pins, its base digest must be of the spec's own base, and
images are pulled from the configured registry only.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import re
import tempfile
import tomllib
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import tomli_w

from ..environments import files, lock
from ..environments.images import BuildSettings, ImageBuilder
from ..environments.spec import (
    APT_RE,
    IMAGE_RE,
    SPEC_FILE,
    SpecError,
    check_base_allowed,
    load,
    repository_of,
)
from ..kernels.kernelspecs import kernel_name
from ..models import BuildOptions, BuildResult, EnvSpec, FieldError, Lock, RestorePlan
from ..operations import Operation
from .record import KIND_FILES, METADATA_KEY, NotebookEnv, RecordError, kind_of

LOCK_PIP_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*==[A-Za-z0-9.!+_-]+$")
FROM_RE = re.compile(
    r"^\s*FROM\s+(?:--\S+\s+)*(\S+)(?:\s+AS\s+(\S+))?", re.IGNORECASE | re.MULTILINE
)
FIELD = f"metadata.{METADATA_KEY}"


@dataclass(frozen=True)
class Checked:
    """A record that passed every check: its spec as this workspace reads it, and its lock with a
    base digest only when that digest is of the spec's own base image."""

    spec: EnvSpec
    lock: Lock | None


def check(record: NotebookEnv, folder: Path, settings: BuildSettings) -> Checked:
    """Write the record's files into the new, empty ``folder`` and check them as any spec.

    Raises a FieldError (SpecError, RecordError) that names what is refused and why.
    """
    if record.files is None:
        raise RecordError(
            f"{FIELD}.files",
            "the notebook does not carry its environment's files (they were too large or not "
            "text): ask its author for the environment folder",
        )
    base = record.lock.base.image if record.lock and record.lock.base else None
    written = _write_files(folder, record, base, settings.default_base)
    expected = "spec" if SPEC_FILE in written else record.kind
    if kind_of(written) != expected:
        raise RecordError(f"{FIELD}.files", f"the files do not make a {record.kind} environment")
    spec = load(folder, settings.default_base)
    check_base_allowed(spec, list(settings.allowed_bases))
    if spec.kind == "dockerfile":
        _check_dockerfile_bases(files.read_text(folder, "Dockerfile"), settings.allowed_bases)
    return Checked(spec, _checked_lock(record.lock, spec))


def check_aside(record: NotebookEnv, name: str, settings: BuildSettings) -> Checked:
    """:func:`check` in a temporary folder of the server's own, removed after."""
    with tempfile.TemporaryDirectory(prefix="docker-env-restore-") as tmp:
        return check(record, Path(os.path.realpath(tmp)) / name, settings)


def _write_files(
    folder: Path, record: NotebookEnv, base: str | None, default_base: str
) -> set[str]:
    """Make the new folder ``folder`` (in an existing one) with the record's files, named for
    it: a spec names its environment and the base its lock was made on (this server's default
    base may be another). Through files.py: no link planted meanwhile is followed, and all of it
    belongs to the owner of the folder it is made in. The names written directly in it."""
    assert record.files is not None
    files.make_folder(folder.parent, folder.name)
    contents = dict(record.files)
    if record.kind == "spec":
        try:
            raw: dict[str, Any] = tomllib.loads(contents.get(SPEC_FILE, ""))
        except tomllib.TOMLDecodeError as exc:
            raise SpecError(SPEC_FILE, f"is not valid TOML: {exc}") from exc
        raw["name"] = folder.name
        if base:
            raw.setdefault("base", base)
        contents[SPEC_FILE] = tomli_w.dumps(raw)
    elif record.kind in ("requirements", "environment") and base and base != default_base:
        source = next(n for k, n in KIND_FILES if k == record.kind and n in record.files)
        contents[SPEC_FILE] = tomli_w.dumps({record.kind: source, "base": base})
    for name, text in contents.items():
        where, _, last = name.rpartition("/")  # the schema's pattern: plain names, no way out
        inner = files.make_folder(folder, where, exist_ok=True) if where else folder
        files.write_text(inner, last, text)
    return {name.partition("/")[0] for name in contents}


def _check_dockerfile_bases(text: str, allowed: tuple[str, ...]) -> None:
    """Every FROM of a recorded Dockerfile must be an allowed base (when bases are restricted)."""
    if not allowed:
        return
    stages: set[str] = set()
    for match in FROM_RE.finditer(text):
        image, stage = match.group(1), match.group(2)
        if image.lower() not in stages:
            if "$" in image:
                raise SpecError("Dockerfile", f"FROM {image}: a base chosen by a build argument")
            if not any(fnmatch.fnmatchcase(image, pattern) for pattern in allowed):
                raise SpecError(
                    "Dockerfile",
                    f"FROM {image}: not an allowed base image; pick one of: {', '.join(allowed)}",
                )
        if stage:
            stages.add(stage.lower())


def _checked_lock(recorded: Lock | None, spec: EnvSpec) -> Lock | None:
    if recorded is None:
        return None
    for section, pattern, what in (
        ("pip", LOCK_PIP_RE, "an exact pin like numpy==1.26.4"),
        ("apt", APT_RE, "a Debian package pin like git=1:2.39.5-0+deb12u1"),
    ):
        for i, entry in enumerate(getattr(recorded, section)):
            if not pattern.match(entry):
                raise RecordError(f"{FIELD}.lock.{section}[{i}]", f"{entry!r} is not {what}")
    base = recorded.base
    if base is None or spec.base is None:
        return recorded
    if base.image != spec.base:
        raise RecordError(
            f"{FIELD}.lock.base",
            f"the lock was made on {base.image!r} but the spec names {spec.base!r}",
        )
    if base.digest and (
        not IMAGE_RE.match(base.digest) or base.digest.split("@")[0] != repository_of(spec.base)
    ):
        return replace(recorded, base=replace(base, digest=""))  # not the spec's base: never pull
    return recorded


def sources(record: NotebookEnv, registry: str) -> list[str]:
    """Where the recorded image may be pulled from by digest: the configured registry only."""
    if not registry or record.registry is None:
        return []
    prefix = registry.rstrip("/") + "/"
    found = [record.registry.pinned] if record.registry.repository.startswith(prefix) else []
    own = f"{prefix}{record.env}@{record.registry.digest}"
    return [ref for ref in dict.fromkeys([*found, own]) if IMAGE_RE.match(ref)]


def preview(
    record: NotebookEnv, name: str, settings: BuildSettings
) -> tuple[RestorePlan, Checked | None]:
    """What recreating the record as ``name`` would install, and whether it may: checked in a
    temporary folder, nothing run."""
    checked: Checked | None = None
    refusal: FieldError | None = None
    try:
        checked = check_aside(record, name, settings)
    except FieldError as exc:
        refusal = exc
    recorded = checked.lock if checked else record.lock
    spec = checked.spec if checked else None
    exact = recorded is not None and record.kind != "dockerfile"
    plan = RestorePlan(
        name=name,
        kernel_name=kernel_name(name),
        kind=spec.kind if spec else record.kind,
        base=(spec.base if spec else None)
        or (recorded.base.image if recorded and recorded.base else None),
        base_digest=(recorded.base.digest or None) if recorded and recorded.base else None,
        pip=recorded.pip if exact and recorded else (spec.pip if spec else ()),
        apt=lock.pin(spec, recorded).apt
        if exact and spec and recorded and recorded.pip
        else (spec.apt if spec else ()),
        conda=spec.conda if spec else (),
        files=dict(record.files or {}),
        source=next(iter(sources(record, settings.registry)), None),
        allowed=refusal is None,
        refusal=str(refusal) if refusal else None,
        field=refusal.field if refusal else None,
    )
    return plan, checked


def materialize(record: NotebookEnv, root: Path, folder: Path, settings: BuildSettings) -> Checked:
    """Write the environment folder ``folder`` (inside ``root``, the workspace) for the record:
    checked first, in a hidden folder beside it, so a refused record leaves nothing behind.
    Everything is made through files.py, owned by the workspace's owner, and a link planted on
    the way (the user owns what is made) is never followed."""
    parent = folder.parent.relative_to(root)
    try:
        staging = files.make_folder(
            root, str(parent / f".restore-{folder.name}-{uuid.uuid4().hex[:8]}")
        )
    except files.FileRefused as exc:
        raise FieldError("name", f"{parent / folder.name}: {exc.message}") from exc
    try:
        checked = check(record, staging / folder.name, settings)
        if checked.lock is not None:
            lock.write(staging / folder.name, checked.lock, record.spec_hash, folder.name)
        files.rename(staging, folder.name, folder.parent)  # FileExistsError: made meanwhile
    finally:
        with contextlib.suppress(files.FileRefused):
            files.remove_folder(staging)
    return checked


def recreate(
    images: ImageBuilder, folder: Path, checked: Checked, pull_from: list[str], op: Operation
) -> BuildResult:
    """The operation's work: the recorded image, or a build of exactly the recorded versions."""
    if checked.lock is None:
        op.emit("The notebook recorded no lock: building its spec (versions may differ)")
        return images.build(folder, BuildOptions(), op)
    return images.recreate(folder, checked.lock, pull_from, op)
