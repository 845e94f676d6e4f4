"""The environments a user sees: discovery, create/update/delete, and their state.

Every method blocks (file system and engine); the REST handlers await them through the engine's
executor.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from . import kernelspecs
from .builder import LABEL_GPU, Builder, Plan, read_lock
from .jobs import JobManager
from .spec import LOCK_FILE, SPEC_FILE, SpecError, detect_kind, load, parse

CREATE_FROM = {"requirements.txt", "environment.yml", "environment.yaml", "Dockerfile"}


class EnvNotFound(LookupError):
    pass


class EnvConflict(Exception):
    pass


class EnvReadOnly(Exception):
    pass


@dataclass(frozen=True)
class Location:
    name: str
    folder: Path
    readonly: bool


class Environments:
    def __init__(
        self,
        root_dir: Path,
        env_dirs: list[str],
        shared_env_dirs: list[str],
        builder: Builder,
        jobs: JobManager,
    ) -> None:
        self.root_dir = root_dir.resolve()
        self.env_dirs = [self._under_root(d) for d in env_dirs]
        self.shared_env_dirs = [Path(d) for d in shared_env_dirs]
        self.builder = builder
        self.jobs = jobs

    def _under_root(self, path: str) -> Path:
        p = (self.root_dir / path).resolve()
        if p != self.root_dir and self.root_dir not in p.parents:
            raise ValueError(f"env dir {path} is outside the workspace {self.root_dir}")
        return p

    @property
    def create_dir(self) -> Path:
        return self.env_dirs[0]

    # -- discovery -------------------------------------------------------------------------
    def locations(self) -> dict[str, Location]:
        """Every environment folder by name; the user's own win over shared ones."""
        found: dict[str, Location] = {}
        for readonly, dirs in ((True, self.shared_env_dirs), (False, self.env_dirs)):
            for parent in dirs:
                if not parent.is_dir():
                    continue
                for folder in sorted(parent.iterdir()):
                    if folder.name.startswith(".") or not folder.is_dir():
                        continue
                    if detect_kind(folder) is None:
                        continue
                    name = self._name(folder)
                    found[name] = Location(name, folder, readonly or not os.access(folder, os.W_OK))
        return found

    def _name(self, folder: Path) -> str:
        try:
            return load(folder, self.builder.settings.default_base).name
        except SpecError:
            return folder.name.lower()

    def locate(self, name: str) -> Location:
        loc = self.locations().get(name)
        if loc is None:
            raise EnvNotFound(f"no environment named {name!r}")
        return loc

    # -- describing ------------------------------------------------------------------------
    def describe(self, loc: Location) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": loc.name,
            "display_name": f"{loc.name} (Docker env)",
            "path": self._display_path(loc.folder),
            "readonly": loc.readonly,
            "kernel_name": kernelspecs.kernel_name(loc.name),
            "error": None,
            "spec_hash": None,
            "image": None,
            "lock": None,
            "registry": None,
        }
        job = self.jobs.latest(loc.name)
        data["job"] = job.to_json() if job else None
        try:
            plan = self.builder.plan(loc.folder, resolve_base=False)
        except SpecError as exc:
            data.update(
                kind=detect_kind(loc.folder) or "spec",
                base=None,
                gpu=False,
                state="failed",
                error=str(exc),
            )
            return data
        spec = plan.spec
        data.update(spec.to_json())
        data["name"] = loc.name
        current = self.builder.find_image(self.builder.image_ref(plan)) if plan.hash else None
        # Out of date: the last build's image still runs the kernel, so show it.
        image = current or self.builder.find_image(self.builder.latest_ref(loc.name))
        data["spec_hash"] = plan.hash or None
        if image is not None:
            data["image"] = image.to_json()
            data["lock"] = self.builder.lock_of(image) or read_lock(loc.folder)
        data["state"] = self._state(loc, plan, current is not None)
        if self.builder.settings.registry and plan.hash:
            data["registry"] = {
                "image": self.builder.registry_ref(plan),
                "available": self.builder.registry_has(plan),
            }
        return data

    def _state(self, loc: Location, plan: Plan, built: bool) -> str:
        job = self.jobs.latest(loc.name)
        if job is not None and job.active and job.kind in ("build", "pull"):
            return "building"
        if built:
            return "built"
        if job is not None and job.kind == "build" and job.state == "failed":
            return "failed"
        if self.builder.env_images(loc.name):
            return "outdated"
        return "not_built"

    def _display_path(self, folder: Path) -> str:
        try:
            return str(folder.relative_to(self.root_dir))
        except ValueError:
            return str(folder)

    def all(self) -> list[dict[str, Any]]:
        return [self.describe(loc) for loc in self.locations().values()]

    def get(self, name: str) -> dict[str, Any]:
        return self.describe(self.locate(name))

    # -- changing --------------------------------------------------------------------------
    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        body = dict(body)
        from_path = body.pop("from_path", None)
        name = body.get("name")
        if not isinstance(name, str) or not name:
            raise SpecError("name", "give the new environment a name")
        folder = self.create_dir / name
        if name in self.locations() or folder.exists():
            raise EnvConflict(f"an environment named {name!r} already exists")
        if from_path:
            source = self._workspace_file(from_path)
            folder.mkdir(parents=True)
            shutil.copy(source, folder / source.name)
            if body.keys() - {"name"}:
                self._write_spec(folder, body | {"name": name}, source)
            elif name != folder.name:
                self._write_spec(folder, {"name": name}, source)
        else:
            spec = parse(body, folder, self.builder.settings.default_base)
            folder.mkdir(parents=True)
            (folder / SPEC_FILE).write_text(tomli_w.dumps(spec.to_toml()))
        return self.get(name)

    def _write_spec(self, folder: Path, body: dict[str, Any], source: Path) -> None:
        key = {"requirements.txt": "requirements", "Dockerfile": None}.get(
            source.name, "environment"
        )
        if key is None:
            return
        body = {key: source.name, **body}
        try:
            spec = parse(body, folder, self.builder.settings.default_base)
        except SpecError:
            shutil.rmtree(folder)
            raise
        (folder / SPEC_FILE).write_text(tomli_w.dumps(spec.to_toml()))

    def _workspace_file(self, path: str) -> Path:
        source = (self.root_dir / path).resolve()
        if self.root_dir not in source.parents:
            raise SpecError("from_path", f"{path} is outside the workspace")
        if not source.is_file():
            raise SpecError("from_path", f"{path} does not exist")
        if source.name not in CREATE_FROM:
            raise SpecError("from_path", f"{path} must be one of: {', '.join(sorted(CREATE_FROM))}")
        return source

    def update(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        loc = self.locate(name)
        if loc.readonly:
            raise EnvReadOnly(f"{name} is provided read-only by the administrator")
        if detect_kind(loc.folder) == "dockerfile":
            raise SpecError("kind", f"{name} uses its own Dockerfile: edit that file instead")
        body = {"name": name, **body}
        if body["name"] != name:
            raise SpecError("name", "renaming an environment is not supported: create a new one")
        spec = parse(body, loc.folder, self.builder.settings.default_base)
        path = loc.folder / SPEC_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(tomli_w.dumps(spec.to_toml()))
        tmp.replace(path)  # atomic: a failed write never loses the old spec
        return self.get(name)

    def delete(self, name: str) -> None:
        loc = self.locate(name)
        if loc.readonly:
            raise EnvReadOnly(f"{name} is provided read-only by the administrator")
        if self.jobs.active(name):
            raise EnvConflict(f"{name} has a build, push or pull running: cancel it first")
        for image in self.builder.env_images(name):
            self.builder.engine.remove_image_tags(image)
        shutil.rmtree(loc.folder)

    def kernel_specs(self, extra_config: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Kernel specs for every environment that has a built image."""
        specs = []
        for loc in self.locations().values():
            latest = self.builder.find_image(self.builder.latest_ref(loc.name))
            if latest is None:
                continue
            gpu = latest.labels.get(LABEL_GPU) == "true"
            specs.append(
                kernelspecs.kernel_json(
                    loc.name, self.builder.latest_ref(loc.name), gpu, extra_config
                )
            )
        return specs


__all__ = ["LOCK_FILE", "EnvConflict", "EnvNotFound", "EnvReadOnly", "Environments", "Location"]
