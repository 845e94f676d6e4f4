"""Who is asking: the caller's hub API token → the hub user, their groups and running servers.

The caller's own token answers "who am I" (``GET /hub/api/user``); the broker's service token
reads the rest of the user's model (admin flag, groups, servers and their state, which holds the
id of the container DockerSpawner started). Identities are cached briefly (``ttl`` seconds) by a
hash of the token, so a revoked token stops working within that time; servers are read fresh
whenever a container starts.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from .policy import Identity

MAX_CACHED = 10_000


class Unauthenticated(Exception):
    """No token, or one the hub does not accept (401), or not a user's (403)."""

    def __init__(self, message: str, status: int = 401) -> None:
        super().__init__(message)
        self.status = status


class HubUnavailable(Exception):
    """The hub did not answer; the message says where the broker looked."""


@dataclass(frozen=True)
class Server:
    """A running single-user server of the user: its name and its container's id."""

    name: str
    container_id: str


class HubUsers:
    def __init__(self, api_url: str, token: str, ttl: float = 30.0) -> None:
        self.api_url = api_url.rstrip("/")
        self.token = token
        self.ttl = ttl
        self._cache: dict[str, tuple[float, Identity]] = {}

    async def _get(self, path: str, token: str) -> dict[str, Any]:
        request = HTTPRequest(
            f"{self.api_url}/{path}",
            headers={"Authorization": f"token {token}"},
            request_timeout=15,
            connect_timeout=5,
        )
        try:
            response = await AsyncHTTPClient().fetch(request)
        except HTTPClientError as exc:
            if exc.code in (401, 403):
                raise Unauthenticated("the hub does not accept this token", 401) from None
            if exc.code == 404:
                raise Unauthenticated("the hub knows no such user", 403) from None
            raise HubUnavailable(f"the hub at {self.api_url} answered {exc.code}") from None
        except OSError as exc:
            raise HubUnavailable(f"the hub at {self.api_url} cannot be reached: {exc}") from None
        data = json.loads(response.body)
        if not isinstance(data, dict):
            raise HubUnavailable(f"the hub at {self.api_url} sent no user model")
        return data

    async def identify(self, token: str) -> Identity:
        """The hub user who owns ``token``; Unauthenticated for anything else."""
        if not token:
            raise Unauthenticated("send your hub API token: Authorization: token …")
        key = hashlib.sha256(token.encode()).hexdigest()
        now = time.monotonic()
        cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        whoami = await self._get("user", token)
        if whoami.get("kind") != "user" or not isinstance(whoami.get("name"), str):
            raise Unauthenticated(
                "only hub users may use the broker (this token is a service's)", 403
            )
        model = await self.user(whoami["name"])
        identity = Identity(
            name=whoami["name"],
            admin=bool(model.get("admin")),
            groups=tuple(sorted(str(g) for g in model.get("groups") or ())),
        )
        if len(self._cache) >= MAX_CACHED:
            self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
            if len(self._cache) >= MAX_CACHED:
                self._cache.clear()
        self._cache[key] = (now + self.ttl, identity)
        return identity

    async def user(self, name: str) -> dict[str, Any]:
        """The user's model as the broker's own token may read it."""
        return await self._get(f"users/{quote(name, safe='')}", self.token)

    async def servers(self, name: str) -> list[Server]:
        """The user's running servers that DockerSpawner started in containers (fresh)."""
        model = await self.user(name)
        out = []
        for server_name, server in (model.get("servers") or {}).items():
            state = server.get("state") or {}
            container = state.get("object_id") if isinstance(state, dict) else None
            if server.get("ready") and isinstance(container, str) and container:
                out.append(Server(server_name, container))
        return out
