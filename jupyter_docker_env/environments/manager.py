"""The environment service: discovery, state, create/update/delete, builds, sharing and kernel
specs of the environments in one workspace.

The REST handlers and the CLI are thin adapters over it. Its public methods are coroutines: the
blocking parts (file system, engine) run on its own small executor, and builds, pushes and pulls
on its operations' workers, so neither competes with kernel calls on the engine's executor.

Listing is cheap: one engine call lists every image; what is derived from an environment's files
(its spec and content hash) is cached by the files' sizes and mtimes; the registry is asked only
on demand (:meth:`registry`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import tomli_w
from traitlets.config import LoggingConfigurable

from .. import __version__
from .. import labels as L
from ..containers.swarm import SwarmBackend
from ..engine import Engine, EngineError, EngineUnavailable
from ..kernels import kernelspecs
from ..kernels.provisioner import DockerEnvProvisioner, backend_for
from ..models import (
    BuildOptions,
    BuildResult,
    Environment,
    EnvState,
    FieldError,
    GpuStatus,
    ImageInfo,
    RegistryState,
    Status,
)
from ..notebooks.record import NotebookEnv, environment_records
from ..operations import Operation, OperationFailed, OperationManager
from . import files, lock
from .images import ImageBuilder, Plan
from .spec import (
    SPEC_FILE,
    SPEC_KEYS,
    SpecError,
    check_name,
    check_text,
    detect_kind,
    load,
    parse,
    shown,
)

if TYPE_CHECKING:
    from ..config import DockerEnvConfig

T = TypeVar("T")
CREATE_FROM = {"requirements.txt", "environment.yml", "environment.yaml", "Dockerfile"}


class EnvNotFound(LookupError):
    pass


class EnvConflict(Exception):
    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class EnvReadOnly(Exception):
    pass


@dataclass(frozen=True)
class Location:
    name: str
    folder: Path
    readonly: bool


@dataclass(frozen=True)
class _Images:
    """One listing of the engine's images, indexed for many environments."""

    ids: dict[str, str]  # every tag and repo digest → image id
    summaries: dict[str, dict[str, Any]]  # image id → summary

    def image(self, ref: str) -> ImageInfo | None:
        image_id = self.ids.get(ref)
        if image_id is None:
            return None
        s = self.summaries[image_id]
        digests = s.get("RepoDigests") or []
        return ImageInfo(
            id=image_id,
            tag=ref,
            size=int(s.get("Size") or 0),
            created=datetime.fromtimestamp(int(s.get("Created") or 0), UTC).isoformat(),
            labels=dict(s.get("Labels") or {}),
            digest=digests[0].split("@", 1)[1] if digests else None,
        )

    def in_repository(self, repository: str) -> bool:
        return any(ref.rpartition(":")[0] == repository for ref in self.ids if "@" not in ref)


class EnvironmentManager(LoggingConfigurable):
    """Environments of one workspace (see the module's docstring)."""

    def __init__(
        self,
        settings: DockerEnvConfig,
        root_dir: Path,
        engine: Engine,
        kernels_dir: Path | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.root_dir = root_dir.resolve()
        self.env_dirs = [self._under_root(d) for d in settings.env_dirs]
        self.shared_env_dirs = [Path(d).resolve() for d in settings.shared_env_dirs]
        self.engine = engine
        self.images = ImageBuilder(engine, settings.build_settings())
        self.operations = OperationManager(workers=settings.build_workers, log=self.log)
        self.kernels_dir = kernels_dir
        self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="docker-env-envs")
        self._plans: dict[Path, tuple[Any, Plan | FieldError]] = {}
        #: Called after every kernel-spec sync (builds, pulls and deletes end with one).
        self.kernelspecs_synced: list[Callable[[], Awaitable[None]]] = []
        #: What a notebook saved on each built environment's kernel records (metadata.docker_env):
        #: refreshed after every operation, so that saving a notebook never asks the engine.
        self.notebook_records: dict[str, NotebookEnv] = {}
        self._records_lock = asyncio.Lock()
        self._records_loading: asyncio.Future[None] | None = None
        self._records_loaded = False

    def _under_root(self, path: str) -> Path:
        p = (self.root_dir / path).resolve()
        if p != self.root_dir and self.root_dir not in p.parents:
            raise ValueError(f"env dir {path} is outside the workspace {self.root_dir}")
        return p

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args))

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking work of this service (files, engine) on its executor."""
        return await self._run(fn, *args)

    def close(self) -> None:
        self.operations.close()
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- discovery -------------------------------------------------------------------------
    def locations(self) -> dict[str, Location]:
        """Every environment folder by name; the user's own win over shared ones.

        A link in the place of an environment folder is listed too (never followed: describing
        it says so), and a folder that cannot be read is listed with its error; one bad folder
        never hides the others.
        """
        found: dict[str, Location] = {}
        for readonly, dirs in ((True, self.shared_env_dirs), (False, self.env_dirs)):
            for parent in dirs:
                if os.path.realpath(parent) != str(parent):
                    continue  # made a link since the start (they were resolved): not followed
                try:
                    entries = sorted(os.scandir(parent), key=lambda e: e.name)
                except OSError:
                    continue  # missing, or not a folder: no environments there
                for entry in entries:
                    if entry.name.startswith(".") or not _is_environment(entry):
                        continue
                    folder = Path(entry.path)
                    name = self._name(folder)
                    # A link in a folder's place is the parent's to remove.
                    mine = folder.parent if entry.is_symlink() else folder
                    found[name] = Location(name, folder, readonly or not files.writable(mine))
        return found

    def _name(self, folder: Path) -> str:
        cached = self._plans.get(folder)
        if cached is not None and cached[0] == _fingerprint(folder):
            entry = cached[1]
            if isinstance(entry, Plan):
                return entry.spec.name
        try:
            return load(folder, self.settings.default_base).name
        except FieldError:
            return folder.name.lower()

    def locate(self, name: str) -> Location:
        loc = self.locations().get(name)
        if loc is None:
            raise EnvNotFound(f"no environment named {name!r}")
        return loc

    async def location(self, name: str) -> Location:
        return await self._run(self.locate, name)

    def location_of(self, folder: Path) -> Location:
        """Any folder as an environment (the CLI's DIR), whether or not under the workspace."""
        folder = folder.resolve()
        if not folder.is_dir():
            raise SpecError("folder", f"{folder} is not a folder")
        return Location(self._name(folder), folder, not files.writable(folder))

    # -- the engine ------------------------------------------------------------------------
    async def status(self) -> Status:
        info = await self._run(self.engine.info)
        if not info.available:
            gpu_reason = "the Docker engine is not reachable"
        elif not info.gpu_runtime:
            gpu_reason = (
                "the Docker engine has no NVIDIA runtime: install the NVIDIA Container Toolkit "
                "on the Docker host to use GPUs"
            )
        else:
            gpu_reason = None
        return Status(
            version=__version__,
            engine=info,
            gpu=GpuStatus(
                available=info.available and info.gpu_runtime,
                runtimes=info.runtimes,
                reason=gpu_reason,
            ),
            allowed_bases=tuple(self.settings.allowed_bases),
            default_base=self.settings.default_base,
            registry=self.settings.registry or None,
        )

    async def check_engine(self) -> None:
        """Raise EngineUnavailable, saying what to do, unless the engine answers."""
        await self._run(self._require_engine)

    # -- describing ------------------------------------------------------------------------
    def _image_index(self) -> _Images:
        ids: dict[str, str] = {}
        summaries: dict[str, dict[str, Any]] = {}
        for summary in self.engine.images():
            image_id = str(summary["Id"])
            summaries[image_id] = summary
            for ref in [*(summary.get("RepoTags") or []), *(summary.get("RepoDigests") or [])]:
                if not ref.startswith("<none>"):
                    ids[ref] = image_id
        return _Images(ids, summaries)

    def _plan(self, loc: Location, images: _Images) -> Plan | FieldError:
        """The folder's plan, recomputed only when its files or its base image changed."""
        key = _fingerprint(loc.folder)
        cached = self._plans.get(loc.folder)
        if cached is not None and cached[0] == key:
            entry = cached[1]
            if isinstance(entry, FieldError) or entry.base is None:
                return entry
            if images.ids.get(entry.base.image, entry.base.id) == entry.base.id and entry.hash:
                return entry
        fresh: Plan | FieldError
        try:
            fresh = self.images.plan(loc.folder, resolve_base=False, base_ids=images.ids)
        except FieldError as exc:
            fresh = exc
        self._plans[loc.folder] = (key, fresh)
        return fresh

    def _describe(self, loc: Location, images: _Images) -> Environment:
        op = self.operations.latest(loc.name)
        common: dict[str, Any] = {
            "name": loc.name,
            "path": self._display_path(loc.folder),
            "readonly": loc.readonly,
            "kernel_name": kernelspecs.kernel_name(loc.name),
            "operation": op.to_json() if op else None,
        }
        plan = self._plan(loc, images)
        if isinstance(plan, FieldError):
            return Environment(**common, kind=_kind(loc.folder), state="failed", error=str(plan))
        spec = plan.spec
        current = images.image(self.images.image_ref(plan)) if plan.hash else None
        # Out of date: the last build's image still runs the kernel, so show it.
        image = current or images.image(self.images.latest_ref(loc.name))
        found_lock = self.images.lock_of(image) if image else None
        if found_lock is None and image is not None:
            found_lock = _read_lock(loc.folder)
        return Environment(
            **common,
            kind=spec.kind,
            state=self._state(loc, images, current is not None, op),
            spec=spec,
            spec_hash=plan.hash or None,
            image=image,
            lock=found_lock,
            registry=self.images.registry_ref(plan) if plan.hash else None,
        )

    def _state(self, loc: Location, images: _Images, built: bool, op: Operation | None) -> EnvState:
        if op is not None and op.active and op.kind in ("build", "pull", "restore"):
            return "building"
        if built:
            return "built"
        if op is not None and op.kind == "build" and op.state == "failed":
            return "failed"
        if images.in_repository(self.images.repository(loc.name)):
            return "outdated"
        return "not_built"

    def _display_path(self, folder: Path) -> str:
        try:
            return str(folder.relative_to(self.root_dir))
        except ValueError:
            return str(folder)

    def _describe_isolated(self, loc: Location, images: _Images) -> Environment:
        """Describe one environment; one that cannot be described is shown with its error."""
        try:
            return self._describe(loc, images)
        except EngineUnavailable:
            raise
        except Exception as exc:
            self.log.exception("jupyter-docker-env: cannot describe %s", loc.folder)
            return Environment(
                name=loc.name,
                path=self._display_path(loc.folder),
                readonly=loc.readonly,
                kernel_name=kernelspecs.kernel_name(loc.name),
                kind=_kind(loc.folder),
                state="failed",
                error=f"this environment cannot be read: {type(exc).__name__}: {exc}",
            )

    def _all(self) -> list[Environment]:
        images = self._image_index()
        return [self._describe_isolated(loc, images) for loc in self.locations().values()]

    def _get(self, loc: Location) -> Environment:
        return self._describe_isolated(loc, self._image_index())

    async def list_all(self) -> list[Environment]:
        return await self._run(self._all)

    async def get(self, name: str) -> Environment:
        return await self._run(lambda: self._get(self.locate(name)))

    async def describe(self, loc: Location) -> Environment:
        return await self._run(self._get, loc)

    async def registry(self, name: str) -> RegistryState | None:
        """Whether the registry has the environment's current image (asks the registry)."""

        def ask() -> RegistryState | None:
            return self.images.registry_state(self.images.plan(self.locate(name).folder))

        return await self._run(ask)

    # -- changing --------------------------------------------------------------------------
    async def create(self, body: dict[str, Any]) -> Environment:
        loc = await self._run(self._create, dict(body))
        return await self.describe(loc)

    def _create(self, body: dict[str, Any]) -> Location:
        """Validate everything, then write the folder: nothing is written for a bad request."""
        from_path = body.pop("from_path", None)
        name = check_name(body.get("name"))
        content: dict[str, bytes] = {}
        if from_path is None:
            spec = parse(body, self.env_dirs[0] / name, self.settings.default_base)
            content[SPEC_FILE] = tomli_w.dumps(spec.to_toml()).encode()
        else:
            source, content[source.name] = self._workspace_file(from_path)
            spec_text = self._spec_for(source, body)
            if spec_text is not None:
                content[SPEC_FILE] = spec_text.encode()
        if name in self.locations():
            raise EnvConflict(f"an environment named {name!r} already exists", "name")
        self._require_engine()
        relative = self.env_dirs[0].relative_to(self.root_dir) / name
        try:
            folder = files.make_folder(self.root_dir, str(relative))
        except FileExistsError:
            raise EnvConflict(f"{relative} already exists", "name") from None
        try:
            for file_name, data in content.items():
                files.write_bytes(folder, file_name, data)
        except BaseException:
            files.remove_folder(folder)
            raise
        return Location(name, folder, readonly=False)

    def _spec_for(self, source: Path, body: dict[str, Any]) -> str | None:
        """A spec naming the copied file, when the request says more than the file alone."""
        key = {"requirements.txt": "requirements", "Dockerfile": None}.get(
            source.name, "environment"
        )
        extra = sorted(body.keys() - {"name"})
        if key is None:
            if extra:
                raise SpecError(extra[0], "an environment made from a Dockerfile takes only a name")
            return None
        for field in extra:
            if field not in SPEC_KEYS or field in ("requirements", "environment"):
                raise SpecError(field, f"unknown key for an environment made from {source.name}")
        # Validated against the source's folder: the file is the same once copied.
        spec = parse({key: source.name, **body}, source.parent, self.settings.default_base)
        return tomli_w.dumps(spec.to_toml()) if extra else None

    def _workspace_file(self, path: Any) -> tuple[Path, bytes]:
        """The real path and the content of a file the user named in the workspace."""
        if not isinstance(path, str) or not path:
            raise SpecError("from_path", "must be the path of a file in the workspace")
        check_text("from_path", path)
        if any(len(part.encode(errors="replace")) > files.NAME_MAX for part in path.split("/")):
            raise SpecError("from_path", f"{shown(path)} is not a valid path")
        source = Path(os.path.realpath(self.root_dir / path))
        if self.root_dir not in source.parents:
            raise SpecError("from_path", f"{shown(path)} is outside the workspace")
        if source.name not in CREATE_FROM:
            raise SpecError(
                "from_path", f"{shown(path)} must be one of: {', '.join(sorted(CREATE_FROM))}"
            )
        try:  # from the workspace: its owner, not the file's folder's, stands for the user
            return source, files.read_bytes(self.root_dir, str(source.relative_to(self.root_dir)))
        except files.FileRefused as exc:
            raise SpecError("from_path", f"{shown(path)} {exc.message}") from exc

    def _require_engine(self) -> None:
        """Raise EngineUnavailable before a change that could not be shown without the engine."""
        info = self.engine.info()
        if not info.available:
            raise EngineUnavailable(info.reason or "no Docker engine answers")

    async def update(self, name: str, body: dict[str, Any]) -> Environment:
        loc = await self._run(self._update, name, body)
        return await self.describe(loc)

    def _update(self, name: str, body: dict[str, Any]) -> Location:
        loc = self.locate(name)
        if loc.readonly:
            raise EnvReadOnly(f"{name} is provided read-only by the administrator")
        if detect_kind(loc.folder) == "dockerfile":
            raise SpecError("kind", f"{name} uses its own Dockerfile: edit that file instead")
        body = {"name": name, **body}
        if body["name"] != name:
            raise SpecError("name", "renaming an environment is not supported: create a new one")
        spec = parse(body, loc.folder, self.settings.default_base)
        self._require_engine()
        files.write_text(loc.folder, SPEC_FILE, tomli_w.dumps(spec.to_toml()))  # atomic
        return loc

    async def delete(self, name: str) -> None:
        await self._run(self._delete, name)
        await self.sync_kernelspecs()
        await self.refresh_records()

    def _delete(self, name: str) -> None:
        loc = self.locate(name)
        if loc.readonly:
            raise EnvReadOnly(f"{name} is provided read-only by the administrator")
        if self.operations.active(name):
            raise EnvConflict(f"{name} has a build, push or pull running: cancel it first")
        if _valid_name(name):  # a broken folder's name may name no image at all
            self.images.remove(name)
        files.remove_folder(loc.folder)
        self._plans.pop(loc.folder, None)

    # -- operations ------------------------------------------------------------------------
    def _start(
        self,
        loc: Location,
        kind: Any,
        work: Callable[[Operation], Any],
        listeners: list[Callable[[Operation, str], None]] | None = None,
    ) -> Operation:
        def work_then_records(op: Operation) -> Any:
            result = work(op)
            # Before the operation reads as ended: a notebook saved right after records it.
            self._load_records()
            return result

        return self.operations.start(
            loc.name, kind, work_then_records, after=self._after_operation, listeners=listeners
        )

    async def _after_operation(self, op: Operation) -> None:
        if op.kind != "push":
            await self.sync_kernelspecs()
            await self.sweep_images()

    async def sweep_images(self) -> None:
        """Remove untagged images of these environments that nothing uses any more."""
        try:
            await self._run(self.images.sweep_untagged)
        except EngineUnavailable as exc:
            self.log.warning("jupyter-docker-env: old images not swept: %s", exc)

    def build(
        self,
        loc: Location,
        options: BuildOptions,
        listeners: list[Callable[[Operation, str], None]] | None = None,
    ) -> Operation:
        """Start a build of the environment, or join the one running."""
        return self._start(loc, "build", lambda op: self._build(loc.folder, options, op), listeners)

    def _build(self, folder: Path, options: BuildOptions, op: Operation) -> BuildResult:
        """Build; for kernels on other machines, push, and pull on every Swarm node."""
        result = self.images.build(folder, options, op)
        if not self.settings.push_builds:
            return result
        if not self.settings.registry:
            raise OperationFailed(
                "built, but not pushed: c.DockerEnvApp.push_builds is on (kernels run on a "
                "Swarm, whose nodes pull images from a registry) and no registry is set: set "
                "c.DockerEnvApp.registry",
                step="push",
            )
        pushed = self.images.push(folder, op)
        swarm = self._swarm()
        if swarm is not None and swarm.prepull and pushed.digest:
            digest_ref = f"{pushed.image.rpartition(':')[0]}@{pushed.digest}"
            op.emit(f"Pulling {digest_ref} on the Swarm's nodes (c.SwarmBackend.prepull)")
            for failure in swarm.prepull_image(digest_ref, op.emit, op.check_cancelled):
                op.emit(f"WARNING: not pulled on {failure}; kernels there pull at start")
        return result

    def _swarm(self) -> SwarmBackend | None:
        """The Swarm back end the kernels run on, when they run on one."""
        config = self.settings.config
        name = DockerEnvProvisioner(config=config).backend
        backend = backend_for(name, self.engine, config=config)
        return backend if isinstance(backend, SwarmBackend) else None

    def push(
        self, loc: Location, listeners: list[Callable[[Operation, str], None]] | None = None
    ) -> Operation:
        return self._start(loc, "push", lambda op: self.images.push(loc.folder, op), listeners)

    def pull(
        self, loc: Location, listeners: list[Callable[[Operation, str], None]] | None = None
    ) -> Operation:
        return self._start(loc, "pull", lambda op: self.images.pull(loc.folder, op), listeners)

    def restore(
        self,
        loc: Location,
        work: Callable[[Operation], Any],
        listeners: list[Callable[[Operation, str], None]] | None = None,
    ) -> Operation:
        """Start recreating a notebook's environment in ``loc`` (``work``: notebooks.restore)."""
        return self._start(loc, "restore", work, listeners)

    def operation(self, operation_id: str) -> Operation | None:
        return self.operations.get(operation_id)

    def cancel(self, operation_id: str) -> Operation | None:
        return self.operations.cancel(operation_id)

    # -- kernel specs ----------------------------------------------------------------------
    def kernel_specs(self, extra_config: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Kernel specs for every environment that has a built image."""
        images = self._image_index()
        specs = []
        for loc in self.locations().values():
            if not _valid_name(loc.name):  # a broken folder's
                continue
            latest = images.image(self.images.latest_ref(loc.name))
            if latest is None:
                continue
            gpu = latest.labels.get(L.GPU) == "true"
            config = dict(extra_config or {})
            plan = self._plan(loc, images)
            if isinstance(plan, Plan) and plan.spec.warm is not None:
                config["warm_pool_size"] = plan.spec.warm  # the environment asks for its own
            specs.append(
                kernelspecs.kernel_json(loc.name, self.images.latest_ref(loc.name), gpu, config)
            )
        return specs

    async def sync_kernelspecs(self) -> None:
        """Write a kernel spec per built environment (and drop those of removed ones)."""
        if self.kernels_dir is None:
            return
        # Kernels must reach the same engine the images were built on.
        extra = {"docker_host": self.settings.docker_host} if self.settings.docker_host else None
        kernels_dir = self.kernels_dir

        def sync() -> None:
            kernelspecs.sync(kernels_dir, self.kernel_specs(extra))

        try:
            await self._run(sync)
        except EngineUnavailable as exc:  # the specs stay as they are until it is back
            self.log.warning("jupyter-docker-env: kernel specs not updated: %s", exc)
            return
        for hook in self.kernelspecs_synced:
            await hook()

    # -- notebooks' records ----------------------------------------------------------------
    async def refresh_records(self) -> None:
        """Describe every built environment's image for the notebooks saved on its kernel."""
        async with self._records_lock:
            await self._run(self._load_records)

    def _load_records(self) -> None:
        folders = {name: loc.folder for name, loc in self.locations().items()}
        try:
            self.notebook_records = environment_records(folders, self.engine.images(), self.images)
            self._records_loaded = True
        except EngineError as exc:
            self.log.warning("jupyter-docker-env: notebook records not refreshed: %s", exc)

    def notebook_record(self, name: str) -> NotebookEnv | None:
        """What a notebook saved on ``name``'s kernel records, from memory: never the engine.
        Records never loaded (no engine at start) load in the background, for the next save."""
        if not self._records_loaded and self._records_loading is None:
            with contextlib.suppress(RuntimeError):  # no event loop runs: outside a server
                loop = asyncio.get_running_loop()
                self._records_loading = loop.create_task(self.refresh_records())
                self._records_loading.add_done_callback(self._records_loaded_once)
        return self.notebook_records.get(name)

    def _records_loaded_once(self, _future: asyncio.Future[None]) -> None:
        self._records_loading = None


def _read_lock(folder: Path) -> Any:
    try:
        found = lock.read(folder)
    except FieldError:
        return None
    return found[0] if found else None


def _is_environment(entry: os.DirEntry[str]) -> bool:
    """A folder of the workspace that holds an environment, or a link in the place of one."""
    try:
        if entry.is_symlink():
            return True
        return entry.is_dir(follow_symlinks=False) and detect_kind(Path(entry.path)) is not None
    except (FieldError, OSError):
        return True  # listed with the reason it cannot be read


def _valid_name(name: str) -> bool:
    try:
        check_name(name)
    except SpecError:
        return False
    return True


def _kind(folder: Path) -> str:
    try:
        return detect_kind(folder) or "spec"
    except FieldError:
        return "spec"


def _fingerprint(folder: Path) -> tuple[tuple[str, int, int], ...]:
    """Sizes and mtimes of what a folder's plan depends on: its top-level files, and for a
    Dockerfile-kind folder every file of its build context."""
    entries: list[tuple[str, int, int]] = []
    try:
        if folder.is_symlink():
            return ()  # never followed
        recursive = files.is_file(folder, "Dockerfile") and not files.present(folder, SPEC_FILE)
        if recursive:
            for dirpath, _dirs, names in os.walk(folder):
                for name in names:
                    path = os.path.join(dirpath, name)
                    st = os.lstat(path)
                    entries.append((path, st.st_mtime_ns, st.st_size))
        else:
            with os.scandir(folder) as it:
                for entry in it:
                    st = entry.stat(follow_symlinks=False)
                    entries.append((entry.name, st.st_mtime_ns, st.st_size))
    except (OSError, FieldError):
        return ()
    return tuple(sorted(entries))
