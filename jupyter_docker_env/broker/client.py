"""How a single-user server talks to the launch broker: HTTP with the server's hub API token.

One :class:`BrokerClient` per process (``c.BrokerClient.*``), shared by the environment service
(blocking calls, from its worker threads) and the container back end (coroutines).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import requests
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest, HTTPResponse
from traitlets import Float, Unicode, default
from traitlets.config import SingletonConfigurable

from ..engine import EngineError, EngineUnavailable

URL_ENV = "JUPYTER_DOCKER_ENV_BROKER_URL"


class BrokerError(EngineError):
    """The broker refused or failed; ``status`` is its HTTP status, ``kind`` its classification
    ("refused", "no-image", "no-gpu-runtime", "engine", …), ``field`` the request key at fault."""

    def __init__(
        self, message: str, status: int = 0, field: str | None = None, kind: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.field = field
        self.kind = kind or ("refused" if 400 <= status < 500 else "engine")


class BrokerUnavailable(BrokerError, EngineUnavailable):
    """No broker answers (or none is configured); the message says where it was looked for."""


def quoted(part: str) -> str:
    return quote(part, safe="")


class BrokerClient(SingletonConfigurable):
    """The launch broker's address and this server's credentials."""

    url = Unicode(
        config=True,
        help=f"The launch broker's base URL, e.g. http://172.18.0.1:8765/services/docker-env-broker/"
        f" (default: ${URL_ENV}, which the hub's spawner can set for every server).",
    )
    token = Unicode(
        config=True,
        help="The hub API token that identifies this server's user to the broker (default: "
        "$JUPYTERHUB_API_TOKEN, which the hub gives every single-user server).",
    )
    timeout = Float(60.0, config=True, help="Seconds to wait for one answer of the broker.")

    @default("url")
    def _default_url(self) -> str:
        return os.environ.get(URL_ENV, "")

    @default("token")
    def _default_token(self) -> str:
        return os.environ.get("JUPYTERHUB_API_TOKEN", "")

    def endpoint(self, path: str) -> str:
        if not self.url:
            raise BrokerUnavailable(
                f"no launch broker is configured: set ${URL_ENV} (c.DockerSpawner.environment on "
                "the hub) or c.BrokerClient.url"
            )
        return f"{self.url.rstrip('/')}/api/{path}"

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"token {self.token}", "Content-Type": "application/json"}

    def _answer(self, url: str, status: int, text: str) -> Any:
        data: Any = None
        if text:
            try:
                data = json.loads(text)
            except ValueError:
                data = None
        if status < 300:
            return data
        if not isinstance(data, dict):
            raise BrokerError(f"the launch broker at {url} answered {status}", status)
        message = str(data.get("message") or f"the launch broker answered {status}")
        if status in (502, 503, 504):
            raise BrokerUnavailable(message, status, kind="unavailable")
        raise BrokerError(message, status, data.get("field"), data.get("kind"))

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """One blocking call (from a worker thread); the answer's JSON, or BrokerError."""
        url = self.endpoint(path)
        try:
            response = requests.request(
                method,
                url,
                data=None if body is None else json.dumps(body),
                headers=self._headers(),
                timeout=self.timeout,
            )
        except requests.RequestException as exc:
            raise BrokerUnavailable(
                f"the launch broker at {self.url} cannot be reached: {exc}"
            ) from None
        return self._answer(url, response.status_code, response.text)

    async def stream(self, path: str, write: Callable[[bytes], Any]) -> None:
        """GET ``path`` and hand its body to ``write`` chunk by chunk (a tar of a run's files)."""
        url = self.endpoint(path)
        status, refusal = [0], bytearray()

        def header(line: str) -> None:
            if line.startswith("HTTP/"):
                status[0] = int(line.split()[1])

        def chunk(data: bytes) -> None:
            if status[0] < 300:
                write(data)
            else:
                refusal.extend(data)

        request = HTTPRequest(
            url,
            headers=self._headers(),
            request_timeout=self.timeout * 10,
            connect_timeout=10,
            header_callback=header,
            streaming_callback=chunk,
        )
        response = await self._send(request)
        if response.code >= 300:
            self._answer(url, response.code, refusal.decode(errors="replace"))

    async def fetch(self, method: str, path: str, body: Any = None) -> Any:
        """One call from the event loop; the answer's JSON, or BrokerError."""
        url = self.endpoint(path)
        request = HTTPRequest(
            url,
            method=method,
            headers=self._headers(),
            body=None if body is None else json.dumps(body),
            allow_nonstandard_methods=True,
            request_timeout=self.timeout,
            connect_timeout=10,
        )
        response = await self._send(request)
        return self._answer(url, response.code, response.body.decode(errors="replace"))

    async def _send(self, request: HTTPRequest) -> HTTPResponse:
        """The broker's answer, whatever its status; BrokerUnavailable when there is none."""
        try:
            response = await AsyncHTTPClient().fetch(request, raise_error=False)
        except (OSError, HTTPClientError) as exc:
            raise BrokerUnavailable(
                f"the launch broker at {self.url} cannot be reached: {exc}"
            ) from None
        if response.code == 599:
            raise BrokerUnavailable(
                f"the launch broker at {self.url} cannot be reached: {response.error}"
            )
        return response
