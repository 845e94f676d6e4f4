"""``metadata.docker_env``: the environment a notebook was saved on, as a typed record.

The shape is a versioned JSON schema (``notebook-metadata.schema.json``, documented in
docs/notebooks.md). Written by the server when a notebook on an environment's kernel is saved,
read wherever the notebook is opened: there it is input from whoever sent the notebook, so
:meth:`NotebookEnv.from_json` validates it against the schema before anything uses it.

The records of this workspace's environments come from their images alone (labels: content hash,
lock, spec files; repo digests), so the environment service can keep them in memory and a save
never waits for the engine.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from .. import labels as L
from ..environments import lock
from ..environments.images import ImageBuilder, Plan, spec_files
from ..environments.spec import SPEC_FILE, SpecError, detect_kind, repository_of
from ..models import FieldError, Lock

SCHEMA_FILE = Path(__file__).with_name("notebook-metadata.schema.json")
METADATA_KEY = "docker_env"
VERSION = 1
KIND_FILES = (
    ("spec", SPEC_FILE),
    ("dockerfile", "Dockerfile"),
    ("requirements", "requirements.txt"),
    ("environment", "environment.yml"),
    ("environment", "environment.yaml"),
)


class RecordError(FieldError):
    """A notebook's metadata.docker_env that cannot be used; ``field`` is its JSON path."""


@functools.cache
def schema() -> dict[str, Any]:
    return json.loads(SCHEMA_FILE.read_text())  # type: ignore[no-any-return]


@functools.cache
def _validator() -> Draft202012Validator:
    return Draft202012Validator(schema())


@dataclass(frozen=True)
class RegistryImage:
    """Where an environment's image is in a registry: its tag there and its digest."""

    image: str  # HOST[:PORT]/NAMESPACE/ENV:HASH
    digest: str  # sha256:…

    @property
    def repository(self) -> str:
        return repository_of(self.image)

    @property
    def pinned(self) -> str:
        """The reference that pulls exactly this image."""
        return f"{self.repository}@{self.digest}"


@dataclass(frozen=True)
class NotebookEnv:
    """One notebook's ``metadata.docker_env`` (schema version 1)."""

    env: str
    kind: str
    spec_hash: str
    image_id: str
    image_tag: str
    files: dict[str, str] | None
    lock: Lock | None
    registry: RegistryImage | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "env": self.env,
            "kind": self.kind,
            "spec_hash": self.spec_hash,
            "image": {"id": self.image_id, "tag": self.image_tag},
            "registry": (
                {"image": self.registry.image, "digest": self.registry.digest}
                if self.registry
                else None
            ),
            "files": dict(self.files) if self.files is not None else None,
            "lock": self.lock.to_json() if self.lock else None,
        }

    @classmethod
    def from_json(cls, data: Any) -> NotebookEnv:
        """The record in ``data``, validated; RecordError names what is wrong and where."""
        version = data.get("version") if isinstance(data, dict) else None
        if isinstance(version, int) and version > VERSION:
            raise RecordError(
                f"metadata.{METADATA_KEY}.version",
                f"the notebook was saved by a newer jupyter-docker-env (record version "
                f"{version}; this one reads version {VERSION}): update it",
            )
        error = best_match(_validator().iter_errors(data))
        if error is not None:
            where = "".join(
                f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path
            )
            raise RecordError(
                f"metadata.{METADATA_KEY}{where}",
                f"is not a jupyter-docker-env environment record: {error.message[:300]}",
            )
        registry = data["registry"]
        return cls(
            env=data["env"],
            kind=data["kind"],
            spec_hash=data["spec_hash"],
            image_id=data["image"]["id"],
            image_tag=data["image"]["tag"],
            files=data["files"],
            lock=Lock.from_json(data["lock"]) if data["lock"] else None,
            registry=RegistryImage(registry["image"], registry["digest"]) if registry else None,
        )


def from_notebook(notebook: Any) -> NotebookEnv | None:
    """The record a notebook (its JSON) carries, or None when it carries none."""
    metadata = notebook.get("metadata") if isinstance(notebook, dict) else None
    if not isinstance(metadata, dict) or metadata.get(METADATA_KEY) is None:
        return None
    return NotebookEnv.from_json(metadata[METADATA_KEY])


def read_notebook(path: Path) -> Any:
    """A notebook file's JSON; FieldError (``notebook``) when it is not one."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise FieldError("notebook", f"{path} does not exist") from exc
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise FieldError("notebook", f"{path} is not a notebook (JSON): {exc}") from exc


def kind_of(names: Iterable[str]) -> str | None:
    """The kind of environment a set of file names makes (as spec.detect_kind decides)."""
    present = set(names)
    return next((kind for kind, name in KIND_FILES if name in present), None)


# -- the records of this workspace's environments (the environment service keeps them) -------
def environment_records(
    folders: dict[str, Path], summaries: list[dict[str, Any]], images: ImageBuilder
) -> dict[str, NotebookEnv]:
    """metadata.docker_env for each environment (name → folder) whose kernel has an
    image: the image its kernel spec names (``latest``), described by its labels."""
    by_ref: dict[str, dict[str, Any]] = {}
    ids: dict[str, str] = {}
    for summary in summaries:
        for ref in summary.get("RepoTags") or []:
            by_ref[ref] = summary
            ids[ref] = str(summary["Id"])
    records = {}
    for name, folder in folders.items():
        latest = by_ref.get(images.latest_ref(name))
        if latest is None:
            continue
        try:
            record = _record(name, folder, latest, images, ids)
        except FieldError:  # a folder that cannot be read (a link in its place): no record
            continue
        if record is not None:
            records[name] = record
    return records


def _record(
    name: str, folder: Path, summary: dict[str, Any], images: ImageBuilder, ids: dict[str, str]
) -> NotebookEnv | None:
    labels = summary.get("Labels") or {}
    spec_hash = labels.get(L.SPEC_HASH, "")
    if len(spec_hash) != 64:
        return None  # not one of our builds
    files, kind = _files_label(labels.get(L.SPEC_FILES))
    found_lock = lock.from_label(labels.get(L.LOCK))
    if files is None or found_lock is None:
        # Built before images carried their spec: the folder tells, while it still hashes the same.
        plan = _plan(images, folder, ids)
        if plan is not None and plan.hash == spec_hash:
            if files is None:
                files, kind = spec_files(plan.folder, plan.spec), plan.spec.kind
            if found_lock is None:
                on_disk = lock.read(folder)
                found_lock = on_disk[0] if on_disk and on_disk[1] == spec_hash else None
    short = spec_hash[:16]
    record = NotebookEnv(
        env=name,
        kind=kind or detect_kind(folder) or "spec",
        spec_hash=spec_hash,
        image_id=str(summary["Id"]),
        image_tag=f"{images.repository(name)}:{short}",
        files=files,
        lock=found_lock,
        registry=_registry_image(summary, images.settings.registry, short),
    )
    if record.files is not None and not _validator().is_valid(record.to_json()):
        # e.g. a Dockerfile's context with names the schema does not take: carry no files
        record = replace(record, files=None)
    return record if _validator().is_valid(record.to_json()) else None


def _files_label(raw: str | None) -> tuple[dict[str, str] | None, str | None]:
    if not raw:
        return None, None
    try:
        files = json.loads(raw)
    except ValueError:
        return None, None
    if not isinstance(files, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in files.items()
    ):
        return None, None
    return files, kind_of(files)


def _plan(images: ImageBuilder, folder: Path, ids: dict[str, str]) -> Plan | None:
    try:
        return images.plan(folder, resolve_base=False, base_ids=ids)
    except (SpecError, OSError):
        return None


def _registry_image(summary: dict[str, Any], registry: str, short: str) -> RegistryImage | None:
    """The image's digest in the configured registry, as the engine recorded it at a push or
    pull (no registry is asked)."""
    if not registry:
        return None
    prefix = registry.rstrip("/") + "/"
    for ref in summary.get("RepoDigests") or []:
        repository, _, digest = str(ref).partition("@")
        if repository.startswith(prefix) and digest:
            return RegistryImage(f"{repository}:{short}", digest)
    return None
