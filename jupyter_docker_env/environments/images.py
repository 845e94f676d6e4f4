"""Environment folder → image: content-hash tags, builds with either builder, the lock, and
sharing through a registry.

Everything here blocks (it drives the engine) and runs in an operation's worker thread; the
:class:`~.manager.EnvironmentManager` decides when.
"""

from __future__ import annotations

import json
import re
import shlex
import tempfile
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .. import labels as L
from ..engine import Builder, Engine, EngineError, RegistryError, context_names
from ..labels import label_instruction
from ..models import (
    BaseImage,
    BuildOptions,
    BuildResult,
    CatalogImage,
    EnvSpec,
    FieldError,
    ImageInfo,
    Lock,
    PushResult,
)
from ..models import RegistryState as RegistryStateRecord
from ..operations import Operation, OperationFailed
from . import dockerfile, files, lock
from .spec import (
    CA_FILE,
    LOCK_FILE,
    SPEC_FILE,
    SpecError,
    check_base_allowed,
    image_reference,
    is_generated,
    load,
    spec_hash,
)


@dataclass(frozen=True)
class BuildSettings:
    default_base: str
    allowed_bases: tuple[str, ...] = ()
    ca_bundle: str = ""
    pip_index_url: str = ""
    image_prefix: str = "docker-env"
    registry: str = ""
    registry_auth: dict[str, str] | None = None
    owner: str = ""
    extra_labels: dict[str, str] = field(default_factory=dict)
    cache_id: str = dockerfile.DEFAULT_CACHE_ID  # BuildKit cache mounts' namespace


@dataclass(frozen=True)
class Plan:
    """What a build of a folder would produce, known before anything is built."""

    folder: Path
    spec: EnvSpec
    hash: str  # "" when the base image is not on the engine yet (unknown until pulled)
    base: BaseImage | None  # None for a Dockerfile-kind folder
    locked: Lock | None = None  # the lock that ``spec`` is pinned to (``--from-lock``)

    @property
    def short_hash(self) -> str:
        return self.hash[:16]


class ImageBuilder:
    def __init__(self, engine: Engine, settings: BuildSettings) -> None:
        self.engine = engine
        self.settings = settings

    # -- names ---------------------------------------------------------------------------
    def repository(self, name: str) -> str:
        return f"{self.settings.image_prefix}/{name}"

    def image_ref(self, plan: Plan) -> str:
        return f"{self.repository(plan.spec.name)}:{plan.short_hash}"

    def latest_ref(self, name: str) -> str:
        return f"{self.repository(name)}:latest"

    def registry_ref(self, plan: Plan, tag: str | None = None) -> str | None:
        if not self.settings.registry:
            return None
        return f"{self.settings.registry.rstrip('/')}/{plan.spec.name}:{tag or plan.short_hash}"

    # -- planning --------------------------------------------------------------------------
    def plan(
        self,
        folder: Path,
        op: Operation | None = None,
        from_lock: bool = False,
        resolve_base: bool = True,
        base_ids: dict[str, str] | None = None,
    ) -> Plan:
        """Validate the folder and compute its content hash.

        A missing base image is pulled, unless ``resolve_base`` is False: then the hash is ""
        (unknown until the base is there). ``base_ids`` maps references to image ids already
        looked up (one listing serves many environments).
        """
        spec = load(folder, self.settings.default_base)
        check_base_allowed(spec, list(self.settings.allowed_bases))
        if spec.kind == "dockerfile":
            digest = spec_hash(spec, "", dockerfile.RENDERER_VERSION, _context_hashed(folder))
            return Plan(folder, spec, digest, None)
        for generated in ("Dockerfile", ".dockerignore", LOCK_FILE):
            files.check_file(folder, generated)  # a link there is refused, never written through
        if files.is_file(folder, "Dockerfile") and not is_generated(folder):
            raise SpecError(
                "Dockerfile",
                f"{folder} has both {SPEC_FILE} and a hand-written Dockerfile; remove one "
                "(a Dockerfile is used as is when there is no spec)",
            )
        locked = None
        if from_lock:
            found = lock.read(folder)
            if found is None:
                raise SpecError(LOCK_FILE, "there is no lock yet: build once without from_lock")
            locked = found[0]
            spec = lock.pin(spec, locked)
        assert spec.base is not None
        if resolve_base:
            base_id = self._base_id(spec.base, op)
        elif base_ids is not None and spec.base in base_ids:
            base_id = base_ids[spec.base]
        else:
            base_id = self.present_base_id(spec.base)
        if locked is not None and base_id:
            lock.check_base(locked, base_id)
        inputs = {f: files.read_bytes(folder, f) for f in dockerfile.input_files(spec)}
        # A locked build renders another Dockerfile for the same spec (the lock in one step).
        renderer = dockerfile.RENDERER_VERSION + ("-locked" if locked else "")
        digest = spec_hash(spec, base_id, renderer, inputs) if base_id else ""
        return Plan(folder, spec, digest, BaseImage(image=spec.base, id=base_id), locked)

    def present_base_id(self, ref: str) -> str:
        """The id of a base image that is on the engine, "" when it is not (nothing pulled)."""
        found = self.engine.inspect_image(ref)
        return str(found["Id"]) if found else ""

    def _base_id(self, base: str, op: Operation | None) -> str:
        found = self.engine.inspect_image(base)
        if found is None:
            if op:
                op.emit(f"Pulling base image {base}")
            try:
                for msg in self.engine.pull(base):
                    if op:
                        op.check_cancelled()
                        _log_transfer(op, msg)
            except (RegistryError, EngineError) as exc:
                raise SpecError(
                    "base",
                    f"base image {base!r} is neither on this Docker engine nor pullable: {exc}",
                ) from exc
            found = self.engine.inspect_image(base)
            if found is None:
                raise SpecError("base", f"base image {base!r} could not be found")
        return str(found["Id"])

    # -- images ----------------------------------------------------------------------------
    def find_image(self, ref: str) -> ImageInfo | None:
        data = self.engine.inspect_image(ref)
        return None if data is None else image_info(data, ref)

    def images_of(self, name: str) -> list[dict[str, Any]]:
        """The engine's images tagged in the environment's repository (PREFIX/NAME)."""
        return self.engine.images(reference=self.repository(name))

    def image_with_hash(self, spec_hash_: str) -> ImageInfo | None:
        """An image of this prefix and owner built from the same content hash, for any
        environment (equal specs share one image)."""
        prefix = f"{self.settings.image_prefix}/"
        wanted: dict[str, str | None] = {L.MANAGED: "true", L.SPEC_HASH: spec_hash_}
        if self.settings.owner:
            wanted[L.OWNER] = self.settings.owner
        for summary in self.engine.images(wanted):
            tags = [t for t in summary.get("RepoTags") or [] if t.startswith(prefix)]
            if tags:
                return self.find_image(tags[0])
        return None

    def catalog(self) -> list[CatalogImage]:
        """Every image of this prefix on the engine, by environment, newest first; an image
        that environments with equal specs share is listed under each of them."""
        prefix = f"{self.settings.image_prefix}/"
        rows = []
        for summary in self.engine.images({L.MANAGED: "true"}):
            by_env: dict[str, list[str]] = {}
            for tag in summary.get("RepoTags") or []:
                if tag.startswith(prefix):
                    by_env.setdefault(tag[len(prefix) :].rpartition(":")[0], []).append(tag)
            rows += [
                CatalogImage(
                    name=name,
                    image_id=str(summary["Id"]),
                    tags=tuple(tags),
                    size=int(summary.get("Size") or 0),
                    created=int(summary.get("Created") or 0),
                    gpu=(summary.get("Labels") or {}).get(L.GPU) == "true",
                )
                for name, tags in by_env.items()
            ]
        return sorted(rows, key=lambda r: (r.name, -r.created))

    def remove(self, name: str) -> list[CatalogImage]:
        """Remove the environment's tags; an image goes with its last tag."""
        repository = self.repository(name)
        removed = [row for row in self.catalog() if row.name == name]
        for summary in self.images_of(name):
            self.engine.remove_image_tags(summary, repository)
        self.sweep_untagged(repository)
        return removed

    def sweep_untagged(self, repository: str | None = None) -> None:
        """Remove the untagged images of this prefix's environments (or of one repository)
        that no container uses any more: earlier builds that a kernel still used when a
        rebuild or a delete took their tags."""
        prefix = f"{self.settings.image_prefix}/"
        for summary in self.engine.images({L.REPOSITORY: repository}, dangling=True):
            if (summary.get("Labels") or {}).get(L.REPOSITORY, "").startswith(prefix):
                self.engine.remove_if_unused(str(summary["Id"]))

    # -- the build -------------------------------------------------------------------------
    def build(self, folder: Path, options: BuildOptions, op: Operation) -> BuildResult:
        op.emit(f"Reading {folder}")
        plan = self.operation_plan(folder, op, from_lock=options.from_lock)
        ref = self.image_ref(plan)
        op.emit(f"Environment {plan.spec.name}: image {ref}")
        if plan.spec.kind != "dockerfile" and files.writable(plan.folder):
            # Keep the folder a plain build context: the files a colleague's `docker build` needs.
            portable = dockerfile.render(plan.spec, folder, locked=plan.locked is not None)
            files.write_text(plan.folder, "Dockerfile", portable)
            files.write_text(plan.folder, ".dockerignore", dockerfile.dockerignore(plan.spec))
        if not options.no_cache:
            if (existing := self.find_image(ref)) is not None:
                op.emit("Unchanged since the last build: reusing the image, nothing to build.")
                return self._finish(plan, existing, op, built=False, pulled=False)
            if (same := self.image_with_hash(plan.hash)) is not None:
                other = same.labels.get(L.ENV, "?")
                op.emit(f"Environment {other} has the same spec: sharing its image {same.tag}")
                return self._finish(plan, same, op, built=False, pulled=False, shared_with=other)
            remote = self.registry_ref(plan)
            if remote and options.pull:
                pulled = self._try_pull(plan, remote, op)
                if pulled is not None:
                    return self._finish(plan, pulled, op, built=False, pulled=True)
        return self._build_new(plan, options, op)

    def _build_new(
        self, plan: Plan, options: BuildOptions, op: Operation, spec: EnvSpec | None = None
    ) -> BuildResult:
        """Build the plan's image (from ``spec``, a whole lock's exact versions, instead of the
        plan's, when given), record its lock and tag it."""
        ref = self.image_ref(plan)
        try:
            builder = self.engine.builder()
        except EngineError as exc:
            raise OperationFailed(str(exc), step="builder") from exc
        op.emit(f"Building with {'BuildKit' if builder == 'buildkit' else 'the legacy builder'}")
        image_id = self._run_build(plan, options, builder, op, spec)
        op.emit("Recording the exact versions (lock)")
        captured = lock.capture(self.engine, image_id, plan.spec, self._base_record(plan))
        self.engine.add_labels(image_id, {L.LOCK: lock.to_label(captured)}, tag=ref)
        self.engine.remove_if_unused(image_id)  # the unlabelled build, unless it is the parent
        image = self.find_image(ref)
        assert image is not None
        return self._finish(plan, image, op, built=True, pulled=False)

    def operation_plan(self, folder: Path, op: Operation, from_lock: bool = False) -> Plan:
        """plan() for an operation: a spec error fails it, naming the field."""
        try:
            return self.plan(folder, op, from_lock=from_lock)
        except FieldError as exc:
            raise OperationFailed(str(exc), step=f"spec field {exc.field}") from exc

    def _base_record(self, plan: Plan) -> BaseImage | None:
        if plan.base is None:
            return None
        found = lock.base_of(self.engine, plan.base.image)
        if plan.base.id and found.id != plan.base.id:
            raise OperationFailed(
                f"the base image {plan.base.image} changed during the build: build again",
                step="lock",
            )
        if plan.locked is not None and plan.locked.base is not None:
            # Built FROM the lock's digest: keep the name the spec gives the base.
            return replace(found, image=plan.locked.base.image)
        return found

    def image_labels(self, plan: Plan) -> dict[str, str]:
        labels = {
            **self.settings.extra_labels,
            L.MANAGED: "true",
            L.ENV: plan.spec.name,
            L.SPEC_HASH: plan.hash,
            L.GPU: "true" if plan.spec.gpu else "false",
            L.RENDERER: dockerfile.RENDERER_VERSION,
            L.REPOSITORY: self.repository(plan.spec.name),
        }
        if self.settings.owner:
            labels[L.OWNER] = self.settings.owner
        files = spec_files(plan.folder, plan.spec)
        if files is not None:
            labels[L.SPEC_FILES] = spec_files_label(files)
        return labels

    def _run_build(
        self,
        plan: Plan,
        options: BuildOptions,
        builder: Builder,
        op: Operation,
        spec: EnvSpec | None = None,
    ) -> str:
        """Build the plan's image; ``spec``, when given, is what the Dockerfile installs instead
        of the plan's own spec (its exact versions), under the plan's labels and hash."""
        labels = self.image_labels(plan)
        buildkit = builder == "buildkit"
        with tempfile.TemporaryDirectory(prefix="docker-env-ctx-") as tmp:
            context = Path(tmp) / "context"
            if plan.spec.kind == "dockerfile":
                # The user's Dockerfile with a copy of its context, read without following links:
                # builders would read the folder as root, and follow a link swapped in meanwhile.
                files.write_tree(_context_tree(plan.folder), context)
                text = files.read_text(plan.folder, "Dockerfile")
                if not buildkit:
                    text = f"{text.rstrip()}\n{label_instruction(labels)}"
            else:
                self._context(plan, context)
                text = dockerfile.render(
                    spec or plan.spec,
                    plan.folder,
                    cache_id=self.settings.cache_id if buildkit else None,
                    labels=None if buildkit else labels,
                    locked=plan.locked is not None or spec is not None,
                )
            path = Path(tmp) / "Dockerfile"
            path.write_text(text)
            buildargs = {}
            if self.settings.pip_index_url:
                buildargs["PIP_INDEX_URL"] = self.settings.pip_index_url
            nocache = options.no_cache
            if nocache and buildkit and plan.spec.kind != "dockerfile":
                # Run every step again, but keep the downloads in the cache mounts.
                buildargs[dockerfile.REBUILD_ARG] = uuid.uuid4().hex
                nocache = False
            events = self.engine.build(
                str(context),
                str(path),
                builder,
                labels=labels if buildkit else None,
                nocache=nocache,
                buildargs=buildargs,
            )
            return self.follow(events, op)

    def _context(self, plan: Plan, context: Path) -> None:
        """The build context: only what the Dockerfile copies, plus the CA bundle if set."""
        context.mkdir()
        (context / ".dockerignore").write_text(dockerfile.dockerignore(plan.spec))
        copied = [SPEC_FILE] if plan.spec.kind == "spec" else []
        for name in [*copied, *dockerfile.input_files(plan.spec)]:
            (context / name).write_bytes(files.read_bytes(plan.folder, name))
        self.copy_ca_bundle(context / CA_FILE)

    def copy_ca_bundle(self, dest: Path) -> None:
        """Put the configured CA bundle (the admin's, not the user's) into a build context."""
        ca = self.settings.ca_bundle
        if not ca:
            return
        if not Path(ca).is_file():
            raise OperationFailed(
                f"the CA bundle {ca} (c.DockerEnvApp.ca_bundle, or PIP_CERT / "
                "REQUESTS_CA_BUNDLE / SSL_CERT_FILE) does not exist",
                step="CA bundle",
            )
        dest.write_bytes(Path(ca).read_bytes())
        dest.chmod(0o644)

    def follow(self, events: Iterator[Any], op: Operation) -> str:
        """Log the build's events and progress; its image id, or OperationFailed naming the
        failing step and the tool's own error lines (pip's ERROR:, apt's E:)."""
        steps: dict[int, str] = {}  # "Step k/T: INSTRUCTION"
        output: dict[int, deque[str]] = {}  # the last lines of each step
        shown = 0  # the step the log shows a header of last
        current = None
        image_id = None
        try:
            for event in events:
                if op.cancelled:
                    events.close()  # type: ignore[attr-defined]
                    op.check_cancelled()
                if event.kind == "step":
                    # BuildKit may report cached steps out of order: progress never goes back
                    op.set_step(max(op.step, event.step), event.total)
                    current = steps[event.step] = f"Step {event.step}/{event.total}: {event.text}"
                    shown = event.step
                    op.emit(_header(current))
                elif event.kind == "line":
                    if event.step != shown and event.step in steps:
                        # BuildKit interleaves steps: a line is always logged under its own step
                        shown = event.step
                        op.emit(_header(steps[shown]))
                    output.setdefault(event.step, deque(maxlen=200)).append(event.text)
                    op.emit(event.text)
                elif event.kind == "error":
                    failed = steps.get(event.step, current)
                    reason = _reason(output.get(event.step, ()))
                    raise OperationFailed(
                        f"{failed or 'The build'} failed: {event.text}"
                        + (f"\n{reason}" if reason else ""),
                        step=failed,
                    )
                elif event.kind == "image":
                    image_id = event.text
        except EngineError as exc:
            raise OperationFailed(str(exc), step=current) from exc
        if image_id is None:
            raise OperationFailed("the engine finished the build without an image id", step=current)
        return str(image_id)

    def _finish(
        self,
        plan: Plan,
        image: ImageInfo,
        op: Operation | None,
        built: bool,
        pulled: bool,
        shared_with: str | None = None,
    ) -> BuildResult:
        ref = self.image_ref(plan)
        replaced = [self.engine.inspect_image(r) for r in (ref, self.latest_ref(plan.spec.name))]
        repo = self.repository(plan.spec.name)
        if image.tag != ref:
            self.engine.tag(image.id, repo, plan.short_hash)
        self.engine.tag(image.id, repo, "latest")
        for old in replaced:
            if old is not None and old["Id"] != image.id:
                self.engine.remove_if_unused(str(old["Id"]))  # a rebuild left it untagged
        found = self.lock_of(image)
        if found is not None and files.writable(plan.folder):
            lock.write(plan.folder, found, plan.hash, plan.spec.name)
        if op:
            op.emit(f"Done: {ref} ({image.id[:19]})")
        return BuildResult(
            name=plan.spec.name,
            image=ref,
            image_id=image.id,
            spec_hash=plan.hash,
            built=built,
            pulled=pulled,
            lock=found,
            shared_with=shared_with,
        )

    def lock_of(self, image: ImageInfo) -> Lock | None:
        return lock.from_label(image.labels.get(L.LOCK))

    # -- sharing ---------------------------------------------------------------------------
    def _remote(self, plan: Plan, tag: str | None = None) -> str:
        """The registry reference to push or pull; OperationFailed when the setting is unusable."""
        remote = self.registry_ref(plan, tag)
        if remote is None:
            raise OperationFailed(
                "no registry is configured (c.DockerEnvApp.registry or --registry)"
            )
        if problem := registry_problem(self.settings.registry):
            raise OperationFailed(f"{problem}: fix c.DockerEnvApp.registry or --registry")
        return remote

    def _try_pull(self, plan: Plan, remote: str, op: Operation) -> ImageInfo | None:
        if problem := registry_problem(self.settings.registry):
            op.emit(f"WARNING: {problem}; building instead")
            return None
        try:
            if self.engine.registry_digest(remote, self.settings.registry_auth) is None:
                op.emit(f"{remote} is not in the registry yet: building")
                return None
        except RegistryError as exc:
            op.emit(f"WARNING: {registry_message(remote, exc)}; building instead")
            return None
        return self._pull(plan, op)

    def _pull(self, plan: Plan, op: Operation) -> ImageInfo:
        remote = self._remote(plan)
        op.emit(f"Pulling {remote}")
        self.transfer(self.engine.pull, remote, op, step="pull")
        image = self.find_image(remote)
        assert image is not None
        return image

    def transfer(
        self,
        transfer: Callable[..., Iterator[dict[str, Any]]],
        remote: str,
        op: Operation,
        step: str,
    ) -> None:
        """Follow a push or pull in the log; registry errors fail the operation in plain words."""
        try:
            for msg in transfer(remote, self.settings.registry_auth):
                op.check_cancelled()
                _log_transfer(op, msg)
        except RegistryError as exc:
            raise OperationFailed(registry_message(remote, exc), step=step) from exc

    def pull(self, folder: Path, op: Operation) -> BuildResult:
        """Pull the environment's image from the registry instead of building it."""
        plan = self.operation_plan(folder, op)
        return self._finish(plan, self._pull(plan, op), op, built=False, pulled=True)

    def push(self, folder: Path, op: Operation) -> PushResult:
        plan = self.operation_plan(folder, op)
        image = self.find_image(self.image_ref(plan))
        if image is None:
            raise OperationFailed(
                f"{plan.spec.name} is not built yet (or changed since): build it first"
            )
        pushed = []
        for tag in (plan.short_hash, "latest"):
            remote = self._remote(plan, tag)
            repo, _, remote_tag = remote.rpartition(":")
            self.engine.tag(image.id, repo, remote_tag)
            op.emit(f"Pushing {remote}")
            try:
                self.transfer(self.engine.push, remote, op, step="push")
            except OperationFailed:
                self.engine.remove_image(remote)  # only the tag made for the push; image stays
                raise
            pushed.append(remote)
        digest = self.engine.registry_digest(pushed[0], self.settings.registry_auth)
        op.emit(f"Pushed {', '.join(pushed)} ({digest})")
        return PushResult(name=plan.spec.name, image=pushed[0], digest=digest, pushed=tuple(pushed))

    # -- recreating a recorded environment (a notebook's) -----------------------------------
    def recreate(
        self, folder: Path, locked: Lock, sources: Sequence[str], op: Operation
    ) -> BuildResult:
        """The environment in ``folder`` with exactly ``locked`` inside, as a notebook recorded it.

        An image of the folder's content hash with that lock, already here or pulled from one of
        ``sources`` (registry references by digest), or else a build of the folder's spec with
        the lock's exact versions, tagged with the spec's own content hash: the same environment
        again, not a new spec (unlike ``from_lock``).
        """
        self._recorded_base(locked, op)
        plan = self.operation_plan(folder, op)
        for image in (self.find_image(self.image_ref(plan)), self.image_with_hash(plan.hash)):
            if image is not None and self.lock_of(image) == locked:
                op.emit(f"The recorded environment is here already: {image.tag}")
                return self._finish(plan, image, op, built=False, pulled=False)
        for source in sources:
            pulled = self._pull_recorded(source, locked, op)
            if pulled is not None:
                return self._finish(plan, pulled, op, built=False, pulled=True)
        if plan.spec.kind == "dockerfile":
            op.emit("Building the recorded Dockerfile (its versions cannot be pinned)")
            return self._build_new(plan, BuildOptions(), op)
        op.emit("Building with the recorded exact versions (lock)")
        try:
            pinned = lock.pin(plan.spec, locked)
        except SpecError as exc:
            raise OperationFailed(str(exc), step=f"spec field {exc.field}") from exc
        return self._build_new(plan, BuildOptions(), op, spec=pinned)

    def _recorded_base(self, locked: Lock, op: Operation) -> None:
        """Give the base tag the recorded image when this engine has no such tag (pulled by its
        digest, which the caller checked is of that repository); warn when the tag here names
        another image."""
        base = locked.base
        if base is None:
            return
        found = self.engine.inspect_image(base.image)
        if found is not None:
            if base.id and found["Id"] != base.id:
                op.emit(
                    f"WARNING: {base.image} here is another image ({str(found['Id'])[:19]}) than "
                    f"the recorded one ({base.id[:19]}): the environment is built on the recorded "
                    "base, and its spec hash differs from the recorded one"
                )
            return
        if not base.digest:
            return  # planning pulls the tag, as for any spec
        op.emit(f"Pulling the recorded base image {base.digest}")
        try:
            for msg in self.engine.pull(base.digest):
                op.check_cancelled()
                _log_transfer(op, msg)
        except (RegistryError, EngineError) as exc:
            op.emit(f"WARNING: the recorded base cannot be pulled ({exc}): using {base.image}")
            return
        head, sep, tag = base.image.rpartition(":")
        repo, tag = (head, tag) if sep and "/" not in tag else (base.image, "latest")
        self.engine.tag(base.digest, repo, tag)

    def _pull_recorded(self, source: str, locked: Lock, op: Operation) -> ImageInfo | None:
        """Pull ``source`` when it is the recorded environment (its lock is ``locked``)."""
        op.emit(f"Pulling {source}")
        try:
            self.transfer(self.engine.pull, source, op, step="pull")
        except OperationFailed as exc:
            op.emit(f"{exc}; building instead")
            return None
        image = self.find_image(source)
        if image is None or image.labels.get(L.MANAGED) != "true" or self.lock_of(image) != locked:
            op.emit(f"{source} is not the recorded environment (another lock); building instead")
            return None
        return image

    def registry_state(self, plan: Plan) -> RegistryStateRecord | None:
        remote = self.registry_ref(plan)
        if remote is None:
            return None
        try:
            found = self.engine.registry_digest(remote, self.settings.registry_auth)
        except RegistryError as exc:
            return RegistryStateRecord(remote, None, registry_message(remote, exc))
        return RegistryStateRecord(remote, found is not None)


def image_info(data: dict[str, Any], ref: str) -> ImageInfo:
    """An ImageInfo from the engine's inspect answer."""
    digests = data.get("RepoDigests") or []
    return ImageInfo(
        id=str(data["Id"]),
        tag=ref,
        size=int(data.get("Size", 0)),
        created=str(data.get("Created", "")),
        labels=dict((data.get("Config") or {}).get("Labels") or {}),
        digest=digests[0].split("@", 1)[1] if digests else None,
    )


def _header(step: str) -> str:
    """A step's log line, as Docker's legacy builder writes it: "Step k/T : INSTRUCTION"."""
    return step.replace(": ", " : ", 1)


#: A tool's own error line (pip's ERROR:, apt's E:, the Dockerfile's own checks): at the start of
#: a line, or after a progress message ("Reading state information...") whose stdout line the
#: error, written to stderr, interrupted before its newline.
_TOOL_ERROR = re.compile(r"(?:^|\.\.\.\s*)((?:ERROR:|E: |error:|docker-env:).*)")


def _reason(lines: Iterable[str]) -> str:
    """The tools' own error lines of a failed step's output."""
    return "\n".join(m[1] for line in lines if (m := _TOOL_ERROR.search(line)))


def _context_tree(folder: Path) -> dict[str, files.Entry]:
    """Everything a plain `docker build` of the folder would send (honouring .dockerignore),
    read without following links; a link out of the folder is refused."""
    has_ignore = files.present(folder, ".dockerignore")
    ignore = files.read_text(folder, ".dockerignore") if has_ignore else ""
    patterns = [p.strip() for p in ignore.splitlines() if p.strip() and not p.startswith("#")]
    return files.read_tree(folder, context_names(str(folder), patterns))


#: The most spec text an image label (and so a notebook) carries, quoted as a Dockerfile LABEL
#: value: Dockerfile lines end at 64 KiB, and every label of a build shares one line.
SPEC_FILES_LIMIT = 32 * 1024


def spec_files(folder: Path, spec: EnvSpec) -> dict[str, str] | None:
    """The files that define ``spec``, as text: its docker-env.toml and the files it names, or a
    Dockerfile's build context. None when they are not text or too large for a label."""
    if spec.kind == "dockerfile":
        tree = _context_tree(folder)
        raw = {n: e.data for n, e in tree.items() if e.kind == "file" and n not in CONTEXT_SKIP}
    else:
        names = [SPEC_FILE] if spec.kind == "spec" else []
        raw = {n: files.read_bytes(folder, n) for n in [*names, *dockerfile.input_files(spec)]}
    try:
        text = {name: data.decode() for name, data in raw.items()}
    except UnicodeDecodeError:
        return None
    return text if len(shlex.quote(spec_files_label(text))) <= SPEC_FILES_LIMIT else None


def spec_files_label(files: dict[str, str]) -> str:
    """The spec files as one line of ASCII JSON (no newline can end a LABEL instruction)."""
    return json.dumps(files, sort_keys=True, separators=(",", ":"))


#: Files of a folder that never name its image: what the build writes, and the CA bundle.
CONTEXT_SKIP = frozenset({LOCK_FILE, CA_FILE})


def _context_hashed(folder: Path) -> dict[str, bytes]:
    """What of the build context names the image: files by content, links by target."""
    tree = _context_tree(folder)
    hashed = {n: e.data for n, e in tree.items() if e.kind == "file" and n not in CONTEXT_SKIP}
    hashed.update({f"{n}\0link": e.data for n, e in tree.items() if e.kind == "link"})
    return hashed


def _log_transfer(op: Operation, msg: dict[str, Any]) -> None:
    status = msg.get("status")
    if not status or msg.get("progressDetail"):
        return  # per-chunk progress would flood the log
    op.emit(f"{msg['id']}: {status}" if msg.get("id") else status)


def registry_problem(registry: str) -> str | None:
    """Why ``registry`` is no HOST[:PORT]/NAMESPACE setting, or None when it is one."""
    if image_reference(f"{registry.rstrip('/')}/env:tag"):
        return None
    return (
        f"the registry setting {registry!r} is not HOST[:PORT]/NAMESPACE like "
        "registry.example.com/team or 127.0.0.1:5000/team (no http://, a lowercase namespace)"
    )


def registry_message(ref: str, exc: Exception) -> str:
    text = str(exc)
    low = text.lower()
    if "no basic auth credentials" in low:
        return (
            f"the registry for {ref} needs credentials: {text}. Log in with `docker login`, "
            "or set c.DockerEnvApp.registry_username / registry_password"
        )
    if "unauthorized" in low or "authentication required" in low or "denied" in low:
        return (
            f"the registry refused the credentials for {ref}: {text}. Log in with `docker login`, "
            "or set c.DockerEnvApp.registry_username / registry_password"
        )
    if "not found" in low or "manifest unknown" in low:
        return f"{ref} is not in the registry: {text}. Push it first, or build instead"
    if "connection refused" in low or "no such host" in low or "timeout" in low:
        return f"the registry for {ref} cannot be reached: {text}. Check c.DockerEnvApp.registry"
    return f"{ref}: {text}"
