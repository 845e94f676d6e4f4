"""The broker's REST API (described in broker/openapi.yaml), under its base path (the hub
service's prefix, e.g. /services/docker-env-broker/).

Every request carries the caller's hub API token (``Authorization: token …``). Handlers are thin:
identify the caller, parse the body, await the :class:`~.service.Broker`, reply. A refusal is a
JSON ``{message, field}`` with its status; anything unexpected is a logged 500 with no internals.
"""

from __future__ import annotations

import json
import tempfile
from typing import Any

from tornado import web

from ..containers import ContainerError
from ..engine import EngineError, EngineUnavailable
from ..models import nesting_depth
from .identity import HubUnavailable, HubUsers, Unauthenticated
from .policy import ConfigError, Identity, Refused, check_container_path, check_labels
from .service import Broker

MAX_DEPTH = 16
CONTAINER_ID = r"(?P<container_id>[^/]{1,128})"
OPERATION_ID = r"(?P<operation_id>[^/]{1,64})"
ENV_NAME = r"(?P<name>[^/]{1,128})"


def _status_of(exc: BaseException | None) -> tuple[int, str, str | None, str | None] | None:
    """(status, message, field, kind) for the errors a caller can act on."""
    if isinstance(exc, Refused):
        return exc.status, exc.message, exc.field, "refused"
    if isinstance(exc, Unauthenticated):
        return exc.status, str(exc), None, "unauthenticated"
    if isinstance(exc, ConfigError):
        return 403, f"the broker's configuration refuses this: {exc}", None, "refused"
    if isinstance(exc, HubUnavailable | EngineUnavailable):
        return 503, str(exc), None, "unavailable"
    if isinstance(exc, ContainerError):
        return 409, _explained(exc), None, exc.kind
    if isinstance(exc, EngineError):
        return 409, str(exc), None, "engine"
    return None


def _explained(exc: ContainerError) -> str:
    """The engine's refusal in a hub user's words."""
    if exc.kind == "no-gpu-runtime":
        return (
            f"GPUs were asked for, but this hub's Docker engine has no NVIDIA runtime ({exc}): "
            "start without GPUs, or ask an administrator"
        )
    if exc.kind == "no-image":
        return f"the environment's image is not on the hub's Docker engine ({exc}): build it again"
    return f"the hub's Docker engine could not start the container: {exc}"


class BrokerHandler(web.RequestHandler):
    who: Identity

    @property
    def broker(self) -> Broker:
        return self.settings["broker"]  # type: ignore[no-any-return]

    @property
    def hub(self) -> HubUsers:
        return self.settings["hub"]  # type: ignore[no-any-return]

    def check_xsrf_cookie(self) -> None:
        """Token-authenticated API, no cookies: nothing to forge."""

    async def prepare(self) -> None:
        scheme, _, token = self.request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() not in ("token", "bearer"):
            token = ""
        self.who = await self.hub.identify(token.strip())

    # -- errors ----------------------------------------------------------------------------
    def log_exception(self, typ: Any, value: BaseException | None, tb: Any) -> None:
        known = _status_of(value)
        if known is not None:
            self.broker.log.info("%s %s: %s", self.request.method, self.request.path, known[1])
            return
        super().log_exception(typ, value, tb)

    def send_error(self, status_code: int = 500, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        known = _status_of(exc)
        super().send_error(known[0] if known else status_code, **kwargs)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        known = _status_of(exc)
        if known is not None:
            _, message, field, kind = known
        elif isinstance(exc, web.HTTPError) and exc.log_message:
            message, field, kind = exc.log_message % exc.args, None, None
        else:
            message, field, kind = "the broker failed; its log says why", None, "internal"
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"message": message, "field": field, "kind": kind}))

    # -- JSON ------------------------------------------------------------------------------
    def body(self) -> Any:
        if not self.request.body:
            return {}
        try:
            data = json.loads(self.request.body)
        except (ValueError, RecursionError) as exc:
            raise Refused(400, f"the request body is not valid JSON: {exc}") from None
        if nesting_depth(data, MAX_DEPTH) > MAX_DEPTH:
            raise Refused(400, "the request body is nested too deeply")
        return data

    def flag(self, name: str) -> bool:
        return self.get_argument(name, "").lower() in ("1", "true", "yes")

    def number(self, name: str, default: int, most: int) -> int:
        raw = self.get_argument(name, str(default))
        if not raw.isascii() or not raw.isdigit() or len(raw) > 9:
            raise Refused(400, f"{name} must be a whole number", name)
        return min(int(raw), most)

    def reply(self, data: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(data))


def operation_json(op: Any, name: str, offset: int = 0) -> dict[str, Any]:
    data: dict[str, Any] = {**op.to_json(offset), "env": name}
    data["result"] = op.result.to_json() if op.state == "succeeded" and op.result else None
    return data


class WhoAmIHandler(BrokerHandler):
    async def get(self) -> None:
        self.reply(self.broker.whoami(self.who))


class StatusHandler(BrokerHandler):
    async def get(self) -> None:
        self.reply({"engine": await self.broker.status(), "user": self.broker.whoami(self.who)})


class ImagesHandler(BrokerHandler):
    async def get(self) -> None:
        self.reply(await self.broker.images(self.who, self.flag("all")))


class ImageHandler(BrokerHandler):
    async def delete(self, name: str) -> None:
        namespace = self.get_argument("namespace", "")
        removed = await self.broker.delete_images(self.who, name, namespace)
        self.reply({"removed": removed})


class BuildsHandler(BrokerHandler):
    async def get(self) -> None:
        ops = self.broker.operations_of(self.who, self.flag("all"))
        self.reply({"builds": [operation_json(op, name, len(op.log)) for op, name in ops]})

    async def post(self) -> None:
        op = await self.broker.start_build(self.who, self.body())
        self.set_header("Location", f"{self.request.path.rstrip('/')}/{op.id}")
        self.reply(operation_json(op, self.broker.operation(self.who, op.id)[1]), status=202)


class BuildHandler(BrokerHandler):
    async def get(self, operation_id: str) -> None:
        op, name = self.broker.operation(self.who, operation_id)
        self.reply(operation_json(op, name, self.number("offset", 0, 10**9)))

    async def delete(self, operation_id: str) -> None:
        op, name = self.broker.operation(self.who, operation_id)
        self.broker.operations.cancel(operation_id)
        self.reply(operation_json(op, name, len(op.log)), status=202)


class ContainersHandler(BrokerHandler):
    async def get(self) -> None:
        pairs = [raw.partition("=") for raw in self.get_arguments("label")]
        labels = check_labels({k: v for k, _, v in pairs}) if pairs else None
        found = await self.broker.list_containers(self.who, self.flag("all"), labels)
        self.reply({"containers": found})

    async def post(self) -> None:
        launched = await self.broker.launch(self.who, self.body(), self.request.remote_ip or "")
        self.reply(launched, status=201)


class ContainerHandler(BrokerHandler):
    async def get(self, container_id: str) -> None:
        state = await self.broker.state(self.who, container_id)
        if state is None:
            raise Refused(404, f"the container {container_id} is gone")
        self.reply(
            {
                "running": state.running,
                "exit_code": state.exit_code,
                "oom_killed": state.oom_killed,
                "error": state.error,
            }
        )

    async def delete(self, container_id: str) -> None:
        await self.broker.remove(self.who, container_id)
        self.set_status(204)
        self.finish()


class SignalHandler(BrokerHandler):
    async def post(self, container_id: str) -> None:
        body = self.body()
        if not isinstance(body, dict) or set(body) != {"signal"}:
            raise Refused(400, 'send {"signal": NUMBER}', "signal")
        await self.broker.signal(self.who, container_id, body["signal"])
        self.set_status(204)
        self.finish()


class LogsHandler(BrokerHandler):
    async def get(self, container_id: str) -> None:
        tail = self.number("tail", 20, 10_000)
        self.reply({"logs": await self.broker.logs(self.who, container_id, tail)})


class ChangesHandler(BrokerHandler):
    async def get(self, container_id: str) -> None:
        self.reply({"changes": await self.broker.changes(self.who, container_id)})


class ArchiveHandler(BrokerHandler):
    """A tar of a path in the container, streamed from a spooled copy (a run's outputs)."""

    async def get(self, container_id: str) -> None:
        path = check_container_path(self.get_argument("path", None))
        with tempfile.SpooledTemporaryFile(max_size=8 * 1024**2) as tar:
            await self.broker.archive(self.who, container_id, path, tar)
            tar.seek(0)
            self.set_header("Content-Type", "application/x-tar")
            while chunk := tar.read(1024**2):
                self.write(chunk)
                await self.flush()
        self.finish()


class SweepHandler(BrokerHandler):
    async def post(self) -> None:
        body = self.body()
        if not isinstance(body, dict) or set(body) != {"instance"}:
            raise Refused(400, 'send {"instance": ID}', "instance")
        self.reply({"removed": await self.broker.sweep(self.who, body["instance"])})


def handlers(base: str) -> list[tuple[str, type[BrokerHandler]]]:
    api = f"{base.rstrip('/')}/api"
    return [
        (f"{api}/whoami", WhoAmIHandler),
        (f"{api}/status", StatusHandler),
        (f"{api}/images", ImagesHandler),
        (f"{api}/images/{ENV_NAME}", ImageHandler),
        (f"{api}/builds", BuildsHandler),
        (f"{api}/builds/{OPERATION_ID}", BuildHandler),
        (f"{api}/containers", ContainersHandler),
        (f"{api}/containers/{CONTAINER_ID}", ContainerHandler),
        (f"{api}/containers/{CONTAINER_ID}/signal", SignalHandler),
        (f"{api}/containers/{CONTAINER_ID}/logs", LogsHandler),
        (f"{api}/containers/{CONTAINER_ID}/changes", ChangesHandler),
        (f"{api}/containers/{CONTAINER_ID}/archive", ArchiveHandler),
        (f"{api}/sweep", SweepHandler),
    ]
