"""Step 3: environment folder → image, with content-hash tags, a lock and registry sharing.

Everything here blocks (it drives the engine) and runs in a job's worker thread or the CLI.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from . import dockerfile
from .engine import LABEL_MANAGED, Engine, EngineError, RegistryError, context_names, label
from .jobs import Job, JobFailed
from .spec import (
    CA_FILE,
    GENERATED_MARK,
    IMAGE_RE,
    LOCK_FILE,
    SPEC_FILE,
    EnvSpec,
    SpecError,
    check_base_allowed,
    load,
    spec_hash,
)

LABEL_ENV = label("env")
LABEL_HASH = label("spec-hash")
LABEL_LOCK = label("lock")
LABEL_GPU = label("gpu")
LABEL_OWNER = label("owner")
STEP_RE = re.compile(r"^Step (\d+)/(\d+) : (.*)$")
LOCK_SECTIONS = ("pip", "conda", "apt")


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


@dataclass(frozen=True)
class Plan:
    """What a build of a folder would produce, known before anything is built."""

    folder: Path
    spec: EnvSpec
    hash: str
    dockerfile: str | None  # None: the folder's own Dockerfile is used as is
    dockerignore: str | None

    @property
    def short_hash(self) -> str:
        return self.hash[:16]


@dataclass
class BuildOptions:
    no_cache: bool = False
    from_lock: bool = False
    pull: bool = True  # try the registry before building, when one is set


@dataclass
class ImageInfo:
    id: str
    tag: str
    size: int
    created: str
    labels: dict[str, str] = field(default_factory=dict)
    digest: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "tag": self.tag,
            "size": self.size,
            "created": self.created,
            "digest": self.digest,
        }


def read_lock(folder: Path) -> dict[str, list[str]] | None:
    path = folder / LOCK_FILE
    if not path.is_file():
        return None
    data = tomllib.loads(path.read_text())
    return {k: list(data.get(k, [])) for k in LOCK_SECTIONS}


class Builder:
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
        job: Job | None = None,
        from_lock: bool = False,
        resolve_base: bool = True,
    ) -> Plan:
        """Validate the folder and compute its content hash.

        A missing base image is pulled, unless ``resolve_base`` is False: then the hash is ""
        (unknown until the base is there).
        """
        spec = load(folder, self.settings.default_base)
        check_base_allowed(spec, list(self.settings.allowed_bases))
        if from_lock:
            lock = read_lock(folder)
            if not lock or not lock["pip"]:
                raise SpecError(LOCK_FILE, "there is no lock yet: build once without from_lock")
            spec = spec.with_pip(tuple(lock["pip"]))
        if spec.kind == "dockerfile":
            files = _context_files(folder)
            return Plan(
                folder, spec, spec_hash(spec, "", dockerfile.RENDERER_VERSION, files), None, None
            )
        existing = folder / "Dockerfile"
        if existing.is_file() and not existing.read_text(errors="replace").startswith(
            GENERATED_MARK
        ):
            raise SpecError(
                "Dockerfile",
                f"{folder} has both {SPEC_FILE} and a hand-written Dockerfile; remove one "
                "(a Dockerfile is used as is when there is no spec)",
            )
        if resolve_base:
            base_id = self._base_id(spec, job)
        else:
            found = self.engine.inspect_image(spec.base or "")
            base_id = str(found["Id"]) if found else ""
        files = {f: (folder / f).read_bytes() for f in dockerfile.input_files(spec)}
        return Plan(
            folder,
            spec,
            spec_hash(spec, base_id, dockerfile.RENDERER_VERSION, files) if base_id else "",
            dockerfile.render(spec, folder),
            dockerfile.dockerignore(spec),
        )

    def _job_plan(self, folder: Path, job: Job, from_lock: bool = False) -> Plan:
        """plan() for a job: a spec error fails the job, naming the field."""
        try:
            return self.plan(folder, job, from_lock=from_lock)
        except SpecError as exc:
            raise JobFailed(str(exc), step=f"spec field {exc.field}") from exc

    def _base_id(self, spec: EnvSpec, job: Job | None) -> str:
        assert spec.base is not None
        found = self.engine.inspect_image(spec.base)
        if found is None:
            if job:
                job.emit(f"Pulling base image {spec.base}")
            try:
                for msg in self.engine.pull(spec.base):
                    if job:
                        job.check_cancelled()
                        _log_pull(job, msg)
            except (RegistryError, EngineError) as exc:
                raise SpecError(
                    "base",
                    f"base image {spec.base!r} is neither on this Docker engine nor pullable: "
                    f"{exc}",
                ) from exc
            found = self.engine.inspect_image(spec.base)
            if found is None:
                raise SpecError("base", f"base image {spec.base!r} could not be found")
        return str(found["Id"])

    # -- images ----------------------------------------------------------------------------
    def find_image(self, ref: str) -> ImageInfo | None:
        data = self.engine.inspect_image(ref)
        if data is None:
            return None
        labels = (data.get("Config") or {}).get("Labels") or {}
        digests = data.get("RepoDigests") or []
        return ImageInfo(
            id=data["Id"],
            tag=ref,
            size=int(data.get("Size", 0)),
            created=data.get("Created", ""),
            labels=labels,
            digest=digests[0].split("@", 1)[1] if digests else None,
        )

    def env_images(self, name: str | None = None) -> list[dict[str, Any]]:
        """This builder's images (of one environment, or all), by label and image prefix.

        The prefix matters on a shared engine: other users' (or tests') images of an
        environment with the same name carry the same labels.
        """
        labels: dict[str, str | None] = {LABEL_MANAGED: "true", LABEL_ENV: name}
        prefix = f"{self.settings.image_prefix}/"
        return [
            image
            for image in self.engine.images(labels)
            if any(tag.startswith(prefix) for tag in image.get("RepoTags") or [])
        ]

    def lock_of(self, image: ImageInfo) -> dict[str, list[str]] | None:
        raw = image.labels.get(LABEL_LOCK)
        return json.loads(raw) if raw else None

    # -- the build -------------------------------------------------------------------------
    def build(self, folder: Path, options: BuildOptions, job: Job) -> dict[str, Any]:
        job.emit(f"Reading {folder}")
        plan = self._job_plan(folder, job, from_lock=options.from_lock)
        ref = self.image_ref(plan)
        job.emit(f"Environment {plan.spec.name}: image {ref}")
        if plan.dockerfile is not None and os.access(plan.folder, os.W_OK):
            # Keep the folder a plain build context: the files a colleague's `docker build` needs.
            _write_if_changed(plan.folder / "Dockerfile", plan.dockerfile)
            _write_if_changed(plan.folder / ".dockerignore", plan.dockerignore or "")
        existing = None if options.no_cache else self.find_image(ref)
        if existing is not None:
            job.emit("Unchanged since the last build: reusing the image, nothing to build.")
            return self._finish(plan, existing, built=False, pulled=False, job=job)
        remote = self.registry_ref(plan)
        if remote and options.pull and not options.no_cache:
            pulled = self._try_pull(plan, remote, job)
            if pulled is not None:
                return self._finish(plan, pulled, built=False, pulled=True, job=job)
        image_id = self._run_build(plan, options, job)
        job.emit("Recording the exact versions (lock)")
        lock = self._capture_lock(image_id, plan.spec)
        labels = {LABEL_LOCK: json.dumps(lock, separators=(",", ":"))}
        self.engine.add_labels(image_id, labels, tag=ref)
        image = self.find_image(ref)
        assert image is not None
        return self._finish(plan, image, built=True, pulled=False, job=job)

    def _labels(self, plan: Plan) -> dict[str, str]:
        labels = {
            LABEL_MANAGED: "true",
            LABEL_ENV: plan.spec.name,
            LABEL_HASH: plan.hash,
            LABEL_GPU: "true" if plan.spec.gpu else "false",
            label("renderer"): dockerfile.RENDERER_VERSION,
        }
        if self.settings.owner:
            labels[LABEL_OWNER] = self.settings.owner
        return labels

    def _run_build(self, plan: Plan, options: BuildOptions, job: Job) -> str:
        with tempfile.TemporaryDirectory(prefix="docker-env-ctx-") as tmp:
            context = self._context(plan, Path(tmp))
            buildargs = (
                {"PIP_INDEX_URL": self.settings.pip_index_url}
                if self.settings.pip_index_url
                else None
            )
            stream = self.engine.build(
                str(context),
                tag=None,
                labels=self._labels(plan),
                nocache=options.no_cache,
                buildargs=buildargs,
            )
            return self._follow(stream, job)

    def _context(self, plan: Plan, tmp: Path) -> Path:
        """The build context: only what the Dockerfile copies, plus the CA bundle if set."""
        if plan.dockerfile is None:
            return plan.folder  # a user Dockerfile: the folder as is, minus its .dockerignore
        (tmp / "Dockerfile").write_text(plan.dockerfile)
        (tmp / ".dockerignore").write_text(plan.dockerignore or "")
        if plan.spec.kind == "spec":
            shutil.copy(plan.folder / SPEC_FILE, tmp / SPEC_FILE)
        for name in dockerfile.input_files(plan.spec):
            shutil.copy(plan.folder / name, tmp / name)
        ca = self.settings.ca_bundle
        if ca:
            if not Path(ca).is_file():
                raise JobFailed(
                    f"the CA bundle {ca} (c.DockerEnvApp.ca_bundle, or PIP_CERT / "
                    "REQUESTS_CA_BUNDLE / SSL_CERT_FILE) does not exist",
                    step="CA bundle",
                )
            shutil.copy(ca, tmp / CA_FILE)
        return tmp

    def _follow(self, stream: Any, job: Job) -> str:
        current = None
        image_id = None
        try:
            for msg in stream:
                if job.cancelled:
                    stream.close()
                    job.check_cancelled()
                if "stream" in msg:
                    for line in msg["stream"].splitlines():
                        if m := STEP_RE.match(line):
                            job.set_step(int(m.group(1)), int(m.group(2)))
                            current = f"Step {m.group(1)}/{m.group(2)}: {m.group(3)}"
                        if line.strip():
                            job.emit(line)
                elif "error" in msg:
                    reason = _reason(job.log)
                    raise JobFailed(
                        f"{current or 'The build'} failed: {msg['error'].strip()}"
                        + (f"\n{reason}" if reason else ""),
                        step=current,
                    )
                elif "aux" in msg and "ID" in msg["aux"]:
                    image_id = msg["aux"]["ID"]
                elif "status" in msg:
                    _log_pull(job, msg)
        except EngineError as exc:
            raise JobFailed(str(exc), step=current) from exc
        if image_id is None:
            raise JobFailed("the engine finished the build without an image id", step=current)
        return str(image_id)

    def _capture_lock(self, image_id: str, spec: EnvSpec) -> dict[str, list[str]]:
        out = self.engine.run_output(
            image_id, ["sh", "-c", dockerfile.LOCK_SCRIPT, "lock", *_apt_names(spec)]
        )
        sections: dict[str, list[str]] = {k: [] for k in LOCK_SECTIONS}
        current = "pip"
        for line in out.splitlines():
            if line.startswith("--- "):
                current = line[4:].strip()
            elif line.strip():
                sections[current].append(line.strip())
        return sections

    def _finish(
        self, plan: Plan, image: ImageInfo, built: bool, pulled: bool, job: Job | None
    ) -> dict[str, Any]:
        self.engine.tag(image.id, self.repository(plan.spec.name), "latest")
        lock = self.lock_of(image)
        if lock is not None and os.access(plan.folder, os.W_OK):
            write_lock(plan, lock)
        if job:
            job.emit(f"Done: {image.tag} ({image.id[:19]})")
        return {
            "name": plan.spec.name,
            "image": image.tag,
            "image_id": image.id,
            "spec_hash": plan.hash,
            "built": built,
            "pulled": pulled,
            "lock": lock,
        }

    # -- sharing ---------------------------------------------------------------------------
    def _remote(self, plan: Plan, tag: str | None = None) -> str:
        """The registry reference to push or pull; JobFailed when the setting is unusable."""
        remote = self.registry_ref(plan, tag)
        if remote is None:
            raise JobFailed("no registry is configured (c.DockerEnvApp.registry or --registry)")
        if problem := registry_problem(self.settings.registry):
            raise JobFailed(f"{problem}: fix c.DockerEnvApp.registry or --registry")
        return remote

    def _try_pull(self, plan: Plan, remote: str, job: Job) -> ImageInfo | None:
        if problem := registry_problem(self.settings.registry):
            job.emit(f"WARNING: {problem}; building instead")
            return None
        try:
            if self.engine.registry_digest(remote, self.settings.registry_auth) is None:
                job.emit(f"{remote} is not in the registry yet: building")
                return None
        except RegistryError as exc:
            job.emit(f"WARNING: {_registry_message(remote, exc)}; building instead")
            return None
        return self.pull(plan, job)

    def pull(self, plan: Plan, job: Job) -> ImageInfo:
        remote = self._remote(plan)
        job.emit(f"Pulling {remote}")
        self._transfer(self.engine.pull, remote, job, step="pull")
        ref = self.image_ref(plan)
        repo, _, tag = ref.rpartition(":")
        self.engine.tag(remote, repo, tag)
        image = self.find_image(ref)
        assert image is not None
        return image

    def _transfer(
        self, op: Callable[..., Iterator[dict[str, Any]]], remote: str, job: Job, step: str
    ) -> None:
        """Follow a push or pull in the job's log; registry errors fail the job in plain words."""
        try:
            for msg in op(remote, self.settings.registry_auth):
                job.check_cancelled()
                _log_pull(job, msg)
        except RegistryError as exc:
            raise JobFailed(_registry_message(remote, exc), step=step) from exc

    def pull_env(self, folder: Path, job: Job) -> dict[str, Any]:
        """Pull the environment's image from the registry instead of building it."""
        plan = self._job_plan(folder, job)
        return self._finish(plan, self.pull(plan, job), built=False, pulled=True, job=job)

    def push(self, folder: Path, job: Job) -> dict[str, Any]:
        plan = self._job_plan(folder, job)
        image = self.find_image(self.image_ref(plan))
        if image is None:
            raise JobFailed(f"{plan.spec.name} is not built yet (or changed since): build it first")
        pushed = []
        for tag in (plan.short_hash, "latest"):
            remote = self._remote(plan, tag)
            repo, _, remote_tag = remote.rpartition(":")
            self.engine.tag(image.id, repo, remote_tag)
            job.emit(f"Pushing {remote}")
            try:
                self._transfer(self.engine.push, remote, job, step="push")
            except JobFailed:
                self.engine.remove_image(remote)  # only the tag made for the push; image stays
                raise
            pushed.append(remote)
        digest = self.engine.registry_digest(pushed[0], self.settings.registry_auth)
        job.emit(f"Pushed {', '.join(pushed)} ({digest})")
        return {"name": plan.spec.name, "image": pushed[0], "digest": digest, "pushed": pushed}

    def registry_has(self, plan: Plan) -> bool | None:
        remote = self.registry_ref(plan)
        if remote is None:
            return None
        try:
            return self.engine.registry_digest(remote, self.settings.registry_auth) is not None
        except RegistryError:
            return None


def write_lock(plan: Plan, lock: dict[str, list[str]]) -> None:
    header = (
        f"# Exact versions inside image {plan.short_hash} of {plan.spec.name}, written by "
        "jupyter-docker-env.\n# Build with `--from-lock` to install exactly these versions.\n"
    )
    body = {"spec_hash": plan.hash, **{k: lock.get(k, []) for k in LOCK_SECTIONS}}
    (plan.folder / LOCK_FILE).write_text(header + tomli_w.dumps(body))


def _reason(log: list[str]) -> str:
    """The tool's own error lines (pip's ERROR:, apt's E:) from the end of a build log."""
    tail = log[-40:]
    return "\n".join(line for line in tail if line.startswith(("ERROR:", "E: ", "error:")))


def _write_if_changed(path: Path, text: str) -> None:
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)


def _apt_names(spec: EnvSpec) -> list[str]:
    return [re.split(r"[=:]", a, maxsplit=1)[0] for a in spec.apt]


def _context_files(folder: Path) -> dict[str, bytes]:
    """Every file a plain `docker build` of the folder would send (honouring .dockerignore)."""
    ignore = folder / ".dockerignore"
    patterns = ignore.read_text().splitlines() if ignore.is_file() else []
    patterns = [p.strip() for p in patterns if p.strip() and not p.startswith("#")]
    names = sorted(context_names(str(folder), patterns))
    skip = {LOCK_FILE, CA_FILE}
    return {n: (folder / n).read_bytes() for n in names if (folder / n).is_file() and n not in skip}


def _log_pull(job: Job, msg: dict[str, Any]) -> None:
    status = msg.get("status")
    if not status or msg.get("progressDetail"):
        return  # per-chunk progress would flood the log
    job.emit(f"{msg['id']}: {status}" if msg.get("id") else status)


def registry_problem(registry: str) -> str | None:
    """Why ``registry`` is no HOST[:PORT]/NAMESPACE setting, or None when it is one."""
    if IMAGE_RE.match(f"{registry.rstrip('/')}/env:tag"):
        return None
    return (
        f"the registry setting {registry!r} is not HOST[:PORT]/NAMESPACE like "
        "registry.example.com/team or 127.0.0.1:5000/team (no http://, a lowercase namespace)"
    )


def _registry_message(ref: str, exc: Exception) -> str:
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
