"""Typed records that flow between the services, the REST handlers and the CLI.

They mirror the schemas of ``openapi.yaml`` (``to_json`` gives exactly the REST shape), so a
module never hands another a loose dict, and the states live in one place.
"""

from __future__ import annotations

import keyword
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

EnvState = Literal["not_built", "building", "built", "failed", "outdated"]
OperationKind = Literal["build", "push", "pull", "restore", "serving-build", "serving-push"]
OperationState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
ACTIVE_STATES: tuple[OperationState, ...] = ("queued", "running")


class FieldError(ValueError):
    """Input that cannot be used as given; ``field`` names the key at fault (REST: a 400)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def nesting_depth(value: Any, limit: int, level: int = 0) -> int:
    """How deeply a decoded JSON value nests (counting stops past ``limit``)."""
    if level > limit:
        return level
    if isinstance(value, dict):
        return max((nesting_depth(v, limit, level + 1) for v in value.values()), default=level + 1)
    if isinstance(value, list):
        return max((nesting_depth(v, limit, level + 1) for v in value), default=level + 1)
    return level


@dataclass(frozen=True)
class EnvSpec:
    """What an environment folder asks for, normalized so that equal specs hash equal."""

    name: str
    kind: str
    base: str | None = None
    pip: tuple[str, ...] = ()
    apt: tuple[str, ...] = ()
    conda: tuple[str, ...] = ()
    gpu: bool = False
    env: dict[str, str] = field(default_factory=dict)
    requirements: str | None = None  # a file in the folder, installed with pip -r
    environment: str | None = None  # a file in the folder, installed with conda env update
    warm: int | None = None  # kernels kept started ahead of time; None: the server's default

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("pip", "apt", "conda"):
            data[key] = list(data[key])
        return data

    def to_toml(self) -> dict[str, Any]:
        """The docker-env.toml content for this spec (defaults left out)."""
        data = self.to_json()
        data.pop("kind")
        # `is`, not `in`: warm = 0 is a setting, not a default
        return {k: v for k, v in data.items() if not (v is None or v is False or v in ([], {}))}

    def pinned(self, pip: tuple[str, ...], apt: tuple[str, ...], base: str | None) -> EnvSpec:
        """This spec with exact versions in place of its ranges (``--from-lock``)."""
        return replace(self, pip=pip, apt=apt, base=base, requirements=None)


@dataclass(frozen=True)
class BuildOptions:
    no_cache: bool = False
    from_lock: bool = False
    pull: bool = True  # try the registry before building, when one is set

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> BuildOptions:
        """Options from a request body; ValueError naming the field for anything else."""
        known = {"no_cache", "from_lock", "pull"}
        for key, value in body.items():
            if key not in known:
                raise FieldError(key, f"unknown build option; known: {', '.join(sorted(known))}")
            if not isinstance(value, bool):
                raise FieldError(key, "must be true or false")
        return cls(**body)


@dataclass(frozen=True)
class BaseImage:
    """The image an environment was built on, as the lock records it."""

    image: str  # the reference the spec names
    id: str = ""
    digest: str = ""  # repository@sha256:… when the base came from (or went to) a registry

    @property
    def pinned(self) -> str:
        """The reference that names exactly this base: its digest when known."""
        return self.digest or self.image


@dataclass(frozen=True)
class Lock:
    """What is exactly inside an environment's image: every Python distribution the kernel can
    import, in three lists by where it comes from, the exact apt and conda versions, and the base
    image by digest.

    ``pip``: installed by the build's pip into the kernel's venv (what ``--from-lock`` pins);
    ``pip_system``: importable from outside the venv and added by the build (python3-numpy from
    apt, conda packages); ``pip_base``: importable and already in the base image.
    """

    pip: tuple[str, ...] = ()
    pip_system: tuple[str, ...] = ()
    pip_base: tuple[str, ...] = ()
    conda: tuple[str, ...] = ()
    apt: tuple[str, ...] = ()
    base: BaseImage | None = None

    SECTIONS = ("pip", "pip_system", "pip_base", "conda", "apt")

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {k: list(getattr(self, k)) for k in self.SECTIONS}
        data["base"] = asdict(self.base) if self.base else None
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Lock:
        base = data.get("base")
        return cls(
            **{k: tuple(str(v) for v in data.get(k) or ()) for k in cls.SECTIONS},
            base=BaseImage(**base) if isinstance(base, dict) else None,
        )

    def distributions(self) -> dict[str, str]:
        """Every importable distribution's version by normalized name."""
        out = {}
        for entry in (*self.pip_base, *self.pip_system, *self.pip):
            name, _, version = entry.partition("==")
            out[name.lower().replace("_", "-").replace(".", "-")] = version
        return out


@dataclass(frozen=True)
class ImageInfo:
    id: str
    tag: str
    size: int = 0
    created: str = ""
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


@dataclass(frozen=True)
class CatalogImage:
    """One of the extension's images on the engine (``jupyter docker-env list``)."""

    name: str
    image_id: str
    tags: tuple[str, ...]
    size: int
    created: int
    gpu: bool

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "tags": list(self.tags)}


@dataclass(frozen=True)
class BuildResult:
    """What a build, or a pull instead of one, produced."""

    name: str
    image: str
    image_id: str
    spec_hash: str
    built: bool
    pulled: bool
    lock: Lock | None
    shared_with: str | None = None  # another environment's image was reused (same spec)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["lock"] = self.lock.to_json() if self.lock else None
        return data


@dataclass(frozen=True)
class PushResult:
    name: str
    image: str
    digest: str | None
    pushed: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "pushed": list(self.pushed)}


@dataclass(frozen=True)
class RegistryState:
    """Where the environment's current image would be in the registry, and whether it is."""

    image: str
    available: bool | None  # None: the registry could not be asked
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Environment:
    """An environment as the panel and the API show it (schema ``Env``): its folder's spec
    (None when the spec is invalid: ``error`` says why) and its image's state."""

    name: str
    path: str
    kind: str
    readonly: bool
    kernel_name: str
    state: EnvState
    spec: EnvSpec | None = None
    error: str | None = None
    spec_hash: str | None = None
    image: ImageInfo | None = None
    lock: Lock | None = None
    operation: dict[str, Any] | None = None  # the running or last operation, as JSON
    registry: str | None = None  # where it would be pushed, when a registry is set

    @property
    def display_name(self) -> str:
        return f"{self.name} (Docker env)"

    def to_json(self) -> dict[str, Any]:
        spec = (self.spec or EnvSpec(name=self.name, kind=self.kind)).to_json()
        return {
            **spec,
            "name": self.name,
            "display_name": self.display_name,
            "path": self.path,
            "kind": self.kind,
            "readonly": self.readonly,
            "kernel_name": self.kernel_name,
            "state": self.state,
            "error": self.error,
            "spec_hash": self.spec_hash,
            "image": self.image.to_json() if self.image else None,
            "lock": self.lock.to_json() if self.lock else None,
            "operation": self.operation,
            "registry": self.registry,
        }


@dataclass(frozen=True)
class ServingOptions:
    """A request for a serving image (schema ``ServingBuild``): paths as the user gave them."""

    model: str  # a model file or folder
    handler: str  # FILE.py:FUNCTION
    tag: str | None = None  # another name for the image, e.g. registry.example.com/team/x:1
    no_cache: bool = False

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> ServingOptions:
        known = {"model", "handler", "tag", "no_cache"}
        for key in body:
            if key not in known:
                raise FieldError(key, f"unknown option; known: {', '.join(sorted(known))}")
        for key, what in (("model", "a model file or folder"), ("handler", "FILE.py:FUNCTION")):
            if not isinstance(body.get(key), str) or not body[key]:
                raise FieldError(key, f"required: {what} in the workspace")
        if body.get("tag") is not None and not isinstance(body["tag"], str):
            raise FieldError("tag", "must be an image reference")
        if not isinstance(body.get("no_cache", False), bool):
            raise FieldError("no_cache", "must be true or false")
        return cls(
            model=body["model"],
            handler=body["handler"],
            tag=body.get("tag") or None,
            no_cache=body.get("no_cache", False),
        )


@dataclass(frozen=True)
class ServingImage:
    """A serving image on the engine (schema ``ServingImage``), with its environment's image."""

    id: str
    image: str  # its content-hash tag
    tags: tuple[str, ...]
    env: str
    spec_hash: str
    size: int
    created: str
    env_image: str  # the environment's image id
    env_image_size: int | None  # None once that image is gone from the engine
    model: str  # the model's path inside the image
    model_digest: str
    model_size: int
    handler: str
    removed: tuple[str, ...]  # the kernel-only distributions left out, name==version

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "image": self.image,
            "tags": list(self.tags),
            "env": self.env,
            "spec_hash": self.spec_hash,
            "size": self.size,
            "created": self.created,
            "env_image": {"id": self.env_image, "size": self.env_image_size},
            "model": {"path": self.model, "digest": self.model_digest, "size": self.model_size},
            "handler": self.handler,
            "removed": list(self.removed),
        }


@dataclass(frozen=True)
class ServingBuildResult:
    """What a serving build produced (an operation's result)."""

    serving: ServingImage
    built: bool  # False: an image of the same inputs was there already
    pulled: bool = False

    @property
    def image(self) -> str:
        return self.serving.image

    def to_json(self) -> dict[str, Any]:
        return {**self.serving.to_json(), "built": self.built}


@dataclass(frozen=True)
class ServingContainer:
    """A serving image running locally (``jupyter docker-env serve``)."""

    id: str
    image: str
    url: str  # http://127.0.0.1:PORT

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class EngineStatus:
    """The Docker engine as the server sees it (``reason`` says what to do when it is down)."""

    available: bool
    host: str | None = None
    version: str | None = None
    api_version: str | None = None
    reason: str | None = None
    builder: str | None = None
    runtimes: tuple[str, ...] = ()

    @property
    def gpu_runtime(self) -> bool:
        return "nvidia" in self.runtimes


@dataclass(frozen=True)
class GpuStatus:
    available: bool
    runtimes: tuple[str, ...] = ()
    reason: str | None = None


@dataclass(frozen=True)
class WarmPool:
    """Kernels of an environment started ahead of time (schema ``WarmPool``)."""

    env: str  # the environment's name
    image: str
    size: int  # how many it keeps ready
    ready: int
    starting: int
    claims: int  # kernel starts it served
    idle_memory: int  # bytes its waiting kernels use, measured when each became ready
    idle_seconds: float  # since its last kernel start (or since it formed)
    error: str | None = None  # why it cannot fill, when it cannot


@dataclass(frozen=True)
class Status:
    version: str
    engine: EngineStatus
    gpu: GpuStatus
    allowed_bases: tuple[str, ...]
    default_base: str
    registry: str | None
    pools: tuple[WarmPool, ...] = ()

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        del data["engine"]["runtimes"]  # the GPU part says what matters of them
        data["gpu"]["runtimes"] = list(self.gpu.runtimes)
        data["allowed_bases"] = list(self.allowed_bases)
        data["pools"] = [asdict(pool) for pool in self.pools]
        return data


# -- runs ------------------------------------------------------------------------------------
RunState = Literal["queued", "running", "succeeded", "failed", "cancelled", "timed_out"]
RunKind = Literal["command", "notebook"]
RUN_ACTIVE_STATES: tuple[RunState, ...] = ("queued", "running")
#: Most attempts a run may ask for (retries + 1).
MAX_ATTEMPTS = 100


def _optional_str(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise FieldError(key, "must be a string")
    return value or None


@dataclass(frozen=True)
class RunRequest:
    """What to run, where and with what (schema ``RunCreate``).

    Paths are relative to the workspace, with ``/`` separators, as the contents API names them.
    """

    env: str
    command: tuple[str, ...] = ()
    notebook: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    output: str | None = None  # the executed notebook; default: runs/NAME-ID.ipynb beside it
    cwd: str = ""  # a command's working directory
    cpus: float | None = None
    memory: str | None = None
    gpus: str | None = None
    timeout: float | None = None  # seconds for the whole run, all attempts
    retries: int = 0
    snapshot: bool = False

    FIELDS = (
        *("env", "command", "notebook", "parameters", "output", "cwd"),
        *("cpus", "memory", "gpus", "timeout", "retries", "snapshot"),
    )

    @property
    def kind(self) -> RunKind:
        return "notebook" if self.notebook else "command"

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> RunRequest:
        """A request from a REST body; FieldError naming the key for anything unusable."""
        from .kernels.resources import Resources  # resources.py imports this module

        for key in body:
            if key not in cls.FIELDS:
                raise FieldError(key, f"unknown run option; known: {', '.join(cls.FIELDS)}")
        env = body.get("env")
        if not isinstance(env, str) or not env:
            raise FieldError("env", "name the environment to run in")
        command = body.get("command") or []
        if not isinstance(command, list) or not all(isinstance(a, str) for a in command):
            raise FieldError("command", "must be a list of strings (the program and arguments)")
        notebook = _optional_str(body, "notebook")
        if not command and not notebook:
            raise FieldError("command", "give a command or a notebook to run")
        if command and notebook:
            raise FieldError("notebook", "give a command or a notebook, not both")
        if notebook and not notebook.endswith(".ipynb"):
            raise FieldError("notebook", f"{notebook} is not a notebook (.ipynb)")
        parameters = body.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise FieldError("parameters", "must be an object of names and values")
        for name in parameters:
            if not name.isidentifier() or keyword.iskeyword(name):
                raise FieldError("parameters", f"{name!r} is not a valid variable name")
        if parameters and not notebook:
            raise FieldError("parameters", "parameters are for notebook runs")
        output = _optional_str(body, "output")
        if output and not notebook:
            raise FieldError("output", "an output notebook is for notebook runs")
        if output and not output.endswith(".ipynb"):
            raise FieldError("output", f"{output} must end with .ipynb")
        timeout = body.get("timeout")
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0
        ):
            raise FieldError("timeout", "must be a positive number of seconds")
        retries = body.get("retries", 0)
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise FieldError("retries", "must be a whole number, 0 or more")
        if retries + 1 > MAX_ATTEMPTS:
            raise FieldError("retries", f"at most {MAX_ATTEMPTS - 1} retries")
        snapshot = body.get("snapshot", False)
        if not isinstance(snapshot, bool):
            raise FieldError("snapshot", "must be true or false")
        resources = Resources.from_json(body)
        return cls(
            env=env,
            command=tuple(command),
            notebook=notebook,
            parameters=dict(parameters),
            output=output,
            cwd=_optional_str(body, "cwd") or "",
            cpus=resources.cpus,
            memory=resources.memory,
            gpus=resources.gpus,
            timeout=float(timeout) if timeout is not None else None,
            retries=retries,
            snapshot=snapshot,
        )

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "command": list(self.command)}


@dataclass(frozen=True)
class Run:
    """A training run: one detached container executing a command or a notebook (schema
    ``Run``). Kept as ``run.json`` in the run's folder; ``to_json`` is the REST shape."""

    id: str
    request: RunRequest
    state: RunState
    created: float
    user: str = ""
    env_folder: str = ""  # the environment's folder (the CLI may name one outside env_dirs)
    workspace: str = ""  # the host folder the paths are relative to
    working_dir: str = ""  # absolute, inside the container (and on the host)
    output: str | None = None  # the executed notebook, relative to the workspace
    log: str = ""  # the log file, relative to the workspace
    attempt: int = 0
    exit_code: int | None = None
    oom_killed: bool = False
    reason: str | None = None  # why it failed, timed out or was cancelled
    started: float | None = None
    finished: float | None = None
    image: str | None = None
    image_id: str | None = None
    spec_hash: str | None = None
    container_id: str | None = None
    #: "cancel" or "timeout" once someone decided to stop it (the container's end says how).
    stop: str | None = None
    #: host and pid of the process preparing a queued run (another finds it dead and adopts it).
    driver: str | None = None

    @property
    def active(self) -> bool:
        return self.state in RUN_ACTIVE_STATES

    @property
    def duration(self) -> float | None:
        if self.started is None:
            return None
        return round((self.finished or time.time()) - self.started, 3)

    def to_json(self) -> dict[str, Any]:
        r = self.request
        return {
            "id": self.id,
            "env": r.env,
            "kind": r.kind,
            "command": list(r.command),
            "notebook": r.notebook,
            "parameters": r.parameters,
            "cwd": r.cwd,
            "cpus": r.cpus,
            "memory": r.memory,
            "gpus": r.gpus,
            "timeout": r.timeout,
            "retries": r.retries,
            "snapshot": r.snapshot,
            "state": self.state,
            "attempt": self.attempt,
            "exit_code": self.exit_code,
            "oom_killed": self.oom_killed,
            "reason": self.reason,
            "created": self.created,
            "started": self.started,
            "finished": self.finished,
            "duration": self.duration,
            "user": self.user,
            "output": self.output,
            "log": self.log,
            "image": self.image,
            "image_id": self.image_id,
            "spec_hash": self.spec_hash,
            "container_id": self.container_id,
        }

    def to_record(self) -> dict[str, Any]:
        """Everything, as run.json holds it."""
        data = asdict(self)
        data["request"] = self.request.to_json()
        return data

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> Run:
        request = RunRequest(**{**data["request"], "command": tuple(data["request"]["command"])})
        known = {f for f in cls.__dataclass_fields__ if f != "request"}
        return cls(request=request, **{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class RunLog:
    """Log lines of a run from an offset (schema ``RunLog``)."""

    id: str
    state: RunState
    lines: tuple[str, ...]
    offset: int  # pass it back to read on

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "state": self.state,
            "log": list(self.lines),
            "log_offset": self.offset,
        }


# -- notebooks that carry their environment (notebooks/) ---------------------------------------
NotebookEnvState = Literal["none", "same", "different", "missing"]


@dataclass(frozen=True)
class Difference:
    """One thing that differs between a notebook's recorded environment and the one here: a
    package's version, the base image, a spec key or line. ``notebook``/``here`` None: it is not
    there; "": it is there without a version."""

    section: str  # "python", "apt", "conda", "base", "spec" or a file of the spec
    name: str
    notebook: str | None
    here: str | None

    def words(self) -> str:
        if self.here is None:
            return f"{_named(self.name, self.notebook)} only in the notebook's environment"
        if self.notebook is None:
            return f"{_named(self.name, self.here)} only here"
        return f"{self.name}: {self.notebook} in the notebook's environment, {self.here} here"

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "words": self.words()}


def _named(name: str, version: str | None) -> str:
    return f"{name} {version}" if version else name


@dataclass(frozen=True)
class RestorePlan:
    """What recreating a notebook's environment would do, shown before the user confirms."""

    name: str  # the environment it would create (or complete, when it has the same spec)
    kernel_name: str
    kind: str
    base: str | None
    base_digest: str | None
    pip: tuple[str, ...]
    apt: tuple[str, ...]
    conda: tuple[str, ...]
    files: dict[str, str]
    source: str | None  # the registry image, by digest, that it would try to pull first
    allowed: bool
    refusal: str | None = None  # why it may not, in words, when it may not
    field: str | None = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("pip", "apt", "conda"):
            data[key] = list(data[key])
        return data


@dataclass(frozen=True)
class EnvRef:
    """An environment here, as a comparison names it (and its kernel, to switch to)."""

    name: str
    kernel_name: str
    state: EnvState | None = None
    spec_hash: str | None = None  # what its kernel runs


@dataclass(frozen=True)
class NotebookEnvComparison:
    """A notebook's recorded environment (metadata.docker_env) against this workspace."""

    path: str
    state: NotebookEnvState
    message: str
    env: str | None = None
    kernel_name: str | None = None
    spec_hash: str | None = None
    image_id: str | None = None
    registry_image: str | None = None
    current: EnvRef | None = None  # the environment of that name here
    match: EnvRef | None = None  # another environment here that is the recorded one
    differences: tuple[Difference, ...] = ()
    restore: RestorePlan | None = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["differences"] = [d.to_json() for d in self.differences]
        data["restore"] = self.restore.to_json() if self.restore else None
        return data
