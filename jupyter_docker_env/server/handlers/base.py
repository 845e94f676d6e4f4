"""What every REST handler of the extension shares: authorization, JSON in and out, and one
table that maps domain errors to HTTP statuses.

Handlers stay thin: parse, await a service, reply. A domain error raised by a service becomes its
4xx/503 here, with a JSON ``{message, field}`` body; anything else is a logged 500.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from jupyter_client.kernelspec import NoSuchKernel
from jupyter_server.base.handlers import APIHandler
from jupyter_server.extension.handler import ExtensionHandlerMixin
from tornado import web

from ...engine import EngineUnavailable
from ...environments.manager import EnvConflict, EnvironmentManager, EnvNotFound, EnvReadOnly
from ...models import FieldError, nesting_depth
from ...operations import Operation, OperationFailed
from ...runs.manager import RunConflict, RunManager, RunNotFound, RunRefused
from ...serving.builder import ServingNotFound
from ...serving.manager import ServingManager

if TYPE_CHECKING:
    from ..app import DockerEnvApp

AUTH_RESOURCE = "docker_env"
NAMESPACE = "jupyter-docker-env/api"
ENV_NAME = r"(?P<name>[a-z0-9][a-z0-9_.-]{0,62})"
OPERATION_ID = r"(?P<operation_id>[0-9a-f]{12})"
RUN_ID = r"(?P<run_id>[0-9a-f]{12})"
MAX_BODY_DEPTH = 32

#: Domain errors and the HTTP status each one means.
STATUS_FOR: tuple[tuple[type[BaseException], int], ...] = (
    (FieldError, 400),
    (EnvReadOnly, 403),
    (EnvNotFound, 404),
    (RunNotFound, 404),
    (ServingNotFound, 404),
    (EnvConflict, 409),
    (OperationFailed, 409),
    (RunConflict, 409),
    (RunRefused, 409),
    (NoSuchKernel, 409),
    (EngineUnavailable, 503),
)


class ApiError(web.HTTPError):
    """An error answered as it is, for conditions a handler finds itself."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(status, log_message=message.replace("%", "%%"))
        self.message = message
        self.field = field


def route(pattern: str) -> str:
    return rf"/{NAMESPACE}/{pattern}"


def status_for(exc: BaseException | None) -> int | None:
    for kind, status in STATUS_FOR:
        if isinstance(exc, kind):
            return status
    return None


class DockerEnvHandler(ExtensionHandlerMixin, APIHandler):
    auth_resource = AUTH_RESOURCE

    @property
    def ext(self) -> DockerEnvApp:
        return self.settings["docker_env"]  # type: ignore[no-any-return]

    @property
    def environments(self) -> EnvironmentManager:
        return self.ext.environments

    @property
    def runs(self) -> RunManager:
        return self.ext.runs

    @property
    def serving(self) -> ServingManager:
        return self.ext.serving

    def find_operation(self, operation_id: str) -> tuple[Operation, Callable[[str], Any]] | None:
        """An operation of any service, and how to cancel it."""
        for service in (self.environments, self.serving):
            op = service.operation(operation_id)
            if op is not None:
                return op, service.cancel
        return None

    # -- errors ----------------------------------------------------------------------------
    def send_error(self, status_code: int = 500, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        super().send_error(status_for(exc) or status_code, **kwargs)

    def log_exception(self, typ: Any, value: BaseException | None, tb: Any) -> None:
        if status_for(value) is not None:
            self.log.warning("%s %s: %s", self.request.method, self.request.path, value)
            return
        super().log_exception(typ, value, tb)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, (ApiError, FieldError)):
            message, field = exc.message, exc.field
        elif status_for(exc) is not None:
            message, field = str(exc), getattr(exc, "field", None)
        else:
            super().write_error(status_code, **kwargs)  # logged, and no internals in the body
            return
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"message": message, "field": field}))

    # -- JSON in and out -------------------------------------------------------------------
    def json_body(self) -> dict[str, Any]:
        if not self.request.body:
            return {}
        try:
            body = json.loads(self.request.body)
        except (ValueError, RecursionError) as exc:
            raise ApiError(400, f"the request body is not valid JSON: {exc}", "body") from exc
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object", "body")
        for key, value in body.items():
            if nesting_depth(value, MAX_BODY_DEPTH, 1) > MAX_BODY_DEPTH:
                raise ApiError(400, "is nested too deeply", key)
        return body

    def offset_argument(self) -> int:
        offset = self.get_argument("offset", "0")
        if not offset.isdigit() or len(offset) > 12:
            raise ApiError(400, "offset must be a non-negative integer", "offset")
        return int(offset)

    def reply(self, data: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(json.dumps(data))

    def started(self, op: Operation) -> None:
        """202 with the operation, which clients follow at its ``Location``."""
        self.set_header("Location", self.base_url + route(f"operations/{op.id}").lstrip("/"))
        self.reply(op.to_json(), status=202)
