"""Step 5: the REST API under {base_url}jupyter-docker-env/api/ (see openapi.yaml).

Handlers stay thin: parse, await the service off the event loop, map domain errors to 4xx.
Every verb is authenticated and authorized for the ``docker_env`` resource: GET needs ``read``,
everything else ``write`` (builds and kernels run code).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

from jupyter_client.kernelspec import NoSuchKernel
from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from jupyter_server.extension.handler import ExtensionHandlerMixin
from jupyter_server.utils import ApiPath, ensure_async
from tornado import web

from . import __version__, kernelspecs
from .builder import BuildOptions
from .engine import EngineUnavailable
from .environments import EnvConflict, EnvNotFound, EnvReadOnly
from .jobs import JobFailed
from .provisioner import parse_gpus, parse_memory
from .spec import SpecError

if TYPE_CHECKING:
    from .app import DockerEnvApp

T = TypeVar("T")
AUTH_RESOURCE = "docker_env"
NAMESPACE = "jupyter-docker-env/api"
ENV_NAME = r"(?P<name>[a-z0-9][a-z0-9_.-]{0,62})"
JOB_ID = r"(?P<job_id>[0-9a-f]{12})"


class ApiError(web.HTTPError):
    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(status, reason=None, log_message=None)
        self.message = message
        self.field = field


class DockerEnvHandler(ExtensionHandlerMixin, APIHandler):
    auth_resource = AUTH_RESOURCE

    @property
    def ext(self) -> DockerEnvApp:
        return self.settings["docker_env"]  # type: ignore[no-any-return]

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, ApiError):
            self.set_header("Content-Type", "application/json")
            self.finish(json.dumps({"message": exc.message, "field": exc.field}))
            return
        super().write_error(status_code, **kwargs)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking service call off the event loop, mapping errors to 4xx/503."""
        try:
            return await self.ext.engine.run(fn, *args)
        except SpecError as exc:
            raise ApiError(400, exc.message, exc.field) from exc
        except EnvNotFound as exc:
            raise ApiError(404, str(exc)) from exc
        except EnvReadOnly as exc:
            raise ApiError(403, str(exc)) from exc
        except EnvConflict as exc:
            raise ApiError(409, str(exc)) from exc
        except JobFailed as exc:
            raise ApiError(409, str(exc)) from exc
        except EngineUnavailable as exc:
            raise ApiError(503, str(exc)) from exc

    def json_body(self) -> dict[str, Any]:
        if not self.request.body:
            return {}
        try:
            body = json.loads(self.request.body)
        except ValueError as exc:
            raise ApiError(400, f"the request body is not valid JSON: {exc}") from exc
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object")
        return body

    def reply(self, data: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(json.dumps(data))


class StatusHandler(DockerEnvHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        engine = self.ext.engine
        info = await engine.run(engine.info)
        gpu_reason = None
        if not info.available:
            gpu_reason = "the Docker engine is not reachable"
        elif not info.gpu_runtime:
            gpu_reason = (
                "the Docker engine has no NVIDIA runtime: install the NVIDIA Container Toolkit "
                "on the Docker host to use GPUs"
            )
        self.reply(
            {
                "version": __version__,
                "engine": {
                    "available": info.available,
                    "host": info.host,
                    "version": info.version,
                    "api_version": info.api_version,
                    "reason": info.reason,
                },
                "gpu": {
                    "available": info.available and info.gpu_runtime,
                    "runtimes": list(info.runtimes),
                    "reason": gpu_reason,
                },
                "allowed_bases": list(self.ext.allowed_bases),
                "default_base": self.ext.default_base,
                "registry": self.ext.registry or None,
            }
        )


class EnvsHandler(DockerEnvHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.reply({"envs": await self.call(self.ext.envs.all)})

    @web.authenticated
    @authorized
    async def post(self) -> None:
        body = self.json_body()
        self.reply(await self.call(self.ext.envs.create, body), status=201)


class EnvHandler(DockerEnvHandler):
    @web.authenticated
    @authorized
    async def get(self, name: str) -> None:
        self.reply(await self.call(self.ext.envs.get, name))

    @web.authenticated
    @authorized
    async def put(self, name: str) -> None:
        self.reply(await self.call(self.ext.envs.update, name, self.json_body()))

    @web.authenticated
    @authorized
    async def delete(self, name: str) -> None:
        await self.call(self.ext.envs.delete, name)
        await self.ext.sync_kernelspecs()
        self.set_status(204)
        self.finish()


class BuildsHandler(DockerEnvHandler):
    @web.authenticated
    @authorized
    async def post(self, name: str) -> None:
        body = self.json_body()
        unknown = body.keys() - {"no_cache", "from_lock", "pull"}
        if unknown:
            raise ApiError(
                400, f"unknown build option(s): {', '.join(sorted(unknown))}", sorted(unknown)[0]
            )
        if not all(isinstance(v, bool) for v in body.values()):
            raise ApiError(400, "build options are true or false")
        options = BuildOptions(**body)
        loc = await self.call(self.ext.envs.locate, name)
        job = self.ext.jobs.start(
            name,
            "build",
            lambda job: self.ext.builder.build(loc.folder, options, job),
            on_done=self._after,
        )
        self.reply(job.to_json(), status=202)

    async def _after(self, _job: Any) -> None:
        await self.ext.sync_kernelspecs()


class ShareHandler(DockerEnvHandler):
    """POST envs/{name}/push and envs/{name}/pull."""

    @web.authenticated
    @authorized
    async def post(self, name: str, action: str) -> None:
        if not self.ext.registry:
            raise ApiError(
                400, "no registry is configured: set c.DockerEnvApp.registry", "registry"
            )
        loc = await self.call(self.ext.envs.locate, name)
        builder = self.ext.builder
        folder: Path = loc.folder
        if action == "push":
            job = self.ext.jobs.start(name, "push", lambda job: builder.push(folder, job))
        else:
            job = self.ext.jobs.start(
                name,
                "pull",
                lambda job: builder.pull_env(folder, job),
                on_done=lambda _job: self.ext.sync_kernelspecs(),
            )
        self.reply(job.to_json(), status=202)


class KernelsHandler(DockerEnvHandler):
    """POST envs/{name}/kernels: a kernel of the environment with its own resources.

    One kernel spec serves every size: the limits travel as KERNEL_* variables of this start,
    which the provisioner reads and does not pass into the container.
    """

    @web.authenticated
    @authorized
    async def post(self, name: str) -> None:
        if not self.authorizer.is_authorized(self, self.current_user, "execute", "kernels"):
            raise ApiError(403, "you may not start kernels on this server")
        body = self.json_body()
        resources = kernel_resources(body)
        path = body.get("path", "")
        if not isinstance(path, str):
            raise ApiError(400, "path must be a folder of the workspace", "path")
        await self.call(self.ext.envs.locate, name)
        env = {**os.environ, **resources}
        try:
            kernel_id = await self.kernel_manager.start_kernel(
                kernel_name=kernelspecs.kernel_name(name), path=cast("ApiPath", path), env=env
            )
        except NoSuchKernel as exc:
            raise ApiError(409, f"{name} is not built yet: build it first") from exc
        except (RuntimeError, ValueError) as exc:  # the provisioner's words: no GPU runtime, …
            raise ApiError(409, str(exc)) from exc
        model = await ensure_async(self.kernel_manager.kernel_model(kernel_id))
        self.reply(model, status=201)


def kernel_resources(body: dict[str, Any]) -> dict[str, str]:
    """KERNEL_* variables from a kernel start's {cpus, memory, gpus}, checked."""
    unknown = body.keys() - {"path", "cpus", "memory", "gpus"}
    if unknown:
        raise ApiError(
            400, f"unknown kernel option(s): {', '.join(sorted(unknown))}", sorted(unknown)[0]
        )
    env: dict[str, str] = {}
    if (cpus := body.get("cpus")) is not None:
        if isinstance(cpus, bool) or not isinstance(cpus, int | float) or cpus <= 0:
            raise ApiError(400, "cpus must be a positive number", "cpus")
        env["KERNEL_CPUS"] = str(cpus)
    if (memory := body.get("memory")) is not None:
        try:
            parse_memory(memory)
        except ValueError as exc:
            raise ApiError(400, str(exc), "memory") from exc
        env["KERNEL_MEMORY"] = str(memory)
    if (gpus := body.get("gpus")) is not None:
        try:
            parse_gpus(str(gpus))
        except ValueError as exc:
            raise ApiError(400, str(exc), "gpus") from exc
        env["KERNEL_GPUS"] = str(gpus)
    return env


class JobHandler(DockerEnvHandler):
    @web.authenticated
    @authorized
    async def get(self, job_id: str) -> None:
        offset_arg = self.get_argument("offset", "0")
        if not offset_arg.isdigit():
            raise ApiError(400, "offset must be a non-negative integer", "offset")
        job = self.ext.jobs.get(job_id)
        if job is None:
            raise ApiError(404, f"no build with id {job_id}")
        self.reply(job.to_json(int(offset_arg)))

    @web.authenticated
    @authorized
    async def delete(self, job_id: str) -> None:
        job = self.ext.jobs.cancel(job_id)
        if job is None:
            raise ApiError(404, f"no build with id {job_id}")
        self.reply(job.to_json(len(job.log)), status=202)


def _route(pattern: str) -> str:
    return rf"/{NAMESPACE}/{pattern}"


HANDLERS: list[tuple[str, type[DockerEnvHandler]]] = [
    (_route("status"), StatusHandler),
    (_route("envs"), EnvsHandler),
    (_route(f"envs/{ENV_NAME}"), EnvHandler),
    (_route(f"envs/{ENV_NAME}/builds"), BuildsHandler),
    (_route(f"envs/{ENV_NAME}/(?P<action>push|pull)"), ShareHandler),
    (_route(f"envs/{ENV_NAME}/kernels"), KernelsHandler),
    (_route(f"builds/{JOB_ID}"), JobHandler),
]
