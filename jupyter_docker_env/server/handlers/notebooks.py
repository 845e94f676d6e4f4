"""REST routes for notebooks that carry their environment (``metadata.docker_env``).

The notebook is read through the server's contents manager, so reading it needs the ``read``
permission on ``contents`` besides the ``docker_env`` ones (GET ``read``, POST ``write``).
"""

from __future__ import annotations

from typing import Any

from jupyter_server.auth.decorator import authorized
from jupyter_server.utils import ensure_async
from tornado import web

from ...models import FieldError
from ...notebooks.service import NotebookEnvironments
from .base import ApiError, DockerEnvHandler, route


class NotebookHandler(DockerEnvHandler):
    @property
    def notebooks(self) -> NotebookEnvironments:
        return self.ext.notebooks

    async def notebook(self, path: Any) -> Any:
        """The notebook at ``path`` (JSON), read as its user may read it."""
        if not self.authorizer.is_authorized(self, self.current_user, "read", "contents"):
            raise ApiError(403, "you may not read notebooks on this server")
        if not isinstance(path, str) or not path.strip("/"):
            raise FieldError("path", "give the notebook's path, relative to the workspace")
        model = await ensure_async(self.contents_manager.get(path, content=True, type="notebook"))
        return model["content"]


class NotebookEnvHandler(NotebookHandler):
    """GET notebooks/env?path=…: the notebook's recorded environment against the one here."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        path = self.get_argument("path", "")
        comparison = await self.notebooks.compare(path, await self.notebook(path))
        self.reply(comparison.to_json())


class NotebookRestoreHandler(NotebookHandler):
    """POST notebooks/env/restore {path, name?}: recreate the notebook's environment."""

    @web.authenticated
    @authorized
    async def post(self) -> None:
        body = self.json_body()
        unknown = body.keys() - {"path", "name"}
        if unknown:
            raise FieldError(sorted(unknown)[0], "unknown option; known: name, path")
        name = body.get("name")
        if name is not None and not isinstance(name, str):
            raise FieldError("name", "must be an environment name")
        path = body.get("path")
        notebook = await self.notebook(path)
        op = await self.notebooks.restore(str(path), notebook, name or None)
        self.set_header("Location", self.base_url + route(f"operations/{op.id}").lstrip("/"))
        self.reply(op.to_json(), status=202)


HANDLERS: list[tuple[str, type[DockerEnvHandler]]] = [
    (route("notebooks/env"), NotebookEnvHandler),
    (route("notebooks/env/restore"), NotebookRestoreHandler),
]
