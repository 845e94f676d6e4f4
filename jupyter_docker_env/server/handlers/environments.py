"""REST routes for environments, their operations (builds, pushes, pulls) and sized kernels.

Every verb is authenticated and authorized for the ``docker_env`` resource: GET needs ``read``,
everything else ``write`` (builds and kernels run code); starting a kernel also needs
``execute`` on ``kernels``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from typing import Any, cast

from jupyter_client.kernelspec import NoSuchKernel
from jupyter_server.auth.decorator import authorized
from jupyter_server.utils import ApiPath, ensure_async
from tornado import web

from ...kernels import kernelspecs
from ...kernels.resources import Resources
from ...models import BuildOptions, FieldError
from ...operations import Operation
from .base import ENV_NAME, OPERATION_ID, ApiError, DockerEnvHandler, route

NO_REGISTRY = "no registry is configured: set c.DockerEnvApp.registry"


class StatusHandler(DockerEnvHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        status = await self.environments.status()
        self.reply(replace(status, pools=tuple(self.ext.warm.states())).to_json())


class EnvsHandler(DockerEnvHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.reply({"envs": [env.to_json() for env in await self.environments.list_all()]})

    @web.authenticated
    @authorized
    async def post(self) -> None:
        env = await self.environments.create(self.json_body())
        self.set_header("Location", self.request.path.rstrip("/") + "/" + env.name)
        self.reply(env.to_json(), status=201)


class EnvHandler(DockerEnvHandler):
    @web.authenticated
    @authorized
    async def get(self, name: str) -> None:
        self.reply((await self.environments.get(name)).to_json())

    @web.authenticated
    @authorized
    async def put(self, name: str) -> None:
        self.reply((await self.environments.update(name, self.json_body())).to_json())

    @web.authenticated
    @authorized
    async def delete(self, name: str) -> None:
        await self.environments.delete(name)
        self.set_status(204)
        self.finish()


class RegistryHandler(DockerEnvHandler):
    """GET envs/{name}/registry: asks the registry whether it has the current image."""

    @web.authenticated
    @authorized
    async def get(self, name: str) -> None:
        if not self.ext.registry:
            raise ApiError(400, NO_REGISTRY, "registry")
        state = await self.environments.registry(name)
        if state is None:
            raise ApiError(400, NO_REGISTRY, "registry")
        self.reply(state.to_json())


class OperationStartHandler(DockerEnvHandler):
    """POST envs/{name}/builds, envs/{name}/push and envs/{name}/pull."""

    @web.authenticated
    @authorized
    async def post(self, name: str, action: str) -> None:
        body = self.json_body()
        envs = self.environments
        if action == "builds":
            options = BuildOptions.from_json(body)
        elif body:
            raise FieldError(sorted(body)[0], f"{action} takes no options")
        elif not self.ext.registry:
            raise ApiError(400, NO_REGISTRY, "registry")
        await self.environments.check_engine()
        loc = await envs.location(name)
        if action == "builds":
            op = envs.build(loc, options)
        elif action == "push":
            op = envs.push(loc)
        else:
            op = envs.pull(loc)
        self.started(op)


class OperationHandler(DockerEnvHandler):
    """GET and DELETE (cancel) operations/{id}; builds/{id} is the same, its former name."""

    def _operation(self, operation_id: str) -> tuple[Operation, Callable[[str], Any]]:
        found = self.find_operation(operation_id)
        if found is None:
            raise ApiError(404, f"no build, push or pull with id {operation_id}")
        return found

    @web.authenticated
    @authorized
    async def get(self, operation_id: str) -> None:
        offset = self.offset_argument()
        self.reply(self._operation(operation_id)[0].to_json(offset))

    @web.authenticated
    @authorized
    async def delete(self, operation_id: str) -> None:
        op, cancel = self._operation(operation_id)
        cancel(operation_id)
        self.reply(op.to_json(len(op.log)), status=202)


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
        unknown = body.keys() - {"path", *Resources.FIELDS}
        if unknown:
            raise FieldError(sorted(unknown)[0], "unknown kernel option")
        resources = Resources.from_json(body)
        path = body.get("path", "")
        if not isinstance(path, str):
            raise FieldError("path", "must be a folder of the workspace")
        await self.environments.check_engine()
        await self.environments.location(name)
        try:
            kernel_id = await self.kernel_manager.start_kernel(
                kernel_name=kernelspecs.kernel_name(name),
                path=cast("ApiPath", path),
                env={**os.environ, **resources.kernel_env()},
            )
        except NoSuchKernel as exc:
            raise ApiError(409, f"{name} is not built yet: build it first") from exc
        except (RuntimeError, ValueError, PermissionError) as exc:
            # the provisioner's words: no GPU runtime, a root workspace, …
            if isinstance(exc, FieldError):
                raise
            raise ApiError(409, str(exc)) from exc
        model = await ensure_async(self.kernel_manager.kernel_model(kernel_id))
        self.set_header("Location", self.base_url + f"api/kernels/{kernel_id}")
        self.reply(model, status=201)


HANDLERS: list[tuple[str, type[DockerEnvHandler]]] = [
    (route("status"), StatusHandler),
    (route("envs"), EnvsHandler),
    (route(f"envs/{ENV_NAME}"), EnvHandler),
    (route(f"envs/{ENV_NAME}/(?P<action>builds|push|pull)"), OperationStartHandler),
    (route(f"envs/{ENV_NAME}/registry"), RegistryHandler),
    (route(f"envs/{ENV_NAME}/kernels"), KernelsHandler),
    (route(f"operations/{OPERATION_ID}"), OperationHandler),
    (route(f"builds/{OPERATION_ID}"), OperationHandler),  # the former name, kept for clients
]
