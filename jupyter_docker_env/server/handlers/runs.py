"""REST routes for training runs: create, list, get, read the log from an offset, cancel, delete.

Reading needs ``read`` on ``docker_env``; starting, cancelling and deleting need ``write``, and
starting also ``execute`` on ``kernels`` (a run executes code, as a kernel does).
"""

from __future__ import annotations

from jupyter_server.auth.decorator import authorized
from tornado import web

from ...models import RunRequest
from .base import RUN_ID, ApiError, DockerEnvHandler, route


def _user(handler: DockerEnvHandler) -> str:
    user = handler.current_user
    return str(getattr(user, "username", None) or getattr(user, "name", None) or "")


class RunsHandler(DockerEnvHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.reply({"runs": [run.to_json() for run in await self.runs.list_runs()]})

    @web.authenticated
    @authorized
    async def post(self) -> None:
        if not self.authorizer.is_authorized(self, self.current_user, "execute", "kernels"):
            raise ApiError(403, "you may not run code on this server")
        request = RunRequest.from_json(self.json_body())
        await self.environments.check_engine()
        run = await self.runs.create(request, user=_user(self))
        self.set_header("Location", self.base_url + route(f"runs/{run.id}").lstrip("/"))
        self.reply(run.to_json(), status=201)


class RunHandler(DockerEnvHandler):
    @web.authenticated
    @authorized
    async def get(self, run_id: str) -> None:
        self.reply((await self.runs.get(run_id)).to_json())

    @web.authenticated
    @authorized
    async def delete(self, run_id: str) -> None:
        await self.runs.delete(run_id)
        self.set_status(204)
        self.finish()


class RunLogHandler(DockerEnvHandler):
    """GET runs/{id}/log?offset=N: whole lines from N on, and the offset to ask for next."""

    @web.authenticated
    @authorized
    async def get(self, run_id: str) -> None:
        self.reply((await self.runs.read_log(run_id, self.offset_argument())).to_json())


class RunCancelHandler(DockerEnvHandler):
    """POST runs/{id}/cancel: SIGTERM now, SIGKILL after the grace period."""

    @web.authenticated
    @authorized
    async def post(self, run_id: str) -> None:
        run = await self.runs.cancel(run_id, by=_user(self))
        self.reply(run.to_json(), status=202)


HANDLERS: list[tuple[str, type[DockerEnvHandler]]] = [
    (route("runs"), RunsHandler),
    (route(f"runs/{RUN_ID}"), RunHandler),
    (route(f"runs/{RUN_ID}/log"), RunLogHandler),
    (route(f"runs/{RUN_ID}/cancel"), RunCancelHandler),
]
