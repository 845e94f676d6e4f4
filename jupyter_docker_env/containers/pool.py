"""Warm pools: kernel containers started ahead of time, so that a notebook's kernel starts in a
fraction of a cold start.

Most of a kernel's start is Python importing ipykernel and IPython. A pool keeps containers of a
*placement* (image, user, workspace, limits, network, environment: everything fixed when a
container is created) running a small launcher that has done those imports and waits for one
claim. Pools exist only for server instances that enable them (:meth:`enable_pools`); they form on
a placement's first (cold) start, or ahead of it when an environment asks (:meth:`prewarm`).

How a claim reaches a waiting container. Each pool container has its own host folder, owned by
the container's user, mode 0700, bind-mounted read-only where the request's files go (a kernel's
``/run/jupyter-docker-env``). It holds a named pipe. The launcher, passed as the container's
command (``python -c``: nothing is added to the image), drops the working directory from
``sys.path``, imports the kernel's modules, then opens the pipe, which blocks until the server
opens its other end. To claim a container the server writes the request's files into the folder
(the connection file with the key, 0400, exactly as for a cold start), then writes the claim into
the pipe: the command's arguments, the working directory and the per-claim environment. The key
is never in the pipe, the container's configuration or its environment; no network listener is
involved; only root and the container's user may open the pipe, and no other container has the
folder. The launcher applies the claim and runs the module as ``python -m`` would, in the same
process: it is the kernel from then on, and the container ends with it. One claim, ever.

Ports. In a network sandbox (connect mode ``container-ip``) a pool container joins the sandbox's
network namespace when it is created and binds nothing until its claim names the ports, which the
server picked as for any kernel. Where ports must be published (Docker Desktop, rootless or remote
engines) they are fixed at creation: no pools there. Neither are there pools for GPU requests
(an idle container would hold the GPU) unless the server allows it, nor where this process cannot
give files to the kernel's user.

Staleness. A claim checks that the image's tag still names the image the container runs and that
the sandbox is the one it joined; if not, the pool is emptied and the start is cold.
:meth:`refresh_pools` empties pools whose image changed or went away after builds and deletes;
pools that formed on demand empty after ``idle_timeout`` without a claim. Every pool container
carries the instance's labels, so the server's sweep removes what a crash left.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import json
import logging
import os
import time
from collections import deque
from collections.abc import Coroutine
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from .. import labels as L
from ..models import WarmPool
from . import ContainerFile, ContainerRequest, Launched, PoolSettings
from .local import LocalBackend, write_host_file

#: The named pipe in a pool container's folder.
CLAIM_PIPE = ".claim"
#: Memory assumed for a pool container until one of its pool has been measured.
DEFAULT_IDLE_MEMORY = 64 * 1024**2
#: Consecutive failed starts after which a pool stops refilling (its error is shown).
MAX_FAILURES = 3
READY_TIMEOUT = 120.0
#: Seconds between a start and the refill it causes (the new kernel initializes meanwhile).
REFILL_DELAY = 1.0
_MAX_CLAIM = 60 * 1024  # bytes: a claim must fit the pipe's buffer
# The server (often root) opens the pipe itself, never a link put in its place.
_CLAIM_OPEN = os.O_WRONLY | os.O_NONBLOCK | os.O_NOFOLLOW
log = logging.getLogger(__name__)

# The container's command: `PYTHON -c LAUNCHER PIPE MODULE PRELOAD...`.
LAUNCHER = """\
import json, os, runpy, sys
pipe, module = sys.argv[1], sys.argv[2]
if sys.path and sys.path[0] in ("", os.getcwd()):
    del sys.path[0]  # nothing is imported from the working directory before the claim
for name in sys.argv[3:]:
    try:
        __import__(name)
    except ImportError:
        pass  # an optional module this image lacks: the kernel does without it too
while True:
    with open(pipe, "rb") as fifo:  # blocks until the server opens the other end
        data = fifo.read()
    if data:  # (a readiness probe opens and closes it without writing)
        break
claim = json.loads(data)
os.environ.update(claim["env"])
os.chdir(claim["cwd"])
sys.argv[:] = [module, *claim["args"]]
if not getattr(sys.flags, "safe_path", False):
    sys.path.insert(0, os.getcwd())  # as `python -m` does
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


@dataclass
class _Warm:
    """A pool container whose launcher waits for its claim."""

    container_id: str
    folder: Path
    image_id: str
    sandbox: str


@dataclass
class _Pool:
    key: str
    template: ContainerRequest  # the latest request of this placement
    size: int
    asked: bool = False  # the environment asked for it (prewarm): no idle timeout
    ready: deque[_Warm] = field(default_factory=deque)
    starting: int = 0
    claims: int = 0
    idle_memory: int = 0  # per container, measured; 0 until measured
    last_used: float = field(default_factory=time.monotonic)
    failures: int = 0
    error: str | None = None
    closed: bool = False
    filler: asyncio.Task[None] | None = None


@dataclass
class _Instance:
    settings: PoolSettings
    pools: dict[str, _Pool] = field(default_factory=dict)
    keeper: asyncio.Task[None] | None = None


def placement_key(request: ContainerRequest) -> str:
    """What a container must have been created with to serve ``request``, as a hash.

    Every field of the request counts (so a field added later counts too) except those a claim
    hands over: the name, the working directory, the command's arguments, the files' content
    (their folder counts), the ports' numbers (their count counts), the per-claim variables and
    the kernel-id label (labels cannot change after creation: a claimed container lacks it).
    """
    assert request.warm is not None
    claim_env = set(request.warm.claim_env)
    data = asdict(request)
    for per_claim in ("name", "working_dir", "warm"):
        data.pop(per_claim)
    data["command"] = list(request.command[:3])
    data["files"] = sorted({os.path.dirname(f.path) for f in request.files})
    data["ports"] = len(request.ports)
    data["environment"] = {k: v for k, v in request.environment.items() if k not in claim_env}
    data["labels"] = {k: v for k, v in request.labels.items() if k != L.KERNEL_ID}
    data["preload"] = list(request.warm.preload)
    data["claim_env"] = sorted(claim_env)
    text = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class PooledLocalBackend(LocalBackend):
    """The local engine, with warm pools for the server instances that enable them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._instances: dict[str, _Instance] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- the server's side -----------------------------------------------------------------
    def enable_pools(self, instance_id: str, settings: PoolSettings) -> None:
        if instance_id in self._instances:
            self._instances[instance_id].settings = settings
        else:
            self._instances[instance_id] = _Instance(settings)

    async def prewarm(self, request: ContainerRequest) -> None:
        pool = await self._pool_for(request)
        if pool is not None:
            pool.asked = True
            self._fill(pool)

    async def refresh_pools(self, instance_id: str) -> None:
        instance = self._instances.get(instance_id)
        if instance is None:
            return
        for key, pool in list(instance.pools.items()):
            if pool.filler is not None and not pool.filler.done():
                with contextlib.suppress(Exception):
                    # what it is starting may be of the previous image (shielded: a filler
                    # cancelled mid-start would leave its container behind)
                    await asyncio.shield(pool.filler)
            current = await self._image_id(pool.template.image)
            stale = {w.image_id for w in pool.ready if w.image_id != current}
            if current and not stale:
                continue
            await self._drain(pool, "its image changed" if current else "its image is gone")
            for image_id in stale:  # the previous build's image, when nothing else holds it
                await self.engine.run(self.engine.remove_if_unused, image_id)
            if current:
                self._revive(pool)
            else:
                instance.pools.pop(key, None)

    def pool_states(self, instance_id: str) -> list[WarmPool]:
        instance = self._instances.get(instance_id)
        now = time.monotonic()
        return [
            WarmPool(
                env=pool.template.labels.get(L.ENV, ""),
                image=pool.template.image,
                size=pool.size,
                ready=len(pool.ready),
                starting=pool.starting,
                claims=pool.claims,
                idle_memory=pool.idle_memory * len(pool.ready),
                idle_seconds=round(now - pool.last_used, 1),
                error=pool.error,
            )
            for pool in (instance.pools.values() if instance else ())
        ]

    async def close_pools(self, instance_id: str) -> None:
        instance = self._instances.pop(instance_id, None)
        if instance is None:
            return
        if instance.keeper is not None:
            instance.keeper.cancel()
        for pool in instance.pools.values():
            await self._drain(pool, "the server stopped")

    async def sweep(self, instance_id: str) -> list[str]:
        instance = self._instances.get(instance_id)
        for pool in instance.pools.values() if instance else ():
            pool.closed = True  # its containers go with the sweep
            pool.ready.clear()
        if instance is not None:
            instance.pools.clear()
        return await super().sweep(instance_id)

    def _place_files(self, request: ContainerRequest, create: dict[str, Any]) -> bytes | None:
        """A pool container gets a folder for its claim (the pipe now, the files later)."""
        if request.role != "pool":
            return super()._place_files(request, create)
        folder = self.files_dir / request.instance_id / request.name
        folder.mkdir(parents=True, mode=0o700)
        os.mkfifo(folder / CLAIM_PIPE, 0o600)
        if os.geteuid() == 0:
            for path in (folder, folder / CLAIM_PIPE):
                os.chown(path, request.uid, request.gid)
        self._files[request.name] = folder
        mount = os.path.dirname(request.files[0].path)
        create["volumes"][str(folder)] = {"bind": mount, "mode": "ro"}
        return None

    # -- claims ------------------------------------------------------------------------------
    async def launch(self, request: ContainerRequest) -> Launched:
        pool = await self._pool_for(request)
        if pool is None:
            return await super().launch(request)
        pool.template, pool.last_used = _template(request), time.monotonic()
        pool.size = max(request.warm.size if request.warm else 0, 0)
        launched = await self._claim(pool, request)
        if launched is None:
            launched = await super().launch(request)
        # the kernel just started gets the CPU first; the refill follows
        asyncio.get_running_loop().call_later(REFILL_DELAY, self._fill, pool)
        return launched

    async def _pool_for(self, request: ContainerRequest) -> _Pool | None:
        """The pool of the request's placement (made if new), or None when it takes none."""
        instance = self._instances.get(request.instance_id)
        warm = request.warm
        if instance is None or warm is None or warm.size <= 0 or request.role != "kernel":
            return None
        if len(request.command) < 3 or request.command[1] != "-m":
            return None
        if request.device_requests and not instance.settings.gpus:
            return None
        if os.geteuid() not in (0, request.uid):
            return None  # cannot give the claim's files to the kernel's user
        if len({os.path.dirname(f.path) for f in request.files}) > 1:
            return None
        if not request.ports or await self.mode() != "container-ip":
            return None
        key = placement_key(request)
        pool = instance.pools.get(key)
        if pool is None or pool.closed:
            pool = instance.pools[key] = _Pool(key, _template(request), warm.size)
        self._keep(request.instance_id, instance)
        return pool

    async def _claim(self, pool: _Pool, request: ContainerRequest) -> Launched | None:
        """Hand the request to a ready pool container; None when none can take it.

        Optimistic: the claim goes out at once, and whether the container is still current (its
        image is what the tag names, its sandbox the one kernels use) is asked meanwhile, while
        the kernel initializes. A stale container is removed before the start goes cold.
        """
        while pool.ready:
            warm = pool.ready.popleft()
            current = asyncio.gather(self._image_id(request.image), self._sandbox(request))
            try:
                for f in request.files:
                    path = warm.folder / os.path.basename(f.path)
                    write_host_file(path, f.data, f.mode, request.uid, request.gid)
                await _deliver(warm.folder / CLAIM_PIPE, _claim_payload(request))
            except OSError as exc:  # its launcher is gone (killed, out of memory): next one
                log.warning("Warm container %s cannot be claimed: %s", warm.container_id[:12], exc)
                await current
                await self.remove(warm.container_id)
                continue
            image_id, sandbox = await current
            if warm.image_id != image_id or warm.sandbox != sandbox.container_id:
                await self.remove(warm.container_id)  # frees the ports it may have bound
                await self._drain(pool, "its image or network sandbox changed")
                self._revive(pool)
                return None
            pool.claims += 1
            # the kernel's name, for `docker ps`; its labels stay those of the pool
            rename = self.engine.run(self.engine.rename_container, warm.container_id, request.name)
            self._background(rename)
            return Launched(container_id=warm.container_id, ip=sandbox.ip, warm=True)
        return None

    # -- filling -----------------------------------------------------------------------------
    def _fill(self, pool: _Pool) -> None:
        if pool.closed or (pool.filler is not None and not pool.filler.done()):
            return
        if len(pool.ready) + pool.starting < pool.size and pool.failures < MAX_FAILURES:
            pool.filler = asyncio.get_running_loop().create_task(self._filler(pool))

    async def _filler(self, pool: _Pool) -> None:
        """Start pool containers one after the other until the pool is full (or cannot fill)."""
        while not pool.closed and len(pool.ready) + pool.starting < pool.size:
            if pool.failures >= MAX_FAILURES:
                return
            if (over := self._over_budget(pool)) is not None:
                pool.error = over
                return
            pool.starting += 1
            try:
                warm = await self._start_one(pool)
            except Exception as exc:  # the image cannot run the launcher, the engine refused
                pool.failures += 1
                pool.error = f"could not start a warm kernel: {exc}"
                continue
            finally:
                pool.starting -= 1
            if warm is None:  # closed meanwhile: already removed
                return
            if not pool.idle_memory:  # once per pool: what a waiting kernel of it holds
                measured = await self.engine.run(self.engine.container_memory, warm.container_id)
                pool.idle_memory = measured or 0
            if pool.closed:  # emptied while it was measured
                await self.remove(warm.container_id)
                return
            pool.failures, pool.error = 0, None
            pool.ready.append(warm)

    def _over_budget(self, pool: _Pool) -> str | None:
        instance = self._instances.get(pool.template.instance_id)
        if instance is None:
            return "warm pools are off for this server"
        held = sum(
            (len(p.ready) + p.starting) * (p.idle_memory or DEFAULT_IDLE_MEMORY)
            for p in instance.pools.values()
        )
        budget = instance.settings.memory_budget
        if held + (pool.idle_memory or DEFAULT_IDLE_MEMORY) > budget:
            return (
                f"the idle memory budget of all warm pools ({budget // 1024**2} MiB, "
                "c.DockerEnvProvisioner.warm_pool_memory) is used"
            )
        return None

    async def _start_one(self, pool: _Pool) -> _Warm | None:
        template = pool.template
        assert template.warm is not None
        folder = os.path.dirname(template.files[0].path) if template.files else "/run/pool"
        pipe = f"{folder}/{CLAIM_PIPE}"
        request = replace(
            template,
            role="pool",
            name=f"jupyter-kernel-pool-{pool.key[:8]}-{os.urandom(3).hex()}",
            command=(
                template.command[0],
                "-c",
                LAUNCHER,
                pipe,
                template.command[2],
                *template.warm.preload,
            ),
            working_dir=template.home,
            environment={
                k: v for k, v in template.environment.items() if k not in template.warm.claim_env
            },
            labels={
                **{k: v for k, v in template.labels.items() if k != L.KERNEL_ID},
                L.POOL: pool.key,
            },
            files=(ContainerFile(pipe, b"", 0o600),),
            warm=None,
        )
        launched = await super().launch(request)
        warm = None
        try:
            attrs = await self.engine.run(self.engine.inspect_container, launched.container_id)
            sandbox = (attrs or {}).get("HostConfig", {}).get("NetworkMode", "")
            warm = _Warm(
                launched.container_id,
                self._files[launched.container_id],
                str((attrs or {}).get("Image", "")),
                sandbox.removeprefix("container:"),
            )
            await self._wait_ready(pool, warm)
        finally:
            if warm is None or pool.closed:
                await self.remove(launched.container_id)
        return None if pool.closed else warm

    async def _wait_ready(self, pool: _Pool, warm: _Warm) -> None:
        """Until the launcher has done its imports and opened its pipe."""
        deadline = time.monotonic() + READY_TIMEOUT
        checks = 0
        while not pool.closed:
            try:
                os.close(os.open(warm.folder / CLAIM_PIPE, _CLAIM_OPEN))
                return  # the launcher reads its end: it waits for a claim now
            except OSError as exc:
                if exc.errno != errno.ENXIO:
                    raise
            checks += 1
            if checks % 25 == 0:  # every half second, ask whether it is still running
                state = await self.state(warm.container_id)
                if state is None or not state.running:
                    logs = await self.logs(warm.container_id)
                    raise RuntimeError(f"its launcher exited: {logs.strip()[-400:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"its launcher was not ready after {READY_TIMEOUT:.0f} s")
            await asyncio.sleep(0.02)

    async def _drain(self, pool: _Pool, why: str) -> None:
        """Remove the pool's containers; it refills only when :meth:`_revive`\\ d."""
        pool.closed = True
        filler = pool.filler
        while pool.ready:
            await self.remove(pool.ready.popleft().container_id)
        if filler is not None and filler is not asyncio.current_task():
            with contextlib.suppress(Exception):
                await asyncio.shield(filler)  # it removes what it was starting
        pool.error = None
        log.debug("Warm pool %s of %s emptied: %s", pool.key, pool.template.image, why)

    def _revive(self, pool: _Pool) -> None:
        pool.closed, pool.failures = False, 0
        self._fill(pool)

    # -- housekeeping ------------------------------------------------------------------------
    def _keep(self, instance_id: str, instance: _Instance) -> None:
        """Make sure the instance's keeper (idle timeouts) runs on this event loop."""
        if instance.keeper is None or instance.keeper.done():
            instance.keeper = asyncio.get_running_loop().create_task(self._keeper(instance_id))

    async def _keeper(self, instance_id: str) -> None:
        while (instance := self._instances.get(instance_id)) is not None:
            timeout = instance.settings.idle_timeout
            await asyncio.sleep(min(30.0, max(0.2, timeout / 4)))
            now = time.monotonic()
            for key, pool in list(instance.pools.items()):
                if not pool.asked and now - pool.last_used > timeout:
                    await self._drain(pool, "idle")
                    instance.pools.pop(key, None)

    def _background(self, work: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _image_id(self, ref: str) -> str:
        attrs = await self.engine.run(self.engine.inspect_image, ref)
        return str(attrs["Id"]) if attrs else ""


def _template(request: ContainerRequest) -> ContainerRequest:
    """A request's placement without what belongs to one claim (file contents)."""
    return replace(request, files=tuple(ContainerFile(f.path, b"", f.mode) for f in request.files))


def _claim_payload(request: ContainerRequest) -> bytes:
    payload = json.dumps(
        {
            "args": list(request.command[3:]),
            "cwd": request.working_dir,
            "env": dict(request.environment),
        }
    ).encode()
    if len(payload) > _MAX_CLAIM:
        raise OSError(errno.E2BIG, "the claim is too large for the pipe")
    return payload


async def _deliver(pipe: Path, payload: bytes) -> None:
    """Write the claim into the launcher's pipe (it reads until we close our end)."""
    for _ in range(10):
        try:
            fd = os.open(pipe, _CLAIM_OPEN)
            break
        except OSError as exc:
            # ENXIO: no reader; a launcher reopens its end right after a readiness probe
            if exc.errno != errno.ENXIO:
                raise
            await asyncio.sleep(0.002)
    else:
        raise OSError(errno.ENXIO, "no launcher reads the claim pipe")
    try:
        view = memoryview(payload)
        while view:
            try:
                view = view[os.write(fd, view) :]
            except BlockingIOError:
                await asyncio.sleep(0.001)
    finally:
        os.close(fd)
