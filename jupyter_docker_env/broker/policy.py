"""The launch broker's decisions, as pure functions: nothing here touches Docker or the hub.

A request says what a hub user wants — build this environment; run a kernel or a training run of
this image with these resources — never how Docker should do it. The functions here check a
request body against the broker's configuration (:class:`Policy`) and the caller's identity
(:class:`Identity`), and either return what to do (:class:`ContainerIntent`, :class:`BuildIntent`)
or raise :class:`Refused` saying why, in the user's terms. Every body is validated strictly: a key
the broker does not know is refused, and the keys of raw Docker bodies (``privileged``, mounts,
``uid``, capabilities, devices) are refused with the reason.

The container the broker finally creates (:func:`container_request`) takes its user from the
broker's own mapping of the hub user, its workspace from the broker's template, its network from
the user's name and its limits from the user's and groups' quotas; the client supplies none of
them. tests/test_broker_policy.py fuzzes these functions with thousands of generated bodies.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import posixpath
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal

from .. import labels as L
from ..containers import ContainerFile, ContainerRequest
from ..environments.spec import ENV_KEY_RE, NAME_MAX, NAME_RE, image_reference, repository_of
from ..kernels.resources import human_size, parse_cpus, parse_memory
from ..models import BuildOptions, EnvSpec, FieldError

#: Highest uid or gid the broker hands out (Linux ids are 32-bit; 2**32-1 means "none").
MAX_ID = 2**31 - 1
Role = Literal["kernel", "run"]
ROLES: tuple[Role, ...] = ("kernel", "run")


class Refused(Exception):
    """A request the broker will not carry out.

    ``status``: 400 (the body is malformed), 403 (policy says no), 404 (not yours, or not there),
    409 (not possible now), 429 (a concurrency cap). ``field`` names the key at fault.
    """

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field


class ConfigError(ValueError):
    """The broker's own configuration is unusable; the message names the setting."""


def bad(field: str, message: str) -> Refused:
    return Refused(400, f"{field}: {message}", field)


def denied(message: str, field: str | None = None) -> Refused:
    return Refused(403, message, field)


# -- who is asking ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Identity:
    """A hub user as the hub describes them (never as the client does)."""

    name: str
    admin: bool = False
    groups: tuple[str, ...] = ()


_SAFE = set(string.ascii_lowercase + string.digits)


def user_key(name: str) -> str:
    """The hub user's name as DockerSpawner escapes it for container and volume names
    (``{username}`` in its templates): lowercase letters and digits kept, anything else as
    ``-XX`` (hex of each UTF-8 byte), so distinct names never collide."""
    return "".join(
        c if c in _SAFE else "".join(f"-{b:X}" for b in c.encode()) for c in name
    ).lower()


# -- limits ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Limits:
    """What one hub user may use at once (see c.DockerEnvBroker.limits)."""

    cpus: float = 2.0  # per container
    memory: int = 4 * 1024**3  # bytes per container
    gpus: int = 0  # per container
    pids: int = 1024  # processes and threads per container
    kernels: int = 4  # running at once
    runs: int = 2  # running at once
    builds: int = 1  # running at once
    images: int = 20  # environment images kept
    disk: int = 20 * 1024**3  # bytes the user's images add to their bases

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


_AT_LEAST_ONE = ("pids",)


def parse_limits(raw: Any, where: str) -> dict[str, Any]:
    """Validate a partial limits table from the configuration; ConfigError naming ``where``."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where} must be a dict such as {{'memory': '4g', 'kernels': 4}}")
    known = {f.name for f in fields(Limits)}
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in known:
            raise ConfigError(f"{where}: unknown limit {key!r}; known: {', '.join(sorted(known))}")
        try:
            if key == "cpus":
                out[key] = parse_cpus(value)
            elif key in ("memory", "disk"):
                out[key] = parse_memory(value)
                if out[key] <= 0:
                    raise ValueError("must be more than 0")
            else:
                if isinstance(value, bool) or not isinstance(value, int):
                    raise ValueError("must be a whole number")
                if value < (1 if key in _AT_LEAST_ONE else 0):
                    raise ValueError("is too small")
                out[key] = value
        except ValueError as exc:
            raise ConfigError(f"{where}[{key!r}] = {value!r}: {exc}") from None
    return out


# -- configuration ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Policy:
    """The broker's configuration, as the decisions need it (built from c.DockerEnvBroker.*)."""

    image_prefix: str = "jupyter-docker-env"
    shared_namespace: str = "shared"
    allowed_bases: tuple[str, ...] = ()
    default_base: str = "python:3.12-slim"
    allow_dockerfile: bool = False
    dockerfile_groups: frozenset[str] = frozenset()
    admin_groups: frozenset[str] = frozenset()
    default_user: str | int = "1000:100"
    users: Mapping[str, str | int] = field(default_factory=dict)
    limits: Limits = Limits()
    group_limits: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    user_limits: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    workspace_volume: str = "jupyterhub-user-{username}"
    workspace_path: str = "/home/jovyan/work"
    network_prefix: str = "jupyter-docker-env-user"
    max_context_bytes: int = 16 * 1024**2

    def check(self) -> None:
        """Raise ConfigError for settings no decision could use (the broker then refuses to
        start, naming the setting)."""
        for ref in (*self.allowed_bases, self.default_base):
            if not image_reference(ref.rstrip("/")):
                raise ConfigError(f"{ref!r} (allowed_bases / default_base) is no image reference")
        repo = f"{self.image_prefix}/{self.shared_namespace}/x:y"
        if not image_reference(repo):
            raise ConfigError(f"image_prefix / shared_namespace make no image name ({repo})")
        if not posixpath.isabs(self.workspace_path) or _norm(self.workspace_path) in ("/", ""):
            raise ConfigError(f"workspace_path {self.workspace_path!r} must be an absolute folder")
        parse_user_spec(self.default_user, "c.DockerEnvBroker.default_user")
        for name, value in self.users.items():
            parse_user_spec(value, f"c.DockerEnvBroker.users[{name!r}]")
        for group, raw in self.group_limits.items():
            parse_limits(raw, f"c.DockerEnvBroker.group_limits[{group!r}]")
        for user, raw in self.user_limits.items():
            parse_limits(raw, f"c.DockerEnvBroker.user_limits[{user!r}]")
        try:
            self.workspace_volume.format(username="u", raw_username="u")
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigError(f"workspace_volume {self.workspace_volume!r}: {exc}") from None

    def base_ok(self, ref: str) -> bool:
        """Whether users may build on ``ref``: the default base, or one the allow-list names."""
        return ref == self.default_base or base_allowed(ref, self.allowed_bases)

    # -- per user ----------------------------------------------------------------------------
    def is_admin(self, who: Identity) -> bool:
        return who.admin or bool(self.admin_groups.intersection(who.groups))

    def namespace(self, who: Identity) -> str:
        """The repository prefix of the user's images: PREFIX/u-KEY."""
        return f"{self.image_prefix}/u-{user_key(who.name)}"

    @property
    def shared(self) -> str:
        return f"{self.image_prefix}/{self.shared_namespace}"

    def cache_id(self, namespace: str) -> str:
        """The BuildKit cache namespace of one image namespace's builds (a build runs code as
        root with its download caches writable: one user's must not reach another's)."""
        tail = namespace.rpartition("/")[2]
        cache = f"docker-env-{tail}"
        if len(cache) <= 63:
            return cache
        return f"docker-env-{hashlib.sha256(tail.encode()).hexdigest()[:32]}"

    def network(self, who: Identity) -> str:
        return f"{self.network_prefix}-{user_key(who.name)}"

    def workspace(self, who: Identity) -> str:
        """The user's workspace: a named volume, or a host folder when absolute."""
        return self.workspace_volume.format(username=user_key(who.name), raw_username=who.name)

    def ids(self, who: Identity) -> tuple[int, int]:
        """The container's uid and gid, from the broker's mapping of the hub user."""
        if who.name in self.users:
            return parse_user_spec(self.users[who.name], f"c.DockerEnvBroker.users[{who.name!r}]")
        return parse_user_spec(self.default_user, "c.DockerEnvBroker.default_user")

    def limits_for(self, who: Identity) -> Limits:
        """Defaults, then the most generous of the user's groups for each limit, then the
        user's own limits."""
        merged: dict[str, Any] = {}
        for group in who.groups:
            if group in self.group_limits:
                for key, value in parse_limits(self.group_limits[group], group).items():
                    merged[key] = max(merged.get(key, value), value)
        if who.name in self.user_limits:
            merged.update(parse_limits(self.user_limits[who.name], who.name))
        return replace(self.limits, **merged)

    def may_build_dockerfile(self, who: Identity) -> bool:
        return self.allow_dockerfile or bool(self.dockerfile_groups.intersection(who.groups))


_ID = re.compile(r"[1-9][0-9]{0,9}")


def parse_id(value: Any, where: str) -> int:
    """A uid or gid, parsed by the broker itself: decimal digits only ("00", "+0", " 0",
    "0x1", "1e3" and other digits than ASCII ones are refused), never 0, at most MAX_ID."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ConfigError(f"{where} = {value!r}: a uid or gid is a whole number")
    text = str(value) if isinstance(value, int) else value
    if "0" in text and not text.strip("0+- \t"):
        raise ConfigError(
            f"{where} = {value!r} is root (id 0): the broker never runs containers as root"
        )
    if not _ID.fullmatch(text):
        raise ConfigError(
            f"{where} = {value!r} is not a plain number: write a uid or gid as digits only, "
            "without sign, spaces or leading zeros"
        )
    number = int(text)
    if number > MAX_ID:
        raise ConfigError(f"{where} = {value!r} is beyond the largest id ({MAX_ID})")
    return number


def parse_user_spec(value: Any, where: str) -> tuple[int, int]:
    """``uid`` or ``"uid:gid"`` (the gid is the uid when left out)."""
    if isinstance(value, str) and ":" in value:
        uid_s, _, gid_s = value.partition(":")
        return parse_id(uid_s, where), parse_id(gid_s, where)
    uid = parse_id(value, where)
    return uid, uid


def env_name(name: str) -> bool:
    """An environment's name: one path component of an image name, nothing else."""
    return NAME_RE.fullmatch(name) is not None and len(name) <= NAME_MAX


# -- images ----------------------------------------------------------------------------------
def base_allowed(ref: str, allowed: Sequence[str]) -> bool:
    """Whether ``ref`` is on the allow-list. An entry ending in ``/`` allows every image under
    that registry or path; an entry with a tag or digest allows exactly that reference; an entry
    without one allows every tag and digest of that repository."""
    if not image_reference(ref):
        return False
    for entry in allowed:
        if entry.endswith("/"):
            if ref.startswith(entry):
                return True
        elif "@" in entry or repository_of(entry) != entry:
            if ref == entry:
                return True
        elif repository_of(ref) == entry:
            return True
    return False


def check_base(ref: str, policy: Policy, where: str = "base") -> None:
    if ref == "scratch":
        return  # an empty image: nothing is pulled
    if not policy.base_ok(ref):
        allowed = ", ".join(dict.fromkeys([policy.default_base, *policy.allowed_bases]))
        raise denied(
            f"{where}: the image {ref!r} is not allowed on this hub. Allowed bases: {allowed}. "
            "Ask an administrator to add it (c.DockerEnvBroker.allowed_bases).",
            where,
        )


def in_namespace(ref: str, namespace: str) -> bool:
    return repository_of(ref).startswith(namespace + "/")


_DIRECTIVE = re.compile(r"^#\s*([A-Za-z]+)\s*=\s*(\S+)\s*$")


def dockerfile_images(text: str) -> list[tuple[str, str]]:
    """Every image a Dockerfile would pull, as (where, reference): its ``FROM`` lines (earlier
    stages excepted), ``COPY/ADD --from=``, ``RUN --mount=…,from=`` and a ``# syntax=`` frontend.

    Raises Refused for what cannot be checked without running the build: a build argument in an
    image reference, or an ``escape`` directive (it changes how lines continue).
    """
    images: list[tuple[str, str]] = []
    lines = text.splitlines()
    for line in lines:  # parser directives: only at the very top
        m = _DIRECTIVE.match(line.strip())
        if not m:
            break
        key, value = m[1].lower(), m[2]
        if key == "syntax":
            images.append(("Dockerfile # syntax", value))
        elif key == "escape":
            raise denied("Dockerfile: the escape directive is not supported by the broker")
    stages: set[str] = set()
    for number, (keyword, args) in enumerate(_instructions(lines)):
        words = args.split()
        where = f"Dockerfile instruction {number + 1} ({keyword})"
        if keyword == "FROM":
            words = [w for w in words if not w.startswith("--")]
            if not words:
                raise bad("Dockerfile", f"{where} names no image")
            ref = words[0]
            if len(words) >= 3 and words[1].lower() == "as":
                stages.add(words[2].lower())
            if ref.lower() not in stages:
                images.append((where, ref))
            continue
        sources = [w[len("--from=") :] for w in words if w.startswith("--from=")]
        sources += [
            option[len("from=") :]
            for w in words
            if w.startswith("--mount=")
            for option in w[len("--mount=") :].split(",")
            if option.startswith("from=")
        ]
        images += [(where, r) for r in sources if r.lower() not in stages and not r.isdigit()]
    for where, ref in images:
        if "$" in ref:
            raise denied(
                f"{where}: {ref!r} uses a build argument; name the image itself so the broker "
                "can check it",
                "Dockerfile",
            )
    return images


def _instructions(lines: list[str]) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per logical line: comments dropped, continuations joined."""
    out: list[tuple[str, str]] = []
    current = ""
    for raw in lines:
        line = raw.strip()
        if line.startswith("#") or (not line and current):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        if current.strip():
            keyword, _, args = current.strip().partition(" ")
            out.append((keyword.upper(), args.strip()))
        current = ""
    if current.strip():
        keyword, _, args = current.strip().partition(" ")
        out.append((keyword.upper(), args.strip()))
    return out


# -- builds ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class BuildIntent:
    name: str
    files: Mapping[str, bytes]  # the environment folder, by relative path
    options: BuildOptions
    namespace: str  # the repository prefix the image goes to


BUILD_KEYS = ("name", "files", "options", "shared")
_PART = re.compile(r"^[A-Za-z0-9_+@=,-][A-Za-z0-9._+@=,-]{0,254}$")
MAX_FILES = 2000


def decide_build(body: Any, who: Identity, policy: Policy) -> BuildIntent:
    """A build request: the environment's name, the files of its folder and build options."""
    body = _object(body, BUILD_KEYS, "build")
    name = body.get("name")
    if not isinstance(name, str) or not env_name(name):
        raise bad("name", "an environment name: lowercase letters, digits, '.', '_', '-'")
    files = _files(body.get("files"), policy.max_context_bytes)
    options_raw = body.get("options", {})
    if not isinstance(options_raw, dict):
        raise bad("options", 'must be an object such as {"no_cache": true}')
    if "pull" in options_raw:
        raise bad("options.pull", "the broker builds; it pulls no environment images")
    try:
        options = BuildOptions.from_json(options_raw)
    except FieldError as exc:
        raise bad(f"options.{exc.field}", exc.message) from None
    shared = body.get("shared", False)
    if not isinstance(shared, bool):
        raise bad("shared", "must be true or false")
    if shared and not policy.is_admin(who):
        raise denied("shared: only hub administrators build shared environments", "shared")
    return BuildIntent(name, files, options, policy.shared if shared else policy.namespace(who))


def _files(value: Any, limit: int) -> dict[str, bytes]:
    if not isinstance(value, dict) or not value:
        raise bad("files", "must be an object of the environment folder's files: {path: text}")
    if len(value) > MAX_FILES:
        raise bad("files", f"at most {MAX_FILES} files")
    out: dict[str, bytes] = {}
    total = 0
    for path, text in value.items():
        parts = path.split("/") if isinstance(path, str) else []
        if (
            not parts
            or len(parts) > 16
            or not all(_PART.fullmatch(p) or p == ".dockerignore" for p in parts)
        ):
            raise bad("files", f"{path!r} is not a relative path inside the folder")
        if not isinstance(text, str) or "\0" in text:
            raise bad(f"files.{path}", "must be the file's text")
        data = text.encode("utf-8", "surrogatepass")
        total += len(data)
        if total > limit:
            raise denied(
                f"files: the environment folder is more than {human_size(limit)}; keep data "
                "out of environment folders",
                "files",
            )
        out[path] = data
    return out


def check_environment(spec: EnvSpec, dockerfile: str | None, who: Identity, policy: Policy) -> None:
    """What a validated spec may build: its base, or a Dockerfile's every image."""
    if spec.kind == "dockerfile":
        if not policy.may_build_dockerfile(who):
            raise denied(
                "Dockerfile environments are turned off on this hub: describe the environment "
                "in docker-env.toml (base, pip, apt, conda) instead, or ask an administrator "
                "(c.DockerEnvBroker.allow_dockerfile / dockerfile_groups)",
                "Dockerfile",
            )
        for where, ref in dockerfile_images(dockerfile or ""):
            check_base(ref, policy, where)
        if re.search(r"--mount=(?:[^ ]*,)?type=cache", dockerfile or ""):
            raise denied(
                "Dockerfile: cache mounts (RUN --mount=type=cache) are not allowed on this hub: "
                "builds of different users would share them",
                "Dockerfile",
            )
        return
    check_base(spec.base or policy.default_base, policy)


# -- containers ------------------------------------------------------------------------------
CONTAINER_KEYS = (
    "role",
    "image",
    "command",
    "working_dir",
    "environment",
    "labels",
    "home",
    "ports",
    "files",
    "instance",
    "resources",
    "detached",
)
RESOURCE_KEYS = ("cpus", "memory", "gpus", "pids")
#: Keys of raw Docker bodies (and their aliases), with why the broker never takes them.
FORBIDDEN: dict[str, str] = {
    "privileged": "the broker never starts privileged containers",
    "mounts": "only your workspace is mounted, and the broker decides where",
    "volumes": "only your workspace is mounted, and the broker decides where",
    "binds": "only your workspace is mounted, and the broker decides where",
    "workspace": "your workspace is the one your hub server uses; the broker mounts it",
    "uid": "the container's user comes from the broker's mapping of your hub user",
    "gid": "the container's group comes from the broker's mapping of your hub user",
    "user": "the container's user comes from the broker's mapping of your hub user",
    "cap_add": "every capability is dropped",
    "capabilities": "every capability is dropped",
    "security_opt": "the broker sets the security options",
    "devices": "devices are not passed in; ask for GPUs with resources.gpus",
    "device_requests": "ask for GPUs with resources.gpus",
    "network": "your containers join your own network",
    "network_mode": "your containers join your own network",
    "pid_mode": "containers get their own process namespace",
    "ipc_mode": "containers get their own IPC namespace",
    "HostConfig": "the broker takes requests, not Docker API bodies",
    "host_config": "the broker takes requests, not Docker API bodies",
}
RESERVED_LABELS = frozenset(
    {L.MANAGED, L.INSTANCE, L.USER, L.ROLE, L.NETWORK, L.HUB_USER, L.SERVER, L.OWNER}
)
_LABEL_KEY = re.compile(r"^[a-z0-9][a-z0-9._/-]{0,127}$")
_INSTANCE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_PATH = re.compile(r"^/[A-Za-z0-9._/+@=,-]{1,254}$")
FILE_DIRS = ("/run/", "/tmp/")
HOME_DIRS = ("/home/", "/tmp/")
MAX_FILE_BYTES = 256 * 1024


@dataclass(frozen=True)
class ContainerIntent:
    """A validated request for a kernel's or a run's container, within the user's limits."""

    role: Role
    image: str
    command: tuple[str, ...]
    working_dir: str
    environment: Mapping[str, str]
    labels: Mapping[str, str]
    home: str
    ports: tuple[int, ...]
    files: tuple[ContainerFile, ...]
    instance: str
    nano_cpus: int
    memory: int
    gpus: int
    pids: int
    detached: bool = False  # outlives the server that started it (a run)


def decide_container(body: Any, who: Identity, policy: Policy) -> ContainerIntent:
    """A kernel's or a run's container: checked field by field, limited by the user's quota."""
    if isinstance(body, dict):
        for key in body:
            if key in FORBIDDEN:
                raise denied(f"{key}: {FORBIDDEN[key]}", key)
    body = _object(body, CONTAINER_KEYS, "container")
    role = body.get("role")
    if role not in ROLES:
        raise bad("role", f"must be one of: {', '.join(ROLES)}")
    image = _image(body.get("image"), who, policy)
    limits = policy.limits_for(who)
    cpus, memory, gpus, pids = _resources(body.get("resources", {}), limits)
    ports = _ports(body.get("ports", []), role)
    detached = body.get("detached", False)
    if not isinstance(detached, bool) or (detached and role != "run"):
        raise bad("detached", "true or false; only runs outlive their server")
    return ContainerIntent(
        role=role,
        image=image,
        command=_command(body.get("command")),
        working_dir=_working_dir(body.get("working_dir"), policy.workspace_path),
        environment=_environment(body.get("environment", {})),
        labels=_labels(body.get("labels", {})),
        home=_home(body.get("home", "/home/jupyter"), policy.workspace_path),
        ports=ports,
        files=_container_files(body.get("files", []), policy.workspace_path),
        instance=check_instance(body.get("instance")),
        nano_cpus=int(cpus * 1e9),
        memory=memory,
        gpus=gpus,
        pids=pids,
        detached=detached,
    )


def container_request(
    intent: ContainerIntent,
    who: Identity,
    policy: Policy,
    name: str,
    server: str = "",
) -> ContainerRequest:
    """The container the broker creates for an accepted intent: the user's ids, workspace and
    network, the broker's labels. (Hardening is added by the back end: containers.hardening.)"""
    uid, gid = policy.ids(who)
    labels = {**intent.labels, L.HUB_USER: who.name}
    if server:
        labels[L.SERVER] = server
    return ContainerRequest(
        role=intent.role,
        name=name,
        image=intent.image,
        command=intent.command,
        workspace=policy.workspace(who),
        workspace_mount=_norm(policy.workspace_path),
        working_dir=intent.working_dir,
        uid=uid,
        gid=gid,
        instance_id=instance_label(who, intent.instance),
        environment=dict(intent.environment),
        labels=labels,
        home=intent.home,
        nano_cpus=intent.nano_cpus,
        mem_limit=intent.memory,
        pids_limit=intent.pids,
        device_requests=(
            ({"driver": "", "count": intent.gpus, "capabilities": [["gpu"]]},)
            if intent.gpus
            else ()
        ),
        network=policy.network(who),
        ports=intent.ports,
        files=intent.files,
        detached=intent.detached,
    )


def check_labels(value: Any) -> dict[str, str]:
    """Labels to find containers by (the broker's own may be named too)."""
    if not isinstance(value, dict) or not 1 <= len(value) <= 8:
        raise bad("label", "one to eight KEY=VALUE labels")
    for key, val in value.items():
        if not _LABEL_KEY.fullmatch(key) or not isinstance(val, str) or len(val) > 1024:
            raise bad("label", f"{key!r} is not a label name (lowercase, digits, . _ / -)")
    return dict(value)


def check_container_path(value: Any) -> str:
    """An absolute path inside a container (to copy out of it)."""
    return _abs_path(value, "path")


def check_instance(value: Any) -> str:
    """A single-user server instance's id, as the client names it."""
    return _string(value, "instance", _INSTANCE, "letters, digits, . _ - (at most 64)")


def instance_label(who: Identity, instance: str) -> str:
    """The instance label of a user's containers: the client's instance id, within the user's
    own name, so one user's sweep never reaches another's containers."""
    return f"hub-{user_key(who.name)}.{instance}"


def _object(body: Any, keys: Sequence[str], what: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise Refused(400, f"a {what} request is a JSON object")
    for key in body:
        if key not in keys:
            raise bad(str(key), f"unknown key for a {what} request; known: {', '.join(keys)}")
    return body


def _string(value: Any, field: str, pattern: re.Pattern[str], what: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise bad(field, f"must be a string of {what}")
    return value


def _image(value: Any, who: Identity, policy: Policy) -> str:
    if not isinstance(value, str) or not image_reference(value) or "@" in value:
        raise bad("image", "must be an environment image reference such as NAMESPACE/ENV:TAG")
    if in_namespace(value, policy.namespace(who)) or in_namespace(value, policy.shared):
        return value
    if policy.is_admin(who) and in_namespace(value, policy.image_prefix):
        return value
    raise Refused(
        404,
        f"image: {value!r} is not one of your environments' images: build the environment "
        "first (kernels and runs use only images the broker built for you or shared ones)",
        "image",
    )


def _resources(value: Any, limits: Limits) -> tuple[float, int, int, int]:
    body = _object(value, RESOURCE_KEYS, "resources")
    cpus: float = limits.cpus
    if body.get("cpus") is not None:
        try:
            cpus = parse_cpus(body["cpus"])
        except FieldError as exc:
            raise bad("resources.cpus", exc.message) from None
        if cpus > limits.cpus:
            raise denied(
                f"resources.cpus: {cpus:g} CPUs is more than your limit of {limits.cpus:g}",
                "resources.cpus",
            )
    memory = limits.memory
    raw_memory = body.get("memory")
    if raw_memory is not None and raw_memory not in ("", 0, "0"):
        if isinstance(raw_memory, bool) or not isinstance(raw_memory, str | int):
            raise bad("resources.memory", 'a size such as "2g"')
        try:
            memory = parse_memory(raw_memory)
        except FieldError as exc:
            raise bad("resources.memory", exc.message) from None
        if memory > limits.memory:
            raise denied(
                f"resources.memory: {human_size(memory)} is more than your limit of "
                f"{human_size(limits.memory)}",
                "resources.memory",
            )
        if memory < 6 * 1024**2:
            raise bad("resources.memory", "Docker needs at least 6 MiB")
    gpus = _gpus(body.get("gpus", 0), limits)
    pids = limits.pids
    if body.get("pids") is not None:
        raw = body["pids"]
        if isinstance(raw, bool) or not isinstance(raw, int) or raw < 1:
            raise bad("resources.pids", "a positive whole number")
        if raw > limits.pids:
            raise denied(
                f"resources.pids: {raw} is more than your limit of {limits.pids}", "resources.pids"
            )
        pids = raw
    return cpus, memory, gpus, pids


def _gpus(value: Any, limits: Limits) -> int:
    if value in (None, "", "none"):
        return 0
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) < 6:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise denied(
            f"resources.gpus: {value!r}: ask for a number of GPUs (the broker picks them); "
            f"your limit is {limits.gpus}",
            "resources.gpus",
        )
    if value < 0 or value > limits.gpus:
        raise denied(
            f"resources.gpus: {value} GPUs is more than your limit of {limits.gpus}",
            "resources.gpus",
        )
    return value


def _ports(value: Any, role: Role) -> tuple[int, ...]:
    if not isinstance(value, list) or len(value) > 5:
        raise bad("ports", "a list of at most 5 port numbers")
    if value and role != "kernel":
        raise bad("ports", "only kernels have ports")
    for port in value:
        if isinstance(port, bool) or not isinstance(port, int) or not 1024 <= port <= 65535:
            raise bad("ports", "port numbers between 1024 and 65535")
    if len(set(value)) != len(value):
        raise bad("ports", "ports must differ")
    return tuple(value)


def _command(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not 1 <= len(value) <= 256:
        raise bad("command", "a list of 1 to 256 strings")
    if not all(isinstance(a, str) and "\0" not in a and len(a) <= 8192 for a in value):
        raise bad("command", "a list of strings (each at most 8192 characters)")
    return tuple(value)


def _norm(path: str) -> str:
    return posixpath.normpath(path).replace("//", "/")


def _within(path: str, root: str) -> bool:
    root = _norm(root)
    return path == root or path.startswith(root.rstrip("/") + "/")


def _abs_path(value: Any, field: str) -> str:
    if not isinstance(value, str) or not _PATH.fullmatch(value):
        raise bad(field, "an absolute path of letters, digits and . _ - / + @ = ,")
    return _norm(value)


def _working_dir(value: Any, workspace: str) -> str:
    """The working directory, inside the workspace (else the workspace itself)."""
    if value is None:
        return _norm(workspace)
    path = _abs_path(value, "working_dir")
    return path if _within(path, workspace) else _norm(workspace)


def _home(value: Any, workspace: str) -> str:
    path = _abs_path(value, "home")
    if not path.startswith(HOME_DIRS) or _within(path, workspace) or _within(workspace, path):
        raise bad("home", f"a folder under {' or '.join(HOME_DIRS)}, outside the workspace")
    return path


def _environment(value: Any) -> dict[str, str]:
    if not isinstance(value, dict) or len(value) > 256:
        raise bad("environment", "an object of at most 256 NAME: value pairs")
    for key, val in value.items():
        if not isinstance(key, str) or not ENV_KEY_RE.fullmatch(key) or len(key) > 256:
            raise bad("environment", f"{key!r} is not a variable name")
        if not isinstance(val, str) or "\0" in val or len(val) > 32768:
            raise bad(f"environment.{key}", "a string of at most 32768 characters")
    return dict(value)


def _labels(value: Any) -> dict[str, str]:
    if not isinstance(value, dict) or len(value) > 64:
        raise bad("labels", "an object of at most 64 labels")
    for key, val in value.items():
        if key in RESERVED_LABELS:
            raise denied(f"labels: {key} is set by the broker", "labels")
        if not _LABEL_KEY.fullmatch(key):
            raise bad("labels", f"{key!r} is not a label name (lowercase, digits, . _ / -)")
        if not isinstance(val, str) or "\0" in val or len(val) > 1024:
            raise bad(f"labels.{key}", "a string of at most 1024 characters")
    return dict(value)


def _container_files(value: Any, workspace: str) -> tuple[ContainerFile, ...]:
    if not isinstance(value, list) or len(value) > 8:
        raise bad("files", "a list of at most 8 files")
    out = []
    for i, item in enumerate(value):
        where = f"files[{i}]"
        body = _object(item, ("path", "data", "mode"), "file")
        path = _abs_path(body.get("path"), f"{where}.path")
        if not path.startswith(FILE_DIRS) or _within(path, workspace) or path.endswith("/"):
            raise bad(f"{where}.path", f"a file under {' or '.join(FILE_DIRS)}")
        mode = body.get("mode", 0o400)
        if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o777:
            raise bad(f"{where}.mode", "permission bits between 0 and 0o777 (no setuid)")
        data = body.get("data")
        if not isinstance(data, str) or len(data) > math.ceil(MAX_FILE_BYTES / 3) * 4:
            raise bad(f"{where}.data", f"base64 of at most {human_size(MAX_FILE_BYTES)}")
        try:
            decoded = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise bad(f"{where}.data", "not valid base64") from None
        out.append(ContainerFile(path, decoded, mode))
    if len({f.path for f in out}) != len(out):
        raise bad("files", "two files at one path")
    return tuple(out)
