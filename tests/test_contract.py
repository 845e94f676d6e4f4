"""Authorization, generated from the contract: every path and verb of openapi.yaml, and every
route of the handler table, through a real server.

openapi.yaml names, per operation, the (resource, action) pairs the server checks
(``x-authorization``). For each operation these tests prove: without credentials → 403; with an
authorizer that denies any one of its pairs → 403, before any service was asked to do anything;
the server asks about exactly those pairs; and a GET needs only ``read`` and asks the services
only to read. A route in the handler table that the contract does not describe fails the suite,
so a new route is covered the day it appears.
"""

from __future__ import annotations

import functools
import itertools
import json
import re
from collections.abc import Iterator
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
VERBS = ("get", "head", "options", "post", "put", "patch", "delete")
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
    """The handler answers ``verb`` with code of this package (not tornado's or jupyter_server's
    defaults: 405, and the CORS preflight)."""
    method = getattr(handler, verb)
    return method is not getattr(RequestHandler, verb) and method.__module__.startswith(
        "jupyter_docker_env"
    )


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


#: What a GET may ask of the services: reading only. A GET that changes anything (or a new read
#: that is not listed here) fails the test below.
READS = {
    "environments.status",
    "environments.list_all",
    "environments.get",
    "environments.registry",
    "environments.operation",
    "serving.list_all",
    "serving.get",
    "serving.operation",
    "runs.list_runs",
    "runs.get",
    "runs.read_log",
    "notebooks.compare",
    "warm.states",
    "contents_manager.get",
}


class Recorder:
    """Forwards to ``target`` and notes, as ``name.method``, every method called on it or on
    the services it holds (objects of this package, recorded under their attribute's name)."""

    def __init__(self, target: Any, name: str, calls: list[str]) -> None:
        self._target, self._name, self._calls = target, name, calls

    def __getattr__(self, attr: str) -> Any:
        value = getattr(self._target, attr)
        if type(value).__module__.startswith("jupyter_docker_env."):
            return Recorder(value, attr, self._calls)
        if not callable(value):
            return value

        @functools.wraps(value)
        def called(*args: Any, **kwargs: Any) -> Any:
            self._calls.append(f"{self._name}.{attr}")
            return value(*args, **kwargs)

        return called


def record_services(serverapp: Any, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """From now on, what handlers ask of the services (ours, kernels', contents') is noted."""
    calls: list[str] = []
    settings = serverapp.web_app.settings
    for key in ("docker_env", "kernel_manager", "contents_manager"):
        monkeypatch.setitem(settings, key, Recorder(settings[key], key, calls))
    return calls


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


def served_routes(router: Any) -> Iterator[tuple[str, type]]:
    """(pattern, handler class) of every route a tornado router serves, nested ones too."""
    for rule in router.rules:
        if hasattr(rule.target, "rules"):
            yield from served_routes(rule.target)
        elif isinstance(rule.target, type) and hasattr(rule.matcher, "regex"):
            yield rule.matcher.regex.pattern, rule.target


def test_the_server_serves_nothing_of_ours_beyond_the_handler_table(jp_serverapp: Any) -> None:
    # (a route added elsewhere, e.g. in the app's start, would escape the tests above)
    ours = {handler for _, handler in HANDLERS}
    served = [
        (pattern, handler)
        for pattern, handler in served_routes(jp_serverapp.web_app.default_router)
        if API in pattern or handler.__module__.startswith("jupyter_docker_env")
    ]
    assert len(served) == len(HANDLERS), served
    for pattern, handler in served:
        assert handler in ours, (pattern, handler)
        assert any(pattern.endswith(p.removeprefix("/") + "$") for p, _ in HANDLERS), pattern


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
    jp_fetch: Any,
    jp_serverapp: Any,
    monkeypatch: pytest.MonkeyPatch,
    path: str,
    verb: str,
    pairs: list[tuple[str, str]],
) -> None:
    calls = record_services(jp_serverapp, monkeypatch)
    # Given a user allowed everything, the server asks about exactly the documented pairs
    authorizer = use_authorizer(jp_serverapp, deny=set())
    resp = await request(jp_fetch, path, verb)
    assert resp.code != 403, (verb, path, resp.body)
    assert sorted(set(authorizer.asked)) == sorted(set(pairs)), (verb, path, authorizer.asked)
    # and a GET only reads
    if verb == "get":
        assert set(calls) <= READS, (path, f"a GET asks for {sorted(set(calls) - READS)}")
    # and a user denied any one of them is refused before any service is asked for anything
    for pair in pairs:
        use_authorizer(jp_serverapp, deny={pair})
        calls.clear()
        resp = await request(jp_fetch, path, verb)
        assert resp.code == 403, (verb, path, pair, resp.code)
        assert calls == [], (verb, path, pair, f"did {calls} before refusing")


def test_reads_are_reading_methods_of_the_services(jp_serverapp: Any) -> None:
    """The READS list names real methods (so that it cannot rot)."""
    settings = jp_serverapp.web_app.settings
    for name in READS:
        service, method = name.split(".")
        owner = settings.get(service) or getattr(settings["docker_env"], service)
        assert callable(getattr(owner, method)), name


def test_a_get_needs_only_read_and_every_change_needs_write() -> None:
    for path, verb, pairs in OPERATIONS:
        ours = {action for resource, action in pairs if resource == "docker_env"}
        if verb in ("get", "head"):
            assert {action for _, action in pairs} == {"read"}, (verb, path, pairs)
        else:
            assert "write" in ours, (verb, path, pairs)
