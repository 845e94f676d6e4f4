"""REST routes for serving images: build one of an environment from a model and a handler in the
workspace (an operation, followed at ``operations/{id}`` like builds), list them with their
environment's image size, push and delete them.

Every verb is authenticated and authorized for the ``docker_env`` resource: GET needs ``read``,
everything else ``write`` (a build runs code).
"""

from __future__ import annotations

from jupyter_server.auth.decorator import authorized
from tornado import web

from ...models import FieldError, ServingOptions
from .base import ENV_NAME, ApiError, DockerEnvHandler, route

IMAGE_ID = r"(?P<image_id>(?:sha256:)?[0-9a-f]{12,64})"


class ServingImagesHandler(DockerEnvHandler):
    """GET serving[?env=NAME]: the serving images, each with its environment's image size."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        env = self.get_argument("env", "") or None
        images = await self.serving.list_all(env)
        self.reply({"images": [image.to_json() for image in images]})


class EnvServingHandler(DockerEnvHandler):
    """POST envs/{name}/serving: build a serving image of a built environment."""

    @web.authenticated
    @authorized
    async def post(self, name: str) -> None:
        options = ServingOptions.from_json(self.json_body())
        await self.environments.check_engine()
        loc = await self.environments.location(name)
        root = self.environments.root_dir
        request = await self.serving.request(loc, options, root, confine=True)
        self.started(self.serving.build(loc, request))


class ServingImageHandler(DockerEnvHandler):
    """GET and DELETE serving/{id}."""

    @web.authenticated
    @authorized
    async def get(self, image_id: str) -> None:
        self.reply((await self.serving.get(image_id)).to_json())

    @web.authenticated
    @authorized
    async def delete(self, image_id: str) -> None:
        await self.serving.remove(image_id)
        self.set_status(204)
        self.finish()


class ServingPushHandler(DockerEnvHandler):
    """POST serving/{id}/push: push to the configured registry, as REGISTRY/ENV-serving."""

    @web.authenticated
    @authorized
    async def post(self, image_id: str) -> None:
        body = self.json_body()
        if body:
            raise FieldError(sorted(body)[0], "push takes no options")
        if not self.ext.registry:
            raise ApiError(
                400, "no registry is configured: set c.DockerEnvApp.registry", "registry"
            )
        await self.environments.check_engine()
        self.started(await self.serving.push(image_id))


HANDLERS: list[tuple[str, type[DockerEnvHandler]]] = [
    (route("serving"), ServingImagesHandler),
    (route(f"serving/{IMAGE_ID}"), ServingImageHandler),
    (route(f"serving/{IMAGE_ID}/push"), ServingPushHandler),
    (route(f"envs/{ENV_NAME}/serving"), EnvServingHandler),
]
