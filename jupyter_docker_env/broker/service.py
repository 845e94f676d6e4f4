"""The broker's work on the Docker engine: what :mod:`.policy` accepted, carried out, audited.

- **Builds** go through the same :class:`~..environments.images.ImageBuilder` as a single-user
  server's, with the user's namespace as image prefix (``PREFIX/u-USER/ENV:HASH``), from the
  environment folder the client sent, written to a scratch folder first. They run on the
  broker's own operation workers; a build is the user's, and only they (or an admin) follow or
  cancel it. A per-user cap on running builds, on environment images and on the disk the images
  add to their bases applies before and after each build.
- **Containers** run through the local engine back end (:class:`~..containers.local.LocalBackend`,
  in container-ip mode), so :func:`~..containers.hardening` confines them like every other
  container. Each user has one bridge network; kernels share a network sandbox on it per
  single-user server instance, and the user's running server containers (as the hub reports
  them) join that network, so a server reaches its kernels while another user's kernels, on
  another bridge, cannot.
- A **reaper** removes kernels whose single-user server container is gone, sandboxes left
  without kernels, and untagged images of earlier builds that nothing uses any more.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import stat
import tempfile
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

from .. import labels as L
from ..containers import ContainerState
from ..containers.local import LocalBackend
from ..engine import APIError, Engine, NotFound
from ..environments import lock
from ..environments.images import BuildSettings, ImageBuilder
from ..environments.spec import SpecError, image_reference, load, repository_of
from ..kernels.resources import human_size
from ..operations import Operation, OperationFailed, OperationManager
from .identity import HubUsers
from .policy import (
    ROLES,
    BuildIntent,
    Identity,
    Policy,
    Refused,
    check_environment,
    check_instance,
    container_request,
    decide_build,
    decide_container,
    env_name,
    in_namespace,
    instance_label,
    user_key,
)

#: The labels of an image a user sees (what its kernel's notebooks record among them).
IMAGE_LABELS = (L.ENV, L.SPEC_HASH, L.SPEC_FILES, L.GPU, L.LOCK, L.OWNER, L.HUB_USER)


def audit_logger() -> logging.Logger:
    return logging.getLogger("jupyter_docker_env.broker.audit")


@dataclass(frozen=True)
class ImageRow:
    """One image as a user sees it: only the tags of namespaces they may see."""

    id: str
    tags: tuple[str, ...]
    size: int
    created: int
    labels: dict[str, str]
    namespace: str

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "tags": list(self.tags),
            "size": self.size,
            "created": self.created,
            "labels": self.labels,
            "namespace": self.namespace,
        }


def _plain_folder(host_root: str, mount: str, working_dir: str) -> str:
    """``working_dir`` when each of its folders in the workspace is a real folder, else the
    workspace itself: a symlink the user planted (to /proc/self/fd/…, say) is never followed
    when the container starts. Blocking."""
    path = host_root
    for part in os.path.relpath(working_dir, mount).split("/"):
        if part in (".", ""):
            continue
        path = os.path.join(path, part)
        try:
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                return mount
        except OSError:
            return mount
    return working_dir


def added_size(row: ImageRow, sizes: dict[str, int]) -> int:
    """What an image adds to its base (the base's id is in its lock label)."""
    found = lock.from_label(row.labels.get(L.LOCK))
    base = sizes.get(found.base.id, 0) if found and found.base else 0
    return max(0, row.size - base)


class Broker:
    """Decisions carried out on one Docker engine (see the module's docstring)."""

    def __init__(
        self,
        policy: Policy,
        engine: Engine,
        hub: HubUsers,
        state_dir: Path,
        build: BuildSettings,
        build_workers: int = 2,
        network_internal: bool = False,
        log: logging.Logger | None = None,
    ) -> None:
        self.policy = policy
        self.engine = engine
        self.hub = hub
        self.state_dir = state_dir
        self.build_settings = build
        self.network_internal = network_internal
        self.log = log or logging.getLogger(__name__)
        self.audit_log = audit_logger()
        self.containers = LocalBackend(
            engine, state_dir / "docker-env-files", connect_mode="container-ip"
        )
        self.operations = OperationManager(workers=build_workers, log=self.log)
        self._owners: dict[str, tuple[str, str]] = {}  # operation id → (user, env name)
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._empty: set[str] = set()  # network sandboxes without kernels at the last reap
        self._sweeping = asyncio.Lock()  # an image sweep and a build's start exclude each other

    def close(self) -> None:
        self.operations.close()

    # -- audit -----------------------------------------------------------------------------
    def audit(
        self, who: Identity, action: str, target: str, verdict: str, reason: str = ""
    ) -> None:
        """One line per decision: who, what, on which image or container, and the verdict."""
        entry = {"user": who.name, "action": action, "image": target, "verdict": verdict}
        if reason:
            entry["reason"] = reason
        self.audit_log.info(json.dumps(entry, sort_keys=True))

    async def decided(
        self, who: Identity, action: str, target: str, decide: Callable[[], Any]
    ) -> Any:
        """Run ``decide`` (which may raise Refused) and audit its verdict."""
        try:
            result = decide()
            if asyncio.iscoroutine(result):
                result = await result
        except Refused as exc:
            self.audit(who, action, target, "refused", exc.message)
            raise
        except Exception as exc:
            self.audit(who, action, target, "failed", str(exc)[:500])
            raise
        self.audit(who, action, target, "allowed")
        return result

    def lock(self, who: Identity) -> asyncio.Lock:
        """Serializes one user's admissions (caps are counted, then the container started)."""
        return self._locks[user_key(who.name)]

    # -- who -------------------------------------------------------------------------------
    def whoami(self, who: Identity) -> dict[str, Any]:
        uid, gid = self.policy.ids(who)
        return {
            "user": who.name,
            "admin": self.policy.is_admin(who),
            "groups": list(who.groups),
            "uid": uid,
            "gid": gid,
            "namespace": self.policy.namespace(who),
            "shared_namespace": self.policy.shared,
            "network": self.policy.network(who),
            "workspace_path": self.policy.workspace_path,
            "limits": self.policy.limits_for(who).to_json(),
            "allowed_bases": list(self.policy.allowed_bases),
            "default_base": self.policy.default_base,
            "allow_dockerfile": self.policy.may_build_dockerfile(who),
        }

    async def status(self) -> dict[str, Any]:
        info = await self.engine.run(self.engine.info)
        return {
            "available": info.available,
            "version": info.version,
            "api_version": info.api_version,
            "builder": info.builder,
            "runtimes": list(info.runtimes),
            "reason": info.reason,
        }

    # -- images ----------------------------------------------------------------------------
    def _namespaces(self, who: Identity, everyone: bool) -> list[str]:
        if everyone and self.policy.is_admin(who):
            return [self.policy.image_prefix]
        return [self.policy.namespace(who), self.policy.shared]

    def _listing(
        self, who: Identity, everyone: bool
    ) -> tuple[list[ImageRow], dict[str, str], dict[str, int]]:
        """(the user's images, {allowed base reference: image id}, {image id: size}) from one
        engine listing. Blocking."""
        namespaces = self._namespaces(who, everyone)
        rows, bases, sizes = [], {}, {}
        for summary in self.engine.images():
            sizes[str(summary["Id"])] = int(summary.get("Size") or 0)
            refs = [r for r in summary.get("RepoTags") or [] if not r.startswith("<none>")]
            refs += summary.get("RepoDigests") or []
            labels = summary.get("Labels") or {}
            for ref in refs:
                if self.policy.base_ok(ref):
                    bases[ref] = str(summary["Id"])
            tags = tuple(
                sorted(
                    t for t in refs if "@" not in t and any(in_namespace(t, n) for n in namespaces)
                )
            )
            if tags and labels.get(L.MANAGED) == "true":
                rows.append(
                    ImageRow(
                        id=str(summary["Id"]),
                        tags=tags,
                        size=int(summary.get("Size") or 0),
                        created=int(summary.get("Created") or 0),
                        labels={k: v for k, v in labels.items() if k in IMAGE_LABELS},
                        namespace=repository_of(tags[0]).rpartition("/")[0],
                    )
                )
        return rows, bases, sizes

    async def images(self, who: Identity, everyone: bool = False) -> dict[str, Any]:
        rows, bases, _ = await self.engine.run(self._listing, who, everyone)
        return {"images": [r.to_json() for r in rows], "bases": bases}

    def usage(self, who: Identity) -> tuple[set[str], int]:
        """(the repositories of the environments with images, bytes they add to their bases) in
        the user's namespace. Blocking."""
        namespace = self.policy.namespace(who)
        listed, _, sizes = self._listing(who, False)
        rows = [r for r in listed if r.namespace == namespace]
        envs = {repository_of(t) for r in rows for t in r.tags}
        return envs, sum(added_size(r, sizes) for r in rows)

    async def delete_images(self, who: Identity, name: str, namespace: str = "") -> list[str]:
        """Remove an environment's images from the user's namespace (an admin: any)."""
        missing = Refused(404, f"no environment {name[:64]!r} of yours has images")
        namespace = namespace or self.policy.namespace(who)
        own = namespace == self.policy.namespace(who)
        anyones = in_namespace(f"{namespace}/{name}:x", self.policy.image_prefix)
        if not env_name(name) or not (own or (self.policy.is_admin(who) and anyones)):
            raise missing
        if not image_reference(f"{namespace}/{name}:x"):
            raise missing

        def remove() -> list[str]:
            builder = ImageBuilder(
                self.engine, replace(self.build_settings, image_prefix=namespace)
            )
            return [t for row in builder.remove(name) for t in row.tags]

        async def go() -> list[str]:
            removed: list[str] = await self.engine.run(remove)
            if not removed:
                raise missing
            return removed

        return await self.decided(who, "images.delete", f"{namespace}/{name}", go)  # type: ignore[no-any-return]

    # -- builds ----------------------------------------------------------------------------
    async def start_build(self, who: Identity, body: Any) -> Operation:
        name = body.get("name") if isinstance(body, dict) else None
        target = f"{self.policy.namespace(who)}/{str(name)[:64]}"

        async def admit() -> Operation:
            intent = decide_build(body, who, self.policy)
            async with self.lock(who):
                limits = self.policy.limits_for(who)
                running = [op for op, _ in self.operations_of(who) if op.active]
                if len(running) >= limits.builds:
                    raise Refused(
                        429,
                        f"you have {len(running)} build(s) running (your limit is "
                        f"{limits.builds}): wait for it to finish",
                    )
                if intent.namespace == self.policy.namespace(who):
                    await self._check_quota(who, intent, limits)
                folder = await self.engine.run(self._scratch, intent, who)
                async with self._sweeping:
                    return self._start(who, intent, folder)

        return await self.decided(who, "build", target, admit)  # type: ignore[no-any-return]

    async def _check_quota(self, who: Identity, intent: BuildIntent, limits: Any) -> None:
        envs, used = await self.engine.run(self.usage, who)
        exists = f"{intent.namespace}/{intent.name}" in envs
        if not exists and len(envs) >= limits.images:
            raise Refused(
                403,
                f"you have images of {len(envs)} environments (your limit is {limits.images}): "
                "delete environments you no longer need first",
            )
        if used >= limits.disk:
            raise Refused(
                403,
                f"your images use {human_size(used)} (your limit is {human_size(limits.disk)}): "
                "delete environments you no longer need",
            )

    def _scratch(self, intent: BuildIntent, who: Identity) -> Path:
        """Write the environment folder to a scratch folder and check what it may build.
        Blocking; Refused (and nothing left behind) when the folder is not acceptable."""
        root = Path(tempfile.mkdtemp(prefix="build-", dir=self._builds_dir()))
        folder = root / intent.name
        try:
            for rel, data in intent.files.items():
                path = folder / rel
                try:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    with path.open("xb") as out:
                        out.write(data)
                except OSError:
                    raise Refused(
                        400, f"files: {rel} is both a file and a folder", "files"
                    ) from None
            try:
                spec = load(folder, self.policy.default_base)
            except SpecError as exc:
                raise Refused(400, str(exc), exc.field) from None
            dockerfile = folder / "Dockerfile"
            text = dockerfile.read_text(errors="replace") if spec.kind == "dockerfile" else None
            check_environment(spec, text, who, self.policy)
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise
        return folder

    def _builds_dir(self) -> Path:
        path = self.state_dir / "builds"
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        return path

    def _start(self, who: Identity, intent: BuildIntent, folder: Path) -> Operation:
        settings = replace(
            self.build_settings,
            image_prefix=intent.namespace,
            owner=who.name,
            extra_labels={**self.build_settings.extra_labels, L.HUB_USER: who.name},
            # a build runs code as root with its download caches writable: one user's builds
            # must not plant files that another user's builds install
            cache_id=self.policy.cache_id(intent.namespace),
        )
        builder = ImageBuilder(self.engine, settings)
        limits = self.policy.limits_for(who)

        def work(op: Operation) -> Any:
            result = builder.build(folder, intent.options, op)
            if intent.namespace == self.policy.namespace(who):
                _, used = self.usage(who)
                if used > limits.disk:
                    builder.remove(intent.name)
                    raise OperationFailed(
                        f"the build succeeded, but your images now use {human_size(used)}, more "
                        f"than your limit of {human_size(limits.disk)}: the image was removed. "
                        "Delete environments you no longer need, then build again",
                        step="quota",
                    )
            return result

        async def after(op: Operation) -> None:
            await self.engine.run(shutil.rmtree, folder.parent, True)
            self.audit(who, "build.finished", f"{intent.namespace}/{intent.name}", op.state)

        op = self.operations.start(f"{intent.namespace}/{intent.name}", "build", work, after=after)
        if op.id in self._owners:  # joined a build of the same environment that runs already
            shutil.rmtree(folder.parent, ignore_errors=True)
        self._owners[op.id] = (who.name, intent.name)
        for old in [k for k in self._owners if self.operations.get(k) is None]:
            del self._owners[old]  # forgotten by the operation manager
        return op

    def operation(self, who: Identity, operation_id: str) -> tuple[Operation, str]:
        """The user's build (an admin: anyone's), and its environment's name; else 404."""
        owner = self._owners.get(operation_id)
        op = self.operations.get(operation_id)
        if op is None or owner is None or (owner[0] != who.name and not self.policy.is_admin(who)):
            raise Refused(404, f"no build {operation_id} of yours")
        return op, owner[1]

    def operations_of(self, who: Identity, everyone: bool = False) -> list[tuple[Operation, str]]:
        admin = everyone and self.policy.is_admin(who)
        return [
            (op, name)
            for op_id, (user, name) in self._owners.items()
            if (admin or user == who.name) and (op := self.operations.get(op_id)) is not None
        ]

    # -- containers ------------------------------------------------------------------------
    async def launch(self, who: Identity, body: Any, peer: str = "") -> dict[str, Any]:
        image = body.get("image") if isinstance(body, dict) else None
        role = body.get("role") if isinstance(body, dict) else None
        action = f"{role if role in ROLES else 'container'}.start"

        async def start() -> dict[str, Any]:
            intent = decide_container(body, who, self.policy)
            async with self.lock(who):
                await self._check_image(who, intent.image)
                limits = self.policy.limits_for(who)
                cap = limits.kernels if intent.role == "kernel" else limits.runs
                running = await self.engine.run(
                    self.engine.containers,
                    {L.MANAGED: "true", L.HUB_USER: who.name, L.ROLE: intent.role},
                )
                running = [c for c in running if c.get("State") in ("running", "created")]
                if len(running) >= cap:
                    raise Refused(
                        429,
                        f"you have {len(running)} {intent.role}s running (your limit is {cap}):"
                        " stop one first",
                    )
                host_root = await self._workspace_on_host(who)
                intent = replace(
                    intent,
                    working_dir=await self.engine.run(
                        _plain_folder, host_root, self.policy.workspace_path, intent.working_dir
                    ),
                )
                server = await self._join_network(who, peer) if intent.ports else ""
                if not intent.ports:
                    await self._network(who)
                name = f"jde-{intent.role}-{user_key(who.name)[:24]}-{os.urandom(4).hex()}"
                request = container_request(intent, who, self.policy, name, server)
                launched = await self.containers.launch(request)
                return {"id": launched.container_id, "ip": launched.ip, "name": name}

        return await self.decided(who, action, str(image)[:256], start)  # type: ignore[no-any-return]

    async def _check_image(self, who: Identity, image: str) -> None:
        attrs = await self.engine.run(self.engine.inspect_image, image)
        labels = ((attrs or {}).get("Config") or {}).get("Labels") or {}
        if attrs is None or labels.get(L.MANAGED) != "true":
            raise Refused(404, f"image: {image} does not exist: build the environment first")
        own = in_namespace(image, self.policy.namespace(who))
        if own and labels.get(L.HUB_USER) != who.name:
            raise Refused(404, f"image: {image} is not one of your environments' images")

    async def _workspace_on_host(self, who: Identity) -> str:
        """Where the user's workspace (a folder, or a named volume) is on this host."""
        workspace = self.policy.workspace(who)
        if os.path.isabs(workspace):
            found = workspace if await self.engine.run(os.path.isdir, workspace) else ""
        else:
            volume = await self.engine.run(self.engine.inspect_volume, workspace)
            found = str((volume or {}).get("Mountpoint") or "")
        if not found:
            raise Refused(
                409,
                f"your workspace {workspace} does not exist yet: start your hub server once, "
                "then try again",
            )
        return found

    async def _network(self, who: Identity) -> str:
        """The user's own bridge network, created on first use."""
        network = self.policy.network(who)
        if await self.engine.run(self.engine.inspect_network, network) is None:
            labels = {L.MANAGED: "true", L.HUB_USER: who.name}
            try:
                await self.engine.run(
                    self.engine.create_network,
                    network,
                    driver="bridge",
                    internal=self.network_internal,
                    labels=labels,
                    check_duplicate=True,
                )
            except APIError as exc:
                if exc.status_code != 409:  # 409: it exists now
                    raise
        return network

    async def _join_network(self, who: Identity, peer: str) -> str:
        """Create the user's network if needed and attach their running servers to it; return
        the id of the server container the request came from (by its address), if found."""
        network = await self._network(who)
        caller = ""
        for server in await self.hub.servers(who.name):
            attrs = await self.engine.run(self.engine.inspect_container, server.container_id)
            if attrs is None:
                continue
            networks = attrs["NetworkSettings"]["Networks"] or {}
            if network not in networks:  # not joined at an earlier launch
                try:
                    await self.engine.run(self.engine.connect_network, network, server.container_id)
                except APIError as exc:
                    if "already exists" not in str(exc):  # joined meanwhile, by another launch
                        raise
            addresses = {n.get("IPAddress") for n in networks.values()}
            if peer and peer in addresses:
                caller = str(attrs["Id"])
        return caller

    async def owned(self, who: Identity, container_id: str) -> dict[str, Any]:
        """The container, when it is one of the user's kernels or runs (an admin: anyone's)."""
        missing = Refused(404, f"no container {container_id[:64]} of yours")
        if len(container_id) != 64 or any(c not in "0123456789abcdef" for c in container_id):
            raise missing
        attrs = await self.engine.run(self.engine.inspect_container, container_id)
        labels = ((attrs or {}).get("Config") or {}).get("Labels") or {}
        if (
            attrs is None
            or labels.get(L.MANAGED) != "true"
            or labels.get(L.ROLE) not in ROLES
            or not labels.get(L.HUB_USER)
            or (labels[L.HUB_USER] != who.name and not self.policy.is_admin(who))
        ):
            raise missing
        return attrs

    async def state(self, who: Identity, container_id: str) -> ContainerState | None:
        await self.owned(who, container_id)
        return await self.containers.state(container_id)

    async def signal(self, who: Identity, container_id: str, signum: Any) -> None:
        if isinstance(signum, bool) or not isinstance(signum, int) or not 1 <= signum <= 64:
            raise Refused(400, "signal: a signal number between 1 and 64", "signal")
        await self.owned(who, container_id)
        await self.containers.signal(container_id, signum)

    async def remove(self, who: Identity, container_id: str) -> None:
        attrs = await self.owned(who, container_id)
        image = str((attrs.get("Config") or {}).get("Image") or "")
        await self.decided(
            who, "container.remove", image, lambda: self.containers.remove(container_id)
        )

    async def logs(self, who: Identity, container_id: str, tail: int) -> str:
        await self.owned(who, container_id)
        return await self.containers.logs(container_id, tail)

    async def list_containers(
        self, who: Identity, everyone: bool = False, labels: Mapping[str, str] | None = None
    ) -> list[dict[str, Any]]:
        """The user's kernels and runs (an admin's ``everyone``: all), with these labels."""
        user: str | None = None if everyone and self.policy.is_admin(who) else who.name
        found = await self.engine.run(
            self.engine.containers, {**(labels or {}), L.MANAGED: "true", L.HUB_USER: user}
        )
        return [
            {
                "id": c["Id"],
                "name": (c.get("Names") or ["?"])[0].lstrip("/"),
                "user": c["Labels"].get(L.HUB_USER),
                "role": c["Labels"].get(L.ROLE),
                "env": c["Labels"].get(L.ENV),
                "kernel_id": c["Labels"].get(L.KERNEL_ID),
                "image": c.get("Image"),
                "state": c.get("State"),
                "created": c.get("Created"),
            }
            for c in found
            if c["Labels"].get(L.ROLE) in ROLES
        ]

    async def changes(self, who: Identity, container_id: str) -> list[str]:
        """What a run added or changed in its own file system (its mounts left out)."""
        await self.owned(who, container_id)
        return await self.containers.changes(container_id)

    async def archive(self, who: Identity, container_id: str, path: str, into: IO[bytes]) -> None:
        """A tar of ``path`` in one of the user's containers (a run's outputs), into ``into``."""
        await self.owned(who, container_id)
        try:
            await self.containers.copy_from(container_id, path, into)
        except NotFound:
            raise Refused(404, f"path: {path} is not in the container", "path") from None

    async def sweep(self, who: Identity, instance: Any) -> list[str]:
        instance = check_instance(instance)
        async with self.lock(who):
            return await self.containers.sweep(instance_label(who, instance))

    # -- reaper ----------------------------------------------------------------------------
    async def reap(self) -> list[str]:
        """Remove kernels whose single-user server container stopped, and network sandboxes
        left without kernels; return the ids removed."""
        found = await self.engine.run(self.engine.containers, {L.MANAGED: "true"})
        instances: defaultdict[str, list[dict[str, Any]]] = defaultdict(list)
        for c in found:
            instance = (c.get("Labels") or {}).get(L.INSTANCE, "")
            if instance.startswith("hub-"):
                instances[instance].append(c)
        servers: dict[str, bool] = {}
        removed: list[str] = []
        empty: set[str] = set()
        for instance, members in instances.items():
            async with self._locks[instance[len("hub-") :].partition(".")[0]]:
                for c in members:
                    server = c["Labels"].get(L.SERVER)
                    if not server or c["Labels"].get(L.ROLE) != "kernel":
                        continue
                    if server not in servers:
                        attrs = await self.engine.run(self.engine.inspect_container, server)
                        servers[server] = bool(attrs and attrs["State"]["Running"])
                    if not servers[server]:
                        await self.containers.remove(c["Id"])
                        removed.append(c["Id"])
                        who = Identity(c["Labels"].get(L.HUB_USER, "?"))
                        self.audit(
                            who, "kernel.reap", c.get("Image", ""), "removed", "its server stopped"
                        )
                left = await self.engine.run(self.engine.containers, {L.INSTANCE: instance})
                if not all(c["Labels"].get(L.ROLE) == "sandbox" for c in left):
                    continue
                for sandbox in left:
                    # only when it had no kernel at the previous sweep either: a kernel that
                    # restarts leaves it empty for a moment, and must find it again
                    if sandbox["Id"] in self._empty:
                        await self.containers.remove(sandbox["Id"])
                        removed.append(sandbox["Id"])
                    else:
                        empty.add(sandbox["Id"])
        self._empty = empty
        await self._sweep_images()
        return removed

    async def _sweep_images(self) -> None:
        """Remove untagged images of earlier builds that kernels still used when a rebuild or a
        delete took their tags. Never while a build runs: its new image is untagged until it
        ends (builds wait for a sweep to finish before they start)."""
        async with self._sweeping:
            if any((op := self.operations.get(i)) and op.active for i in self._owners):
                return
            everyone = replace(self.build_settings, image_prefix=self.policy.image_prefix)
            await self.engine.run(ImageBuilder(self.engine, everyone).sweep_untagged)
