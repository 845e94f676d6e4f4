"""The environment service of a single-user server on a shared JupyterHub: the environments are
the user's folders as always, the images the launch broker's.

Select it with ``c.DockerEnvApp.environment_manager_class =
"jupyter_docker_env.environments.broker.BrokerEnvironmentManager"``. The server still reads its
own workspace's spec files, validates them and computes their content hash (with the base image
ids the broker reports), so listing and states work as with a local engine; a build sends the
environment folder's files to the broker as intent and follows the broker's build. The images
live in the user's namespace on the broker (``PREFIX/u-USER/ENV``); environments an administrator
provides (``c.DockerEnvApp.shared_env_dirs``) in the shared one, which only hub admins build.
Registry sharing is the administrator's business on a shared hub: push and pull say so.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from .. import __version__
from .. import labels as L
from ..broker.client import BrokerClient, BrokerError, BrokerUnavailable, quoted
from ..engine import Engine, EngineUnavailable
from ..models import (
    BuildOptions,
    BuildResult,
    CatalogImage,
    EngineStatus,
    GpuStatus,
    ImageInfo,
    Lock,
    PushResult,
    Status,
)
from ..operations import Cancelled, Operation, OperationFailed
from . import dockerfile, files, lock
from .images import CONTEXT_SKIP, BuildSettings, ImageBuilder, Plan, _context_tree
from .manager import EnvironmentManager, Location, _Images
from .spec import LOCK_FILE, SPEC_FILE

T = TypeVar("T")
#: How often a build's progress is asked for.
POLL_SECONDS = 0.5
NO_REGISTRY = (
    "sharing through a registry is not available on this hub: images live on the hub's "
    "launch broker; ask an administrator to share an environment"
)


NO_ENGINE = (
    "this server has no Docker engine of its own: on this hub the launch broker builds "
    "environments and starts kernels and runs, and what was asked here (a --snapshot run, a "
    "serving image) is not available through it"
)


class NoLocalEngine(Engine):
    """The engine of a server that has none: whatever reaches for it learns why, in words."""

    @property
    def client(self) -> Any:
        raise EngineUnavailable(NO_ENGINE)


def image_summaries(rows: list[dict[str, Any]], bases: dict[str, str]) -> _Images:
    """The broker's image listing as the environment service indexes the engine's."""
    ids: dict[str, str] = dict(bases)
    summaries: dict[str, dict[str, Any]] = {
        image_id: {"Id": image_id} for image_id in bases.values()
    }
    for row in rows:
        for tag in row["tags"]:
            ids[tag] = row["id"]
        summaries[row["id"]] = {
            "Id": row["id"],
            "RepoTags": row["tags"],
            "RepoDigests": [],
            "Size": row["size"],
            "Created": row["created"],
            "Labels": row["labels"],
        }
    return _Images(ids, summaries)


class BrokerImageBuilder(ImageBuilder):
    """Names and plans images like :class:`ImageBuilder`; builds, lists and removes them
    through the broker."""

    def __init__(self, client: BrokerClient, engine: Engine, settings: BuildSettings) -> None:
        super().__init__(engine, replace(settings, registry="", allowed_bases=()))
        self.client = client
        #: Environments an administrator provides: their images are in the shared namespace.
        self.shared_names: set[str] = set()
        self.shared_namespace = ""
        self._rows: list[dict[str, Any]] = []
        self._bases: dict[str, str] = {}

    def repository(self, name: str) -> str:
        if name in self.shared_names and self.shared_namespace:
            return f"{self.shared_namespace}/{name}"
        return super().repository(name)

    # -- what the broker has -----------------------------------------------------------------
    def listing(self) -> _Images:
        """Ask the broker for the user's images and the allowed bases it has. Blocking."""
        data = self.client.request("GET", "images")
        self._rows, self._bases = list(data["images"]), dict(data["bases"])
        return image_summaries(self._rows, self._bases)

    def plan(
        self,
        folder: Path,
        op: Operation | None = None,
        from_lock: bool = False,
        resolve_base: bool = True,
        base_ids: dict[str, str] | None = None,
    ) -> Plan:
        """As on a local engine, with the base ids the broker reported (the broker pulls)."""
        return super().plan(folder, op, from_lock, resolve_base=False, base_ids=base_ids)

    def present_base_id(self, ref: str) -> str:
        return self._bases.get(ref, "")

    def find_image(self, ref: str) -> ImageInfo | None:
        return self.listing().image(ref)

    def catalog(self) -> list[CatalogImage]:
        self.listing()
        rows = []
        for row in self._rows:
            tags = tuple(t for t in row["tags"] if t.startswith(f"{self.settings.image_prefix}/"))
            if tags:
                rows.append(
                    CatalogImage(
                        name=tags[0][len(self.settings.image_prefix) + 1 :].rpartition(":")[0],
                        image_id=row["id"],
                        tags=tags,
                        size=int(row["size"]),
                        created=int(row["created"]),
                        gpu=row["labels"].get(L.GPU) == "true",
                    )
                )
        return sorted(rows, key=lambda r: (r.name, -r.created))

    def remove(self, name: str) -> list[CatalogImage]:
        removed = [row for row in self.catalog() if row.name == name]
        namespace = self.repository(name).rpartition("/")[0]
        try:
            self.client.request("DELETE", f"images/{quoted(name)}?namespace={quoted(namespace)}")
        except BrokerError as exc:
            if exc.status != 404:
                raise
            return []
        return removed

    # -- builds ----------------------------------------------------------------------------
    def build(self, folder: Path, options: BuildOptions, op: Operation) -> BuildResult:
        op.emit(f"Reading {folder}")
        self.listing()  # the bases' ids, for the content hash
        plan = self.operation_plan(folder, op, from_lock=options.from_lock)
        body: dict[str, Any] = {
            "name": plan.spec.name,
            "files": self._files(plan, options.from_lock),
            "options": {"no_cache": options.no_cache, "from_lock": options.from_lock},
        }
        if plan.spec.name in self.shared_names:
            body["shared"] = True
        op.emit(f"Environment {plan.spec.name}: building on the hub's launch broker")
        try:
            started = self.client.request("POST", "builds", body)
        except BrokerError as exc:
            raise OperationFailed(str(exc), step=exc.field and f"spec field {exc.field}") from exc
        result = self._follow_broker(str(started["id"]), op)
        if not files.writable(plan.folder):
            return result  # an administrator's read-only environment
        if plan.spec.kind != "dockerfile":
            # as after a local build: a colleague's plain `docker build` of the folder works
            files.write_text(plan.folder, "Dockerfile", dockerfile.render(plan.spec, folder))
            files.write_text(plan.folder, ".dockerignore", dockerfile.dockerignore(plan.spec))
        if result.lock is not None:
            lock.write(plan.folder, result.lock, result.spec_hash, plan.spec.name)
        return result

    def _files(self, plan: Plan, from_lock: bool) -> dict[str, str]:
        """The folder's files a build reads, as text (read without following links)."""
        folder = plan.folder
        if plan.spec.kind == "dockerfile":
            tree = _context_tree(folder)
            if links := [n for n, e in tree.items() if e.kind == "link"]:
                raise OperationFailed(
                    f"{links[0]} is a symbolic link: the broker takes an environment folder's "
                    "files only; copy the file in instead",
                    step="files",
                )
            data = {
                n: e.data for n, e in tree.items() if e.kind == "file" and n not in CONTEXT_SKIP
            }
            for name in ("Dockerfile", ".dockerignore"):
                if files.is_file(folder, name):
                    data[name] = files.read_bytes(folder, name)
        else:
            names = [SPEC_FILE] if plan.spec.kind == "spec" else []
            names += dockerfile.input_files(plan.spec)
            if from_lock:
                names.append(LOCK_FILE)
            data = {n: files.read_bytes(folder, n) for n in names}
        out = {}
        for name, raw in data.items():
            try:
                out[name] = raw.decode()
            except UnicodeDecodeError:
                raise OperationFailed(
                    f"{name} is not a text file: the broker takes an environment folder's text "
                    "files only (keep data and binaries out of environment folders)",
                    step="files",
                ) from None
        return out

    def _follow_broker(self, operation_id: str, op: Operation) -> BuildResult:
        """Mirror the broker's build into ``op`` until it ends; cancel it when ``op`` is."""
        offset, cancelling = 0, False
        while True:
            try:
                data = self.client.request("GET", f"builds/{operation_id}?offset={offset}")
            except BrokerError as exc:
                raise OperationFailed(str(exc), step="broker") from exc
            for line in data["log"]:
                op.emit(line)
            offset = data["log_offset"]
            if data.get("total_steps"):
                op.set_step(data["step"], data["total_steps"])
            if data["state"] not in ("queued", "running"):
                break
            if op.cancelled and not cancelling:
                cancelling = True
                with contextlib.suppress(BrokerError):  # it ended meanwhile: the next answer says
                    self.client.request("DELETE", f"builds/{operation_id}")
            time.sleep(POLL_SECONDS)
        if data["state"] == "cancelled":
            raise Cancelled()
        if data["state"] != "succeeded" or not data.get("result"):
            raise OperationFailed(
                str(data.get("error") or "the build failed"), step=data.get("failed_step")
            )
        result = data["result"]
        return BuildResult(
            name=result["name"],
            image=result["image"],
            image_id=result["image_id"],
            spec_hash=result["spec_hash"],
            built=bool(result["built"]),
            pulled=False,
            lock=Lock.from_json(result["lock"]) if result.get("lock") else None,
            shared_with=result.get("shared_with"),
        )

    def sweep_untagged(self, repository: str | None = None) -> None:
        """Nothing to do here: the broker sweeps the images it built (see Broker.reap)."""

    def pull(self, folder: Path, op: Operation) -> BuildResult:
        raise OperationFailed(NO_REGISTRY)

    def push(self, folder: Path, op: Operation) -> PushResult:
        raise OperationFailed(NO_REGISTRY)


class BrokerEnvironmentManager(EnvironmentManager):
    """The environment service with the launch broker as its engine (see the module's doc)."""

    container_backend = "broker"
    images: BrokerImageBuilder

    def __init__(
        self,
        settings: Any,
        root_dir: Path,
        engine: Engine,
        kernels_dir: Path | None = None,
        client: BrokerClient | None = None,
        **kwargs: Any,
    ) -> None:
        # The server's engine is not there: the runs service (which uses this one) and any
        # other code that reaches for it get an error that says so.
        engine = NoLocalEngine()
        super().__init__(settings, root_dir, engine, kernels_dir, **kwargs)
        self.client = client or BrokerClient.instance(parent=self)
        self.images = BrokerImageBuilder(self.client, engine, self.images.settings)
        self._who: dict[str, Any] | None = None

    def who(self) -> dict[str, Any]:
        """The broker's view of this server's user, asked once. Blocking.

        The broker's default base becomes this server's, so that specs hash the same here and
        there; images are named in the user's namespace.
        """
        if self._who is None:
            who = self.client.request("GET", "whoami")
            self.settings.default_base = who["default_base"]
            self.images.settings = replace(
                self.images.settings,
                image_prefix=who["namespace"],
                default_base=who["default_base"],
                owner=who["user"],
            )
            self.images.shared_namespace = who["shared_namespace"]
            self._who = who
        return self._who

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        def with_who() -> T:
            self.who()  # before anything parses a spec: the broker's default base applies
            return fn(*args)

        return await super()._run(with_who)

    def locations(self) -> dict[str, Location]:
        self.who()
        found = super().locations()
        shared = set(self.shared_env_dirs)
        self.images.shared_names = {
            name for name, loc in found.items() if loc.folder.parent in shared
        }
        return found

    def _image_index(self) -> _Images:
        self.who()
        return self.images.listing()

    async def status(self) -> Status:
        try:
            data = await self.client.fetch("GET", "status")
        except BrokerUnavailable as exc:
            engine = EngineStatus(available=False, host=self.client.url, reason=str(exc))
            return Status(
                version=__version__,
                engine=engine,
                gpu=GpuStatus(available=False, reason="the launch broker is not reachable"),
                allowed_bases=(),
                default_base=self.settings.default_base,
                registry=None,
            )
        info, user = data["engine"], data["user"]
        runtimes = tuple(info.get("runtimes") or ())
        gpus = int(user["limits"]["gpus"])
        if not info["available"]:
            gpu_reason: str | None = "the hub's Docker engine is not reachable"
        elif "nvidia" not in runtimes:
            gpu_reason = "the hub's Docker engine has no NVIDIA runtime"
        elif not gpus:
            gpu_reason = "your GPU limit on this hub is 0: ask an administrator"
        else:
            gpu_reason = None
        return Status(
            version=__version__,
            engine=EngineStatus(
                available=bool(info["available"]),
                host=f"the hub's launch broker ({self.client.url})",
                version=info.get("version"),
                api_version=info.get("api_version"),
                reason=info.get("reason"),
                builder=info.get("builder"),
                runtimes=runtimes,
            ),
            gpu=GpuStatus(available=gpu_reason is None, runtimes=runtimes, reason=gpu_reason),
            allowed_bases=tuple(user["allowed_bases"]),
            default_base=user["default_base"],
            registry=None,
        )

    def _require_engine(self) -> None:
        engine = self.client.request("GET", "status")["engine"]  # BrokerUnavailable: no broker
        if not engine["available"]:
            raise EngineUnavailable(engine.get("reason") or "the hub's Docker engine is down")

    def kernel_specs(self, extra_config: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """As for a local engine, with kernels started through the broker."""
        return super().kernel_specs({**(extra_config or {}), "backend": "broker"})
