"""The serving service: serving images of a workspace's environments — build, list, push, remove,
and run one locally.

The REST handlers and the CLI are thin adapters over it. Its public methods are coroutines (or,
for starting operations, quick calls on the event loop): file and engine work runs on its own
small executor, builds and pushes on its operations' workers.
"""

from __future__ import annotations

import asyncio
import functools
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from traitlets.config import LoggingConfigurable

from .. import labels as L
from ..containers import ContainerRequest, hardening
from ..engine import APIError, Engine, EngineError
from ..environments.manager import EnvConflict, EnvironmentManager, Location
from ..models import ServingContainer, ServingImage, ServingOptions
from ..operations import Operation, OperationManager
from . import dockerfile
from .builder import Handler, Model, ServingBuilder, ServingRequest, check_tag

if TYPE_CHECKING:
    from ..config import DockerEnvConfig

T = TypeVar("T")
Listener = Callable[[Operation, str], None]


class ServingManager(LoggingConfigurable):
    """Serving images of the environments that ``environments`` manages."""

    def __init__(
        self,
        settings: DockerEnvConfig,
        environments: EnvironmentManager,
        engine: Engine,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.environments = environments
        self.engine = engine
        self.builder = ServingBuilder(engine, environments.images)
        self.operations = OperationManager(workers=settings.build_workers, log=self.log)
        self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="docker-env-serving")
        self._requests: dict[str, ServingRequest] = {}  # active builds' requests, by operation

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args))

    def close(self) -> None:
        self.operations.close()
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- building ----------------------------------------------------------------------------
    async def request(
        self, loc: Location, options: ServingOptions, cwd: Path, confine: bool = True
    ) -> ServingRequest:
        """Check a request before anything starts: a FieldError names a bad model, handler or
        tag; OperationFailed says the environment is not built (yet).

        Paths are relative to ``cwd``; with ``confine`` (REST) they must stay in the workspace.
        """

        def check() -> ServingRequest:
            model, handler, tag = self._inputs(options, cwd, confine)
            plan = self.environments.images.plan(loc.folder, resolve_base=False)
            self.builder.environment_image(plan)
            return ServingRequest(loc.folder, model, handler, tag, options.no_cache)

        return await self._run(check)

    async def check_inputs(self, options: ServingOptions, cwd: Path, confine: bool = True) -> None:
        """Check the model, the handler and the tag alone (before building the environment)."""
        await self._run(self._inputs, options, cwd, confine)

    def _inputs(
        self, options: ServingOptions, cwd: Path, confine: bool
    ) -> tuple[Model, Handler, str | None]:
        root = self.environments.root_dir if confine else None
        return (
            Model.read(options.model, cwd, root),
            Handler.parse(options.handler, cwd, root),
            check_tag(options.tag),
        )

    def build(
        self, loc: Location, request: ServingRequest, listeners: list[Listener] | None = None
    ) -> Operation:
        """Start a serving build, or join the same one running; one per environment at a time."""
        for op in self.operations.active(loc.name):
            if op.kind == "serving-build":
                if self._requests.get(op.id) == request:
                    return op
                raise EnvConflict(
                    f"a serving image of {loc.name} is being built: wait for it or cancel it"
                )
        op = self.operations.start(
            loc.name,
            "serving-build",
            lambda op: self.builder.build(request, op),
            after=self._forget,
            listeners=listeners,
        )
        self._requests[op.id] = request
        return op

    async def _forget(self, op: Operation) -> None:
        self._requests.pop(op.id, None)

    # -- the catalog -----------------------------------------------------------------------
    async def list_all(self, env: str | None = None) -> list[ServingImage]:
        return await self._run(self.builder.catalog, env)

    async def get(self, ref: str) -> ServingImage:
        return await self._run(self.builder.get, ref)

    async def remove(self, ref: str) -> ServingImage:
        return await self._run(self.builder.remove, ref)

    async def push(self, ref: str, listeners: list[Listener] | None = None) -> Operation:
        """Start pushing a serving image (see :meth:`ServingBuilder.push` for where)."""
        found = await self.get(ref)
        await self._run(self.builder.remotes, ref)  # nowhere to push: say so before starting
        return self.operations.start(
            found.env,
            "serving-push",
            lambda op: self.builder.push(ref, op),
            listeners=listeners,
        )

    def operation(self, operation_id: str) -> Operation | None:
        return self.operations.get(operation_id)

    def cancel(self, operation_id: str) -> Operation | None:
        return self.operations.cancel(operation_id)

    # -- running locally ---------------------------------------------------------------------
    async def run(
        self, ref: str, port: int = dockerfile.PORT, environment: dict[str, str] | None = None
    ) -> ServingContainer:
        """Start a container of the serving image, its port published on 127.0.0.1 only
        (``port`` 0: any free one), confined like every container (:func:`hardening`) and
        read-only besides."""
        return await self._run(self._start, ref, port, dict(environment or {}))

    def _start(self, ref: str, port: int, environment: dict[str, str]) -> ServingContainer:
        found = self.builder.get(ref)
        request = ContainerRequest(
            role="serving",
            name=f"docker-env-serve-{found.env}-{uuid.uuid4().hex[:6]}",
            image=ref,
            command=(),
            workspace="",  # nothing of the host: the image holds the model
            working_dir=dockerfile.APP_DIR,
            uid=dockerfile.UID,
            gid=dockerfile.UID,
            instance_id="",
            environment=environment,
            home="/tmp",
            pids_limit=1024,  # workers, their threads and the libraries' thread pools
        )
        container = self.engine.create_container(
            ref,
            **hardening(request),
            name=request.name,
            working_dir=request.working_dir,
            environment=dict(request.environment),
            labels={
                **self.settings.extra_labels,
                L.MANAGED: "true",
                L.ROLE: request.role,
                L.SERVING_ENV: found.env,
            },
            read_only=True,
            ports={f"{dockerfile.PORT}/tcp": ("127.0.0.1", port or None)},
        )
        container_id = str(container["Id"])
        try:
            self.engine.start_container(container_id)
        except APIError as exc:
            self.engine.remove_container(container_id)
            text = str(exc.explanation or exc)
            if "already allocated" in text or "address already in use" in text:
                raise EngineError(
                    f"port {port} on 127.0.0.1 is taken: pick another with --port (0: any free one)"
                ) from exc
            raise EngineError(f"{ref} did not start: {text}") from exc
        data = self.engine.inspect_container(container_id) or {}
        bindings = ((data.get("NetworkSettings") or {}).get("Ports") or {}).get(
            f"{dockerfile.PORT}/tcp"
        ) or [{}]
        host_port = bindings[0].get("HostPort") or str(port)
        return ServingContainer(id=container_id, image=ref, url=f"http://127.0.0.1:{host_port}")

    async def wait_ready(self, served: ServingContainer, seconds: float = 120) -> bool:
        """Wait until the server answers ``/readyz`` with 200; False when the container stopped
        first or the time ran out."""
        return await self._run(self._wait_ready, served, seconds)

    def _wait_ready(self, served: ServingContainer, seconds: float) -> bool:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            state = (self.engine.inspect_container(served.id) or {}).get("State") or {}
            if not state.get("Running"):
                return False
            try:
                with opener.open(f"{served.url}/readyz", timeout=2) as resp:
                    if resp.status == 200:
                        return True
            except (OSError, urllib.error.HTTPError):
                pass
            time.sleep(0.1)
        return False

    def logs(self, container_id: str) -> Iterator[str]:
        """The container's log as it comes, until it stops (blocking: for the command line)."""
        return self.engine.follow_logs(container_id)

    async def stop(self, container_id: str, grace: float = 10) -> int | None:
        """Stop gracefully (SIGTERM, then SIGKILL after ``grace`` seconds) and remove; the exit
        code."""

        def stop() -> int | None:
            self.engine.kill_container(container_id, "SIGTERM")
            try:
                code = self.engine.wait_container(container_id, timeout=grace)
            except EngineError:  # still running after the grace period
                self.engine.kill_container(container_id)
                code = self.engine.wait_container(container_id, timeout=grace)
            self.engine.remove_container(container_id)
            return code

        return await self._run(stop)
