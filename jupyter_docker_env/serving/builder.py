"""Environment + model + handler → a serving image; listing, pushing and removing them.

Everything here blocks (it drives the engine) and runs in an operation's worker thread or the
serving service's executor; :class:`~.manager.ServingManager` decides when.

A serving image's tag is a hash of its inputs (the environment's image, its base, the model's and
the handler's digests, and the code that makes and runs the image), so an unchanged request reuses
the image and a changed one builds only what changed. Images live in their own repository,
``PREFIX-serving/ENV``, never mistaken for an environment's.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .. import labels as L
from ..engine import Engine, EngineError, ImageNotFound
from ..environments import files
from ..environments.dockerfile import VENV
from ..environments.images import ImageBuilder, Plan, registry_problem
from ..environments.spec import conda_needed, environment_pip_deps, image_reference
from ..models import (
    FieldError,
    ImageInfo,
    Lock,
    PushResult,
    ServingBuildResult,
    ServingImage,
)
from ..operations import Operation, OperationFailed
from . import dockerfile, slim
from .dockerfile import Recipe

HERE = Path(__file__).resolve().parent
RUNTIME = HERE / "runtime"
RECIPE_FILES = ("dockerfile.py", "slim.py", "probe.py", "prune.py")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class ServingNotFound(ImageNotFound):
    """No serving image of this server has that name or id."""


@dataclass(frozen=True)
class Handler:
    """``FILE.py:FUNCTION``: a Python file and a function it defines at its top level.

    Its source is read once, through files.py: what was checked is what is hashed and copied.
    """

    file: Path
    function: str
    source: bytes

    @property
    def text(self) -> str:
        return f"{self.file.name}:{self.function}"

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.source).hexdigest()

    @classmethod
    def parse(cls, value: str, cwd: Path, root: Path | None = None) -> Handler:
        path, sep, function = value.rpartition(":")
        if not sep or not path or not function.isidentifier():
            raise FieldError(
                "handler", f"{value!r} is not FILE.py:FUNCTION (e.g. serve.py:predict)"
            )
        folder, name = _locate(path, cwd, root, "handler")
        file = folder / name
        if file.suffix != ".py":
            raise FieldError("handler", f"{path} is not a Python file")
        if not file.stem.isidentifier() or file.stem in sys.stdlib_module_names:
            raise FieldError(
                "handler", f"rename {file.name}: its name must be a module name of its own"
            )
        try:
            source = files.read_bytes(folder, name)
        except files.FileRefused as exc:
            raise _refused("handler", exc, name, path) from exc
        try:
            tree = ast.parse(source, filename=file.name)
        except SyntaxError as exc:
            raise FieldError("handler", f"{file.name}, line {exc.lineno}: {exc.msg}") from exc
        defined = set()  # the names its top level binds
        for node in tree.body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                defined.add(node.name)
            elif isinstance(node, ast.Assign):
                defined |= {t.id for t in node.targets if isinstance(t, ast.Name)}
            elif isinstance(node, ast.Import | ast.ImportFrom):
                defined |= {(a.asname or a.name).split(".")[0] for a in node.names}
        if function not in defined:
            raise FieldError("handler", f"{file.name} defines no function {function}")
        return cls(file, function, source)


@dataclass(frozen=True)
class Model:
    """A model file or folder, and what the image records of it.

    It is read through files.py, streamed (models can be large), as ``relative`` inside
    ``folder``: the workspace for REST, the folder that holds it for the CLI.
    """

    folder: Path
    relative: str  # its path inside ``folder``
    value: str  # as the request named it
    digest: str  # sha256 of the file; of its files' paths and digests for a folder
    size: int

    @property
    def path(self) -> Path:
        return self.folder / self.relative

    @property
    def name(self) -> str:
        return self.path.name

    @classmethod
    def read(cls, value: str, cwd: Path, root: Path | None = None) -> Model:
        folder, name = _locate(value, cwd, root, "model")
        if not NAME_RE.match(Path(name).name):
            raise FieldError(
                "model", f"rename {Path(name).name}: letters, digits, '.', '_' and '-' only"
            )
        return cls(folder, name, value, *_model_digest(folder, name, value))

    def copy(self, dest: Path) -> None:
        """Copy the model to ``dest``: exactly what was hashed, or an error saying it changed."""
        if _model_digest(self.folder, self.relative, self.value, dest)[0] != self.digest:
            raise OperationFailed(
                f"{self.value} changed since the build was asked for: ask again once it is written",
                step="model",
            )


@dataclass(frozen=True)
class ServingRequest:
    """What to build, checked: an environment folder, a model and a handler."""

    folder: Path
    model: Model
    handler: Handler
    tag: str | None = None
    no_cache: bool = False


class ServingBuilder:
    def __init__(self, engine: Engine, images: ImageBuilder) -> None:
        self.engine = engine
        self.images = images

    # -- names ---------------------------------------------------------------------------
    @property
    def prefix(self) -> str:
        return f"{self.images.settings.image_prefix}-serving/"

    def repository(self, env: str) -> str:
        return f"{self.prefix}{env}"

    # -- the build -------------------------------------------------------------------------
    def build(self, request: ServingRequest, op: Operation) -> ServingBuildResult:
        op.emit(f"Reading {request.folder}")
        plan = self.images.operation_plan(request.folder, op)
        env_ref, env_image, lock = self.environment_image(plan)
        base, base_id = self._base(lock)
        key = self._hash(env_image.id, base_id, request)
        ref = f"{self.repository(plan.spec.name)}:{key[:16]}"
        op.emit(f"Serving image of {plan.spec.name} ({env_ref}): {ref}")
        if not request.no_cache and self.engine.inspect_image(ref) is not None:
            op.emit("Unchanged since the last build: reusing the image, nothing to build.")
            return ServingBuildResult(self._finish(ref, plan.spec.name, request.tag, op), False)

        op.emit("Reading the environment's distributions")
        inventory = self._inventory(env_ref)
        server = inventory.dists.get(dockerfile.SERVER)
        if server is not None and _version(server.version) < dockerfile.SERVER_MIN_VERSION:
            raise OperationFailed(
                f"{plan.spec.name} has gunicorn {server.version}; serving needs 20.1 or later "
                "(or none: the serving image then brings its own)",
                step="server",
            )
        if server is None and _version(inventory.python) < (3, 10):
            raise OperationFailed(
                f"the environment's Python is {inventory.python}; serving images need 3.10 or "
                "later (pick a newer base)",
                step="server",
            )
        kept = slim.plan(
            inventory, _requested(plan), _apt_names(plan.spec.apt), [dockerfile.SERVER]
        )
        op.emit(
            f"Leaving out {len(kept.remove)} kernel-only distributions: {', '.join(kept.remove)}"
        )
        for name, parent in kept.needed_by.items():
            op.emit(f"Keeping {name}: {parent} needs it")
        if kept.apt:
            op.emit(f"Debian packages for the runtime: {' '.join(kept.apt)}")
        recipe = Recipe(
            env_image=env_ref,
            base=base,
            slim=kept,
            install_server=server is None,
            handler_file=request.handler.file.name,
            function=request.handler.function,
            model_name=request.model.name,
            env=dict(plan.spec.env),
        )
        labels = {
            **self.images.settings.extra_labels,
            L.MANAGED: "true",
            L.SERVING_ENV: plan.spec.name,
            L.SERVING_SPEC_HASH: plan.hash,
            L.SERVING_ENV_IMAGE: env_image.id,
            L.SERVING_LOCK: json.dumps(lock.to_json(), separators=(",", ":")),
            L.SERVING_REMOVED: json.dumps(list(kept.remove), separators=(",", ":")),
            L.SERVING_MODEL: recipe.model_path,
            L.SERVING_MODEL_DIGEST: request.model.digest,
            L.SERVING_MODEL_SIZE: str(request.model.size),
            L.SERVING_HANDLER: request.handler.text,
        }
        if self.images.settings.owner:
            labels[L.OWNER] = self.images.settings.owner
        image_id = self._run_build(recipe, request, labels, op)
        repo, _, tag = ref.rpartition(":")
        self.engine.tag(image_id, repo, tag)
        return ServingBuildResult(self._finish(ref, plan.spec.name, request.tag, op), True)

    def environment_image(self, plan: Plan) -> tuple[str, ImageInfo, Lock]:
        """The environment's current image and its lock; OperationFailed when there is none."""
        name = plan.spec.name
        if plan.spec.kind == "dockerfile":
            raise OperationFailed(
                f"{name} is built from its own Dockerfile, whose Python the extension does not "
                "know: serving images are made from spec, requirements.txt or environment.yml "
                "environments",
                step="environment",
            )
        if plan.spec.conda or conda_needed(plan.spec, plan.folder):
            raise OperationFailed(
                f"{name} uses conda: serving images are made from pip (and apt) environments; "
                "move its packages to pip, or serve from a pip environment",
                step="environment",
            )
        ref = self.images.image_ref(plan)
        image = self.images.find_image(ref) if plan.hash else None
        lock = self.images.lock_of(image) if image is not None else None
        if image is None or lock is None:
            raise OperationFailed(
                f"{name} is not built (or changed since its last build): build it first",
                step="environment",
            )
        return ref, image, lock

    def _base(self, lock: Lock) -> tuple[str, str]:
        """A reference to exactly the base the environment was built on, and its image id."""
        base = lock.base
        if base is None:
            raise OperationFailed("the environment's lock names no base image: build it again")
        for ref in (base.image, base.digest):
            found = self.engine.inspect_image(ref) if ref else None
            if found is not None and (not base.id or found["Id"] == base.id):
                return ref, str(found["Id"])
        raise OperationFailed(
            f"the base image {base.image} ({base.id[:19]}) that the environment was built on is "
            "no longer on this engine: pull it again, or rebuild the environment",
            step="base",
        )

    def _hash(self, env_image_id: str, base_id: str, request: ServingRequest) -> str:
        # The code that decides what the image holds: a new version of it builds anew.
        code = hashlib.sha256()
        for file in sorted([*RUNTIME.glob("*.py"), *(HERE / f for f in RECIPE_FILES)]):
            code.update(file.name.encode() + b"\0" + file.read_bytes())
        inputs = {
            "code": code.hexdigest(),
            "env_image": env_image_id,
            "base": base_id,
            "model": [request.model.name, request.model.digest],
            "handler": [request.handler.text, request.handler.digest],
        }
        return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()

    def _inventory(self, env_ref: str) -> slim.Inventory:
        source = (HERE / "probe.py").read_text()
        try:
            out = self.engine.run_output(env_ref, [f"{VENV}/bin/python", "-c", source])
            return slim.Inventory.from_json(json.loads(out))
        except (EngineError, ValueError) as exc:
            raise OperationFailed(
                f"could not read the environment's distributions from {env_ref}: {exc}",
                step="inventory",
            ) from exc

    def _run_build(
        self, recipe: Recipe, request: ServingRequest, labels: dict[str, str], op: Operation
    ) -> str:
        builder = self.engine.builder()
        buildkit = builder == "buildkit"
        op.emit(f"Building with {'BuildKit' if buildkit else 'the legacy builder'}")
        settings = self.images.settings
        with tempfile.TemporaryDirectory(prefix="docker-env-serving-") as tmp:
            context = Path(tmp) / "context"
            self._context(context, request)
            path = Path(tmp) / "Dockerfile"
            path.write_text(
                dockerfile.render(
                    recipe, cache_mounts=buildkit, labels=None if buildkit else labels
                )
            )
            events = self.engine.build(
                str(context),
                str(path),
                builder,
                labels=labels if buildkit else None,
                nocache=request.no_cache,
                buildargs={"PIP_INDEX_URL": settings.pip_index_url}
                if settings.pip_index_url
                else None,
            )
            return self.images.follow(events, op)

    def _context(self, context: Path, request: ServingRequest) -> None:
        """Only what the Dockerfile copies, readable by the image's unprivileged user."""
        stage = context / dockerfile.CTX_STAGE
        app = context / dockerfile.CTX_APP / dockerfile.PACKAGE
        for folder in (
            stage,
            app,
            context / dockerfile.CTX_HANDLER,
            context / dockerfile.CTX_MODEL,
        ):
            folder.mkdir(parents=True)
        _copy(HERE / "prune.py", stage / "prune.py")
        (stage / dockerfile.SERVER_REQUIREMENTS).write_text(dockerfile.SERVER_REQUIREMENT + "\n")
        self.images.copy_ca_bundle(stage / dockerfile.CA_NAME)
        for file in RUNTIME.glob("*.py"):
            _copy(file, app / file.name)
        handler = context / dockerfile.CTX_HANDLER / request.handler.file.name
        handler.write_bytes(request.handler.source)
        handler.chmod(0o644)
        request.model.copy(context / dockerfile.CTX_MODEL / request.model.name)

    def _finish(self, ref: str, env: str, extra_tag: str | None, op: Operation) -> ServingImage:
        image = self.engine.inspect_image(ref)
        assert image is not None
        self.engine.tag(image["Id"], self.repository(env), "latest")
        if extra_tag:
            repo, _, tag = _split(extra_tag)
            self.engine.tag(image["Id"], repo, tag)
        found = self.find(ref)
        assert found is not None
        sizes = f"{found.size / 1e6:.0f} MB"
        if found.env_image_size:
            sizes += f"; the environment's image: {found.env_image_size / 1e6:.0f} MB"
        op.emit(f"Done: {ref} ({found.id[:19]}, {sizes})")
        return found

    # -- the catalog -----------------------------------------------------------------------
    def catalog(self, env: str | None = None) -> list[ServingImage]:
        """This prefix's serving images (of one environment), newest first."""
        summaries = self.engine.images({L.MANAGED: "true"})
        sizes = {str(s["Id"]): int(s.get("Size") or 0) for s in summaries}
        rows = []
        for summary in summaries:
            labels = summary.get("Labels") or {}
            tags = [t for t in summary.get("RepoTags") or [] if t.startswith(self.prefix)]
            if L.SERVING_ENV not in labels or not tags or env not in (None, labels[L.SERVING_ENV]):
                continue
            rows.append(_serving_image(summary, labels, tags, sizes))
        return sorted(rows, key=lambda r: r.created, reverse=True)

    def find(self, ref: str) -> ServingImage | None:
        """The serving image that ``ref`` (a tag, or an image id) names, if it is one of ours."""
        data = self.engine.inspect_image(ref)
        if data is None:
            return None
        return next((row for row in self.catalog() if row.id == data["Id"]), None)

    def get(self, ref: str) -> ServingImage:
        found = self.find(ref)
        if found is None:
            raise ServingNotFound(
                f"{ref} is no serving image of this server (`jupyter docker-env list --serving` "
                "lists them)"
            )
        return found

    def remove(self, ref: str) -> ServingImage:
        """Remove the image's tags; the image goes with them unless a container still runs it."""
        found = self.get(ref)
        for tag in found.tags:
            self.engine.remove_image(tag)
        self.engine.remove_if_unused(found.id)
        return found

    # -- sharing ---------------------------------------------------------------------------
    def remotes(self, ref: str) -> list[str]:
        """Where a push of ``ref`` goes: ``ref`` itself when it names a registry; else the
        configured registry as REGISTRY/ENV-serving, by content hash and as latest (like an
        environment). OperationFailed when there is nowhere to push."""
        found = self.get(ref)
        if _names_registry(ref):
            return [ref]
        registry = self.images.settings.registry
        if not registry:
            raise OperationFailed(
                f"no registry is configured (c.DockerEnvApp.registry or --registry), and {ref} "
                "names none: set one, or tag the image for one (serve-image --tag HOST/NAME:TAG)"
            )
        if problem := registry_problem(registry):
            raise OperationFailed(f"{problem}: fix c.DockerEnvApp.registry or --registry")
        name = f"{registry.rstrip('/')}/{found.env}-serving"
        return [f"{name}:{found.image.rpartition(':')[2]}", f"{name}:latest"]

    def push(self, ref: str, op: Operation) -> PushResult:
        """Push ``ref`` to :meth:`remotes`."""
        found = self.get(ref)
        remotes = self.remotes(ref)
        pushed = []
        for remote in remotes:
            repo, _, tag = _split(remote)
            made = remote not in found.tags
            if made:
                self.engine.tag(found.id, repo, tag)
            op.emit(f"Pushing {remote}")
            try:
                self.images.transfer(self.engine.push, remote, op, step="push")
            except OperationFailed:
                if made:
                    self.engine.remove_image(remote)  # only the tag made for the push
                raise
            pushed.append(remote)
        digest = self.engine.registry_digest(pushed[0], self.images.settings.registry_auth)
        op.emit(f"Pushed {', '.join(pushed)} ({digest})")
        return PushResult(name=found.env, image=pushed[0], digest=digest, pushed=tuple(pushed))


def _serving_image(
    summary: dict[str, Any], labels: dict[str, str], tags: list[str], sizes: dict[str, int]
) -> ServingImage:
    env_image = labels.get(L.SERVING_ENV_IMAGE, "")
    try:
        removed = tuple(str(r) for r in json.loads(labels.get(L.SERVING_REMOVED) or "[]"))
    except ValueError:
        removed = ()
    hashed = [t for t in tags if not t.endswith(":latest")]
    return ServingImage(
        id=str(summary["Id"]),
        image=(hashed or tags)[0],
        tags=tuple(summary.get("RepoTags") or ()),
        env=labels[L.SERVING_ENV],
        spec_hash=labels.get(L.SERVING_SPEC_HASH, ""),
        size=int(summary.get("Size") or 0),
        created=datetime.fromtimestamp(int(summary.get("Created") or 0), UTC).isoformat(),
        env_image=env_image,
        env_image_size=sizes.get(env_image),
        model=labels.get(L.SERVING_MODEL, ""),
        model_digest=labels.get(L.SERVING_MODEL_DIGEST, ""),
        model_size=int(labels.get(L.SERVING_MODEL_SIZE) or 0),
        handler=labels.get(L.SERVING_HANDLER, ""),
        removed=removed,
    )


def check_tag(tag: str | None) -> str | None:
    if tag is not None and not image_reference(tag):
        raise FieldError(
            "tag", f"{tag!r} is not an image reference like registry.example.com/team/x:1"
        )
    return tag


def _requested(plan: Plan) -> list[str]:
    """The user's own requirement lines: the spec's pip, the requirements file, environment.yml."""
    spec = plan.spec
    lines = list(spec.pip)
    if spec.requirements:
        lines += slim.requirement_lines(files.read_text(plan.folder, spec.requirements))
    if spec.environment:
        lines += environment_pip_deps(plan.folder, spec.environment)
    return lines


def _apt_names(apt: tuple[str, ...]) -> list[str]:
    return [re.split(r"[=:]", a, maxsplit=1)[0] for a in apt]


def _locate(value: str, cwd: Path, root: Path | None, field: str) -> tuple[Path, str]:
    """Where the file or folder ``value`` (relative to ``cwd``) is, for files.py: a folder and a
    path inside it. Checked after realpath: the folders on its way are resolved, the name
    itself is never followed (a link there is refused when it is read). With ``root`` (REST) it
    must be inside the workspace, which is then the folder (its owner stands for the user);
    without (the CLI), the folder is the one that holds it.
    """
    path = cwd / value
    if path.name in ("", ".."):
        path = Path(os.path.realpath(path))
    real = Path(os.path.realpath(path.parent)) / path.name
    if not real.name:
        raise FieldError(field, f"{value} is not a file or a folder")
    if root is None:
        return real.parent, real.name
    if root not in real.parents:
        raise FieldError(field, f"{value} is outside the workspace")
    return root, real.relative_to(root).as_posix()


def _model_digest(folder: Path, name: str, value: str, dest: Path | None = None) -> tuple[str, int]:
    """The digest and size of the model file or folder ``name`` in ``folder`` (``value`` as the
    request named it), streamed, and copied to ``dest`` when given: a folder's digest is that of
    its files' paths and digests."""
    try:
        found = files.stream(folder, name, dest)
    except files.FileRefused as exc:
        raise _refused("model", exc, name, value) from exc
    if not found:
        raise FieldError("model", f"{value} is an empty folder")
    if len(found) == 1 and not found[0].path:
        return f"sha256:{found[0].digest}", found[0].size
    manifest = hashlib.sha256()
    for file in found:
        manifest.update(f"{file.path}\0{file.digest}\n".encode())
    return f"sha256:{manifest.hexdigest()}", sum(file.size for file in found)


def _refused(field: str, exc: files.FileRefused, name: str, value: str) -> FieldError:
    """A file refused by files.py, naming the request's field, and the file as the user named
    it (``value``, that is ``name`` in the folder files.py was given)."""
    if exc.field == "folder":  # the message names the folder
        return FieldError(field, exc.message)
    shown = exc.field
    if shown == name or shown.startswith(f"{name}/"):
        shown = value.rstrip("/") + shown[len(name) :]
    return FieldError(field, f"{shown} {exc.message}")


def _copy(source: Path, target: Path) -> None:
    """One of the server's own files (the runtime, the admin's CA bundle) into the context."""
    shutil.copyfile(source, target)
    os.chmod(target, 0o644)


def _split(ref: str) -> tuple[str, str, str]:
    head, sep, tail = ref.rpartition(":")
    if sep and "/" not in tail:
        return head, sep, tail
    return ref, ":", "latest"


def _names_registry(ref: str) -> bool:
    """Whether a reference names its registry (Docker's rule: a first part with '.' or ':')."""
    first, sep, _ = ref.partition("/")
    return bool(sep) and ("." in first or ":" in first or first == "localhost")


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for part in text.split(".")[:3]:
        digits = re.match(r"\d+", part)
        parts.append(int(digits[0]) if digits else 0)
    return tuple(parts)
