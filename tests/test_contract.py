"""Authorization, generated from the contract: every path and verb of openapi.yaml, and every
route of the handler table, through a real server.

openapi.yaml names, per operation, the (resource, action) pairs the server checks
(``x-authorization``). For each operation these tests prove: without credentials → 403; with an
authorizer that denies any one of its pairs → 403; and the server asks about exactly those pairs.
A route in the handler table that the contract does not describe fails the suite, so a new route
is covered the day it appears.
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from jupyter_server.auth import Authorizer
from tornado.web import RequestHandler

import jupyter_docker_env
from jupyter_docker_env.server.handlers import HANDLERS

API = "jupyter-docker-env/api"
OPENAPI = yaml.safe_load((Path(jupyter_docker_env.__file__).parent / "openapi.yaml").read_text())
VERBS = ("get", "post", "put", "patch", "delete")
# Path parameters for which the contract gives no example.
SAMPLES = {"name": "nope", "id": "0123456789ab"}


def concrete(path: str) -> str:
    """The path with each parameter replaced by its example (or a sample value)."""
    params = {
        p["name"]: p.get("example") or p.get("schema", {}).get("example")
        for p in OPENAPI["paths"][path].get("parameters", [])
        if p.get("in") == "path"
    }
    return re.sub(
        r"\{(\w+)\}", lambda m: str(params.get(m[1]) or SAMPLES.get(m[1], "x")), path
    ).lstrip("/")


OPERATIONS = [
    (path, verb, [(a["resource"], a["action"]) for a in item[verb]["x-authorization"]])
    for path, item in OPENAPI["paths"].items()
    for verb in VERBS
    if verb in item
]
IDS = [f"{verb.upper()} {path}" for path, verb, _ in OPERATIONS]


def implements(handler: type, verb: str) -> bool:
    return getattr(handler, verb) is not getattr(RequestHandler, verb)


def route_variants(pattern: str) -> list[str]:
    """A route regex with each group of literal alternatives expanded, one regex each."""
    groups = list(re.finditer(r"\(\?P<\w+>([a-z_|-]+)\)", pattern))
    if not groups:
        return [pattern]
    out = []
    for choice in itertools.product(*(g[1].split("|") for g in groups)):
        text, last = "", 0
        for g, alternative in zip(groups, choice, strict=True):
            text += pattern[last : g.start()] + re.escape(alternative)
            last = g.end()
        out.append(text + pattern[last:])
    return out


@pytest.fixture
def jp_server_config(jp_root_dir: Path) -> dict[str, Any]:
    return {"ServerApp": {"jpserver_extensions": {"jupyter_docker_env": True}}}


class Recording(Authorizer):
    """Says yes to everything but the pairs in ``deny``, and remembers what it was asked."""

    deny: set[tuple[str, str]] = set()
    asked: list[tuple[str, str]] = []

    def is_authorized(self, handler: Any, user: Any, action: str, resource: str) -> bool:
        self.asked.append((resource, action))
        return (resource, action) not in self.deny


def use_authorizer(serverapp: Any, deny: set[tuple[str, str]]) -> Recording:
    settings = serverapp.web_app.settings
    authorizer = Recording(parent=serverapp, identity_provider=settings["identity_provider"])
    authorizer.deny, authorizer.asked = deny, []
    settings["authorizer"] = authorizer
    return authorizer


async def request(jp_fetch: Any, path: str, verb: str, **kw: Any) -> Any:
    body = {"body": json.dumps({})} if verb in ("post", "put", "patch") else {}
    return await jp_fetch(
        API, *concrete(path).split("/"), method=verb.upper(), raise_error=False, **body, **kw
    )


def test_every_route_of_the_handler_table_is_in_the_contract() -> None:
    prefix = f"/{API}/"
    served = [
        (verb, variant)
        for pattern, handler in HANDLERS
        for variant in route_variants(pattern.removeprefix(prefix))
        for verb in VERBS
        if implements(handler, verb)
    ]
    assert all(pattern.startswith(prefix) for pattern, _ in HANDLERS)
    missing = [
        f"{verb.upper()} {variant}"
        for verb, variant in served
        if not any(v == verb and re.fullmatch(variant, concrete(p)) for p, v, _ in OPERATIONS)
    ]
    assert not missing, f"routes missing from openapi.yaml: {missing}"


def test_every_operation_of_the_contract_is_served() -> None:
    patterns = [p[len(f"/{API}/") :] for p, _ in HANDLERS]
    for path, verb, _ in OPERATIONS:
        served = [
            h
            for (pattern, h), stripped in zip(HANDLERS, patterns, strict=True)
            if re.fullmatch(stripped, concrete(path))
        ]
        assert served, f"{path} is in openapi.yaml but no handler serves it"
        assert any(implements(h, verb) for h in served), f"{verb.upper()} {path} is not served"


@pytest.mark.parametrize(("path", "verb", "pairs"), OPERATIONS, ids=IDS)
async def test_without_credentials_every_operation_is_refused(
    jp_fetch: Any, path: str, verb: str, pairs: list[tuple[str, str]]
) -> None:
    resp = await request(jp_fetch, path, verb, headers={"Authorization": "token wrong"})
    assert resp.code == 403, (verb, path, resp.code)


@pytest.mark.parametrize(("path", "verb", "pairs"), OPERATIONS, ids=IDS)
async def test_each_operation_checks_exactly_the_permissions_the_contract_names(
    jp_fetch: Any, jp_serverapp: Any, path: str, verb: str, pairs: list[tuple[str, str]]
) -> None:
    # Given a user allowed everything, the server asks about exactly the documented pairs
    authorizer = use_authorizer(jp_serverapp, deny=set())
    resp = await request(jp_fetch, path, verb)
    assert resp.code != 403, (verb, path, resp.body)
    ours = [(r, a) for r, a in authorizer.asked if r in {r for r, _ in pairs} | {"docker_env"}]
    assert sorted(set(ours)) == sorted(set(pairs)), (verb, path, authorizer.asked)
    # and a user denied any one of them is refused, whatever else they may do
    for pair in pairs:
        use_authorizer(jp_serverapp, deny={pair})
        resp = await request(jp_fetch, path, verb)
        assert resp.code == 403, (verb, path, pair, resp.code)
