"""The launch broker over HTTP, on the real Docker engine.

The broker runs as it does under a hub (its own thread and event loop, its own tornado server);
the hub's REST API is a small stand-in that knows three users' tokens and one service's
(tests/test_hub.py runs the real JupyterHub). Every container the broker starts here is
inspected on the engine: the user's ids, no capabilities, no privileges, only the user's
workspace, the user's own network, limits within the user's quota.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import re
import shutil
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openapi_schema_validator import OAS30Validator
from tornado import web
from traitlets.config import Config

import jupyter_docker_env
from jupyter_docker_env import labels as L
from jupyter_docker_env.broker.app import DockerEnvBroker
from jupyter_docker_env.broker.client import BrokerClient
from jupyter_docker_env.broker.handlers import handlers as broker_handlers
from jupyter_docker_env.broker.policy import CONTAINER_KEYS, user_key
from jupyter_docker_env.config import DockerEnvConfig
from jupyter_docker_env.engine import Engine
from jupyter_docker_env.environments.broker import BrokerEnvironmentManager
from jupyter_docker_env.models import BuildOptions

from .brokers import BASE_PATH, run_broker
from .conftest import CA_BUNDLE, JDE_PREFIX, JDE_SESSION, JDE_TEST_LABEL, jde_free_port

pytestmark = pytest.mark.docker

OPENAPI = yaml.safe_load(
    (Path(jupyter_docker_env.__file__).parent / "broker" / "openapi.yaml").read_text()
)
SUFFIX = JDE_SESSION[:6]
ALICE, BOB, CAROL = f"alice{SUFFIX}", f"bob{SUFFIX}", f"carol{SUFFIX}"
TOKENS = {"tok-alice": ALICE, "tok-bob": BOB, "tok-carol": CAROL}
BROKER_TOKEN = "tok-broker"
PREFIX = f"{JDE_PREFIX}/broker"
NETWORKS = f"{JDE_PREFIX}-user"
WORKSPACE_PATH = "/home/jovyan/work"


# -- a stand-in for the hub's REST API -----------------------------------------------------
class _HubHandler(web.RequestHandler):
    def _token(self) -> str:
        return self.request.headers.get("Authorization", "").removeprefix("token ")


class _WhoAmI(_HubHandler):
    def get(self) -> None:
        token = self._token()
        if token == "tok-service":
            self.finish({"kind": "service", "name": "some-service"})
        elif token in TOKENS:
            self.finish({"kind": "user", "name": TOKENS[token]})
        else:
            raise web.HTTPError(403)


class _User(_HubHandler):
    def get(self, name: str) -> None:
        if self._token() != BROKER_TOKEN or name not in TOKENS.values():
            raise web.HTTPError(404 if self._token() == BROKER_TOKEN else 403)
        groups = ["gpu-users"] if name == CAROL else []
        self.finish({"kind": "user", "name": name, "admin": name == CAROL, "groups": groups})


def fake_hub() -> web.Application:
    return web.Application([(r"/hub/api/user", _WhoAmI), (r"/hub/api/users/([^/]+)", _User)])


# -- the broker under test ------------------------------------------------------------------
@dataclass
class Running:
    url: str
    app: DockerEnvBroker
    workspaces: Path
    audit: list[str]

    def call(
        self, method: str, path: str, token: str = "tok-alice", body: Any = None, raw: Any = None
    ) -> requests.Response:
        headers = {"Authorization": f"token {token}"} if token else {}
        data = raw if raw is not None else (None if body is None else json.dumps(body))
        return requests.request(
            method, f"{self.url}api/{path}", data=data, headers=headers, timeout=120
        )


class _Audit(logging.Handler):
    def __init__(self, lines: list[str]) -> None:
        super().__init__()
        self.lines = lines

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def jde_broker(jde_engine: Engine, jde_base_image: str) -> Iterator[Running]:
    """The broker in its own thread, with a stand-in hub; everything it made is removed after."""
    workspaces = Path(tempfile.mkdtemp(prefix="jde-test-broker-ws-"))
    workspaces.chmod(0o755)
    for name in TOKENS.values():
        (workspaces / user_key(name) / "analysis").mkdir(parents=True)
        (workspaces / user_key(name) / f"{name}.txt").write_text(f"{name}'s data\n")
        if os.geteuid() == 0:
            for path in (workspaces / user_key(name), workspaces / user_key(name) / "analysis"):
                os.chown(path, 1000, 100)
    hub_port, broker_port = jde_free_port(), jde_free_port()
    config = Config()
    config.DockerEnvBroker.update(
        hub_api_url=f"http://127.0.0.1:{hub_port}/hub/api",
        api_token=BROKER_TOKEN,
        bind_url=f"http://127.0.0.1:{broker_port}",
        base_path=BASE_PATH,
        image_prefix=PREFIX,
        allowed_bases=[jde_base_image],
        default_base=jde_base_image,
        network_prefix=NETWORKS,
        workspace_volume=str(workspaces / "{username}"),
        workspace_path=WORKSPACE_PATH,
        state_dir=str(workspaces / ".state"),
        limits={"memory": "1g", "cpus": 1, "runs": 1, "kernels": 50, "builds": 1},
        user_limits={BOB: {"images": 0}},
        group_limits={"gpu-users": {"gpus": 1}},
        ca_bundle=CA_BUNDLE or "/etc/ssl/certs/ca-certificates.crt",
        reap_interval=0.0,
    )
    app, url, stop = run_broker(config, fake_hub(), hub_port, broker_port)
    audit: list[str] = []
    handler = _Audit(audit)  # after the app set up its audit log
    logging.getLogger("jupyter_docker_env.broker.audit").addHandler(handler)
    yield Running(url, app, workspaces, audit)
    stop()
    logging.getLogger("jupyter_docker_env.broker.audit").removeHandler(handler)
    remove_users_things(jde_engine, list(TOKENS.values()), NETWORKS)
    shutil.rmtree(workspaces, ignore_errors=True)


def remove_users_things(engine: Engine, users: list[str], network_prefix: str) -> None:
    """Remove the containers, sandboxes and networks the broker made for these hub users."""
    for name in users:
        network = f"{network_prefix}-{user_key(name)}"
        for c in engine.containers({L.HUB_USER: name}):
            engine.remove_container(c["Id"])
        for c in engine.containers({L.NETWORK: network}):
            engine.remove_container(c["Id"])
        engine.remove_network(network)


def check(response: requests.Response, status: int, path: str, method: str) -> Any:
    """Assert the status and validate the body against broker/openapi.yaml."""
    assert response.status_code == status, response.text
    if not response.text:
        return None
    body = response.json()
    op = OPENAPI["paths"][path][method.lower()]
    answer = op["responses"].get(str(status)) or {"$ref": "#/components/responses/Error"}
    if "$ref" in answer:
        answer = OPENAPI["components"]["responses"][answer["$ref"].rsplit("/", 1)[1]]
    schema = answer["content"]["application/json"]["schema"]
    OAS30Validator({"allOf": [schema], "components": OPENAPI["components"]}).validate(body)
    return body


def build(
    broker: Running, token: str, name: str, files: dict[str, str], **extra: Any
) -> dict[str, Any]:
    """Start a build, follow it to its end; return the last answer."""
    body = {"name": name, "files": files, **extra}
    started = check(broker.call("POST", "builds", token, body), 202, "/builds", "POST")
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        op = check(broker.call("GET", f"builds/{started['id']}", token), 200, "/builds/{id}", "GET")
        if op["state"] not in ("queued", "running"):
            return dict(op)
        time.sleep(0.5)
    raise AssertionError("the build did not end")


@pytest.fixture(scope="module")
def alice_image(jde_broker: Running) -> str:
    """Alice's environment "demo", built by the broker in her namespace."""
    op = build(jde_broker, "tok-alice", "demo", {"docker-env.toml": 'env = { DEMO = "yes" }\n'})
    assert op["state"] == "succeeded", op["log"][-20:]
    assert op["result"]["image"].startswith(f"{PREFIX}/u-{user_key(ALICE)}/demo:")
    return f"{PREFIX}/u-{user_key(ALICE)}/demo:latest"


def run_body(image: str, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "role": "run",
        "image": image,
        "command": ["sh", "-c", "id -u; id -g; cat /proc/self/status | grep CapEff; sleep 60"],
        "working_dir": f"{WORKSPACE_PATH}/analysis",
        "labels": {JDE_TEST_LABEL: JDE_SESSION},
        "instance": "test-instance",
        "resources": {"memory": "256m", "cpus": 0.5},
    }
    body.update(overrides)
    return body


# -- the contract ----------------------------------------------------------------------------
VERBS = ("get", "put", "post", "delete", "patch")


def _operations() -> list[tuple[str, str]]:
    return [
        (path, verb.upper())
        for path, item in OPENAPI["paths"].items()
        for verb in item
        if verb in VERBS
    ]


def _documented(pattern: str) -> str:
    """A handler route as broker/openapi.yaml spells it."""
    for group, name in (("container_id", "id"), ("operation_id", "id"), ("name", "name")):
        pattern = re.sub(rf"\(\?P<{group}>[^)]*\)", f"{{{name}}}", pattern)
    return pattern.removeprefix("/base/api")


def test_every_route_of_the_broker_is_in_its_contract_with_the_same_verbs() -> None:
    served = {
        (_documented(pattern), verb.upper())
        for pattern, handler in broker_handlers("/base")
        for verb in VERBS
        if getattr(handler, verb) is not getattr(web.RequestHandler, verb)
    }
    assert served == set(_operations())


@pytest.mark.parametrize(("path", "method"), _operations())
def test_every_broker_operation_refuses_a_caller_without_a_hub_token(
    jde_broker: Running, path: str, method: str
) -> None:
    concrete = path.lstrip("/").replace("{id}", "abc123").replace("{name}", "demo")
    for token in ("", "wrong"):
        answer = jde_broker.call(method, concrete, token=token, body={})
        assert answer.status_code == 401, (method, path, token, answer.text)
        assert answer.json()["message"]


def test_no_operation_lets_one_user_reach_anothers_builds_images_or_containers(
    jde_broker: Running, alice_image: str
) -> None:
    # Given alice's environment, its build and a running container of hers
    (alices_build, *_) = jde_broker.call("GET", "builds").json()["builds"]
    started = jde_broker.call("POST", "containers", body=run_body(alice_image))
    cid = check(started, 201, "/containers", "POST")["id"]
    try:
        ids = {"{id}": cid, "{name}": "demo"}
        # When bob calls every operation that names one of them
        for path, method in _operations():
            if "{" not in path:
                continue
            concrete = path.lstrip("/")
            for hole, value in ids.items():
                concrete = concrete.replace(hole, value)
            if path.startswith("/builds/"):
                concrete = path.lstrip("/").replace("{id}", alices_build["id"])
            query = "?path=/tmp" if path.endswith("/archive") else ""
            body = {"signal": 15} if path.endswith("/signal") else None
            answer = jde_broker.call(method, concrete + query, "tok-bob", body=body)
            # Then each answers as if it did not exist
            assert answer.status_code == 404, (method, path, answer.text)
        # and alice's things are untouched
        assert jde_broker.call("GET", f"containers/{cid}").json()["running"] is True
        assert jde_broker.call("GET", f"builds/{alices_build['id']}").status_code == 200
        images = jde_broker.call("GET", "images").json()["images"]
        assert any(alice_image.rsplit(":", 1)[0] in str(i) for i in images)
    finally:
        jde_broker.call("DELETE", f"containers/{cid}")


# -- identity --------------------------------------------------------------------------------
def test_callers_are_identified_by_their_hub_token(jde_broker: Running) -> None:
    me = check(jde_broker.call("GET", "whoami"), 200, "/whoami", "GET")
    assert me["user"] == ALICE
    assert (me["uid"], me["gid"]) == (1000, 100)
    assert me["namespace"] == f"{PREFIX}/u-{user_key(ALICE)}"
    assert me["limits"]["memory"] == 1024**3
    assert check(jde_broker.call("GET", "whoami", token=""), 401, "/whoami", "GET")["message"]
    assert jde_broker.call("GET", "whoami", token="wrong").status_code == 401
    service = check(jde_broker.call("GET", "whoami", token="tok-service"), 403, "/whoami", "GET")
    assert "only hub users" in service["message"]


# -- builds and images -----------------------------------------------------------------------
def test_a_build_lands_in_the_users_namespace_and_only_they_see_it(
    jde_broker: Running, alice_image: str, jde_engine: Engine
) -> None:
    # Given alice's built environment
    mine = check(jde_broker.call("GET", "images"), 200, "/images", "GET")
    assert any(alice_image in row["tags"] for row in mine["images"])
    attrs = jde_engine.inspect_image(alice_image)
    assert attrs is not None
    assert attrs["Config"]["Labels"][L.HUB_USER] == ALICE
    # When bob lists images, follows alice's builds or deletes her environment
    theirs = check(jde_broker.call("GET", "images", "tok-bob"), 200, "/images", "GET")
    assert not any(alice_image in row["tags"] for row in theirs["images"])
    assert check(jde_broker.call("GET", "builds", "tok-bob"), 200, "/builds", "GET")["builds"] == []
    alices = check(jde_broker.call("GET", "builds"), 200, "/builds", "GET")["builds"]
    assert alices
    assert jde_broker.call("GET", f"builds/{alices[0]['id']}", "tok-bob").status_code == 404
    assert jde_broker.call("DELETE", f"builds/{alices[0]['id']}", "tok-bob").status_code == 404
    gone = jde_broker.call("DELETE", "images/demo", "tok-bob")
    assert check(gone, 404, "/images/{name}", "DELETE")["message"]
    other = jde_broker.call(
        "DELETE", f"images/demo?namespace={PREFIX}/u-{user_key(ALICE)}", "tok-bob"
    )
    assert other.status_code == 404
    # Then alice's image is still there, and the admin sees everyone's
    assert jde_engine.inspect_image(alice_image) is not None
    everyone = check(jde_broker.call("GET", "images?all=1", "tok-carol"), 200, "/images", "GET")
    assert any(alice_image in row["tags"] for row in everyone["images"])


def test_builds_outside_the_policy_are_refused_before_anything_runs(jde_broker: Running) -> None:
    evil = jde_broker.call(
        "POST", "builds", body={"name": "evil", "files": {"docker-env.toml": 'base = "evil:1"\n'}}
    )
    assert "'evil:1' is not allowed on this hub" in check(evil, 403, "/builds", "POST")["message"]
    dockerfile = jde_broker.call(
        "POST", "builds", body={"name": "df", "files": {"Dockerfile": "FROM evil:1\n"}}
    )
    assert "Dockerfile environments are turned off" in dockerfile.json()["message"]
    spec = jde_broker.call(
        "POST", "builds", body={"name": "p", "files": {"docker-env.toml": "privileged = true\n"}}
    )
    assert "unknown key 'privileged'" in check(spec, 400, "/builds", "POST")["message"]
    clash = jde_broker.call(
        "POST",
        "builds",
        body={"name": "c", "files": {"requirements.txt": "six", "requirements.txt/x": "y"}},
    )
    assert "both a file and a folder" in check(clash, 400, "/builds", "POST")["message"]
    quota = jde_broker.call(
        "POST", "builds", "tok-bob", {"name": "x", "files": {"requirements.txt": "six\n"}}
    )
    assert "your limit is 0" in check(quota, 403, "/builds", "POST")["message"]
    assert any('"verdict": "refused"' in line and "evil" in line for line in jde_broker.audit)


def test_admins_build_shared_environments_that_every_user_may_run(
    jde_broker: Running, alice_image: str
) -> None:
    # Given an admin's shared environment (bob may not build one)
    files = {"docker-env.toml": 'env = { TEAM = "yes" }\n'}
    refused = jde_broker.call(
        "POST", "builds", "tok-bob", {"name": "team", "files": files, "shared": True}
    )
    assert "only hub administrators" in check(refused, 403, "/builds", "POST")["message"]
    op = build(jde_broker, "tok-carol", "team", files, shared=True)
    assert op["state"] == "succeeded", op["log"][-20:]
    shared = f"{PREFIX}/shared/team:latest"
    # Then alice sees it and runs it, but cannot delete it
    mine = check(jde_broker.call("GET", "images"), 200, "/images", "GET")["images"]
    assert any(shared in row["tags"] and row["namespace"] == f"{PREFIX}/shared" for row in mine)
    started = jde_broker.call("POST", "containers", body=run_body(shared, command=["true"]))
    assert check(started, 201, "/containers", "POST")["id"]
    assert jde_broker.call("DELETE", f"containers/{started.json()['id']}").status_code == 204
    gone = jde_broker.call("DELETE", f"images/team?namespace={PREFIX}/shared")
    assert gone.status_code == 404
    removed = jde_broker.call("DELETE", f"images/team?namespace={PREFIX}/shared", "tok-carol")
    assert shared in check(removed, 200, "/images/{name}", "DELETE")["removed"]


# -- containers ------------------------------------------------------------------------------
def test_a_run_is_confined_and_belongs_to_its_user(
    jde_broker: Running, alice_image: str, jde_engine: Engine
) -> None:
    # When alice starts a run of her environment
    started = check(
        jde_broker.call("POST", "containers", body=run_body(alice_image)),
        201,
        "/containers",
        "POST",
    )
    cid = started["id"]
    try:
        # Then the engine shows a container confined as the broker decided
        attrs = jde_engine.inspect_container(cid)
        assert attrs is not None
        host = attrs["HostConfig"]
        assert attrs["Config"]["User"] == "1000:100"
        assert host["Privileged"] is False
        assert host["CapDrop"] == ["ALL"]
        assert "no-new-privileges:true" in host["SecurityOpt"]
        assert host["Memory"] == 256 * 1024**2
        assert host["NanoCpus"] == 5 * 10**8
        assert host["PidsLimit"] == 1024
        assert [(m["Source"], m["Destination"]) for m in attrs["Mounts"]] == [
            (str(jde_broker.workspaces / user_key(ALICE)), WORKSPACE_PATH)
        ]
        assert list(attrs["NetworkSettings"]["Networks"]) == [f"{NETWORKS}-{user_key(ALICE)}"]
        assert attrs["Config"]["Labels"][L.HUB_USER] == ALICE
        # and only alice (or an admin) sees it, follows it, signals or removes it
        listed = check(jde_broker.call("GET", "containers"), 200, "/containers", "GET")
        assert [c["id"] for c in listed["containers"]] == [cid]
        assert check(
            jde_broker.call("GET", "containers", "tok-bob"), 200, "/containers", "GET"
        ) == {"containers": []}
        for method, path, body in (
            ("GET", f"containers/{cid}", None),
            ("GET", f"containers/{cid}/logs", None),
            ("POST", f"containers/{cid}/signal", {"signal": 9}),
            ("DELETE", f"containers/{cid}", None),
        ):
            assert jde_broker.call(method, path, "tok-bob", body).status_code == 404, path
        assert jde_broker.call("GET", f"containers/{cid}", "tok-carol").status_code == 200
        deadline = time.monotonic() + 20
        while "CapEff" not in (
            logs := jde_broker.call("GET", f"containers/{cid}/logs").json()["logs"]
        ):
            assert time.monotonic() < deadline, logs
            time.sleep(0.2)
        assert logs.split()[:2] == ["1000", "100"]
        assert "0000000000000000" in logs  # no effective capability
        state = check(jde_broker.call("GET", f"containers/{cid}"), 200, "/containers/{id}", "GET")
        assert state["running"] is True
        # and a second run exceeds alice's cap of one
        second = jde_broker.call("POST", "containers", body=run_body(alice_image))
        assert "your limit is 1" in check(second, 429, "/containers", "POST")["message"]
    finally:
        assert jde_broker.call("DELETE", f"containers/{cid}").status_code == 204
    assert jde_broker.call("GET", f"containers/{cid}").status_code == 404


def test_a_run_outlives_its_server_and_gives_back_what_it_made_to_its_user_only(
    jde_broker: Running, alice_image: str, jde_engine: Engine
) -> None:
    # Given a detached run that writes into its own file system and reads its files
    body = run_body(
        alice_image,
        command=[
            "sh",
            "-c",
            "mkdir -p /tmp/out && cat /run/jupyter-docker-env/spec.json > /tmp/out/made.txt",
        ],
        labels={JDE_TEST_LABEL: JDE_SESSION, L.RUN_ID: f"run-{SUFFIX}"},
        files=[
            {"path": "/run/jupyter-docker-env/spec.json", "data": base64.b64encode(b"42").decode()}
        ],
        detached=True,
    )
    started = check(jde_broker.call("POST", "containers", body=body), 201, "/containers", "POST")
    cid = started["id"]
    try:
        # When it has ended, its user finds it by label, sees what changed and copies it out
        found = jde_broker.call("GET", f"containers?label={L.RUN_ID}=run-{SUFFIX}")
        assert [c["id"] for c in check(found, 200, "/containers", "GET")["containers"]] == [cid]
        none = jde_broker.call("GET", f"containers?label={L.RUN_ID}=run-{SUFFIX}", "tok-bob")
        assert none.json()["containers"] == []
        deadline = time.monotonic() + 30
        while jde_broker.call("GET", f"containers/{cid}").json()["running"]:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        changes = jde_broker.call("GET", f"containers/{cid}/changes")
        assert (
            "/tmp/out/made.txt" in check(changes, 200, "/containers/{id}/changes", "GET")["changes"]
        )
        tar = jde_broker.call("GET", f"containers/{cid}/archive?path=/tmp/out")
        assert tar.status_code == 200
        with tarfile.open(fileobj=io.BytesIO(tar.content)) as archive:
            member = archive.extractfile("out/made.txt")
            assert member is not None
            assert member.read() == b"42"
        # Then nobody else may look
        assert jde_broker.call("GET", f"containers/{cid}/changes", "tok-bob").status_code == 404
        theirs = jde_broker.call("GET", f"containers/{cid}/archive?path=/tmp/out", "tok-bob")
        assert theirs.status_code == 404
        missing = jde_broker.call("GET", f"containers/{cid}/archive?path=/nothing/here")
        assert check(missing, 404, "/containers/{id}/archive", "GET")["field"] == "path"
        # and only a run is detached
        kernel = run_body(alice_image, role="kernel", detached=True)
        assert jde_broker.call("POST", "containers", body=kernel).status_code == 400
    finally:
        jde_broker.call("DELETE", f"containers/{cid}")


def test_a_working_directory_through_a_planted_symlink_is_not_followed(
    jde_broker: Running, alice_image: str, jde_engine: Engine
) -> None:
    # Given alice's workspace holds a symlink out of it
    link = jde_broker.workspaces / user_key(ALICE) / "escape"
    link.symlink_to("/proc/self/fd/7")
    try:
        # When she asks for a run whose working directory goes through it
        body = run_body(alice_image, command=["true"], working_dir=f"{WORKSPACE_PATH}/escape")
        started = check(
            jde_broker.call("POST", "containers", body=body), 201, "/containers", "POST"
        )
        # Then the run starts in the workspace itself; a real folder is kept
        attrs = jde_engine.inspect_container(started["id"])
        assert attrs is not None
        assert attrs["Config"]["WorkingDir"] == WORKSPACE_PATH
        jde_broker.call("DELETE", f"containers/{started['id']}")
        body["working_dir"] = f"{WORKSPACE_PATH}/analysis"
        started = check(
            jde_broker.call("POST", "containers", body=body), 201, "/containers", "POST"
        )
        attrs = jde_engine.inspect_container(started["id"])
        assert attrs is not None
        assert attrs["Config"]["WorkingDir"] == f"{WORKSPACE_PATH}/analysis"
        jde_broker.call("DELETE", f"containers/{started['id']}")
    finally:
        link.unlink()


def test_a_kernel_gets_its_ports_on_the_users_network(
    jde_broker: Running, alice_image: str, jde_engine: Engine
) -> None:
    body = run_body(
        alice_image,
        role="kernel",
        command=["python", "-c", "import time; time.sleep(60)"],
        ports=[20001, 20002, 20003, 20004, 20005],
        files=[
            {
                "path": "/run/jupyter-docker-env/kernel.json",
                "data": base64.b64encode(b"{}").decode(),
            }
        ],
    )
    started = check(jde_broker.call("POST", "containers", body=body), 201, "/containers", "POST")
    try:
        attrs = jde_engine.inspect_container(started["id"])
        assert attrs is not None
        sandbox = attrs["HostConfig"]["NetworkMode"].removeprefix("container:")
        sandbox_attrs = jde_engine.inspect_container(sandbox)
        assert sandbox_attrs is not None
        networks = sandbox_attrs["NetworkSettings"]["Networks"]
        assert list(networks) == [f"{NETWORKS}-{user_key(ALICE)}"]
        assert started["ip"] == next(iter(networks.values()))["IPAddress"]
    finally:
        jde_broker.call("POST", "sweep", body={"instance": "test-instance"})
    assert jde_engine.inspect_container(started["id"]) is None


@pytest.mark.parametrize(
    ("change", "status", "words"),
    [
        ({"privileged": True}, 403, "never starts privileged"),
        ({"mounts": [{"Source": "/", "Target": "/host"}]}, 403, "only your workspace"),
        ({"volumes": {"/var/run/docker.sock": {"bind": "/s"}}}, 403, "only your workspace"),
        ({"uid": 0}, 403, "broker's mapping of your hub user"),
        ({"uid": "00"}, 403, "broker's mapping of your hub user"),
        ({"user": "+0"}, 403, "broker's mapping of your hub user"),
        ({"gid": " 0"}, 403, "broker's mapping of your hub user"),
        ({"resources": {"memory": "64g"}}, 403, "64 GiB is more than your limit of 1 GiB"),
        ({"resources": {"gpus": 1}}, 403, "1 GPUs is more than your limit of 0"),
        ({"image": "python:3.12-slim"}, 404, "not one of your environments' images"),
    ],
)
def test_requests_outside_the_policy_are_refused_with_a_clear_message(
    jde_broker: Running, alice_image: str, change: dict[str, Any], status: int, words: str
) -> None:
    refused = jde_broker.call("POST", "containers", body={**run_body(alice_image), **change})
    assert words in check(refused, status, "/containers", "POST")["message"]


def test_a_gpu_on_an_engine_without_gpus_is_refused_by_the_engine_in_plain_words(
    jde_broker: Running, alice_image: str
) -> None:
    # carol's group may use a GPU; this engine has no NVIDIA runtime (an admin may run any image)
    body = run_body(alice_image, command=["true"], resources={"gpus": 1, "memory": "256m"})
    answer = check(
        jde_broker.call("POST", "containers", "tok-carol", body), 409, "/containers", "POST"
    )
    assert answer["kind"] == "no-gpu-runtime"
    assert "nvidia" in answer["message"].lower()


def test_bob_cannot_run_alices_environment(jde_broker: Running, alice_image: str) -> None:
    refused = jde_broker.call("POST", "containers", "tok-bob", run_body(alice_image))
    assert "not one of your environments' images" in refused.json()["message"]
    assert refused.status_code == 404


# -- fuzz ------------------------------------------------------------------------------------
HOSTILE = [None, True, 0, -1, 2**70, "", "0", "00", "+0", " 0", "/", "../..", "\u0000x", [], {}]
leaf = st.one_of(st.sampled_from(HOSTILE), st.integers(), st.text(max_size=12), st.floats())
value = st.recursive(
    leaf,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
KEYS = [*CONTAINER_KEYS, "privileged", "uid", "mounts", "network_mode"]


@st.composite
def bodies(draw: st.DrawFn, image: str) -> Any:
    if draw(st.integers(0, 9)) == 0:
        return draw(value)
    body = run_body(image, command=["true"], instance="fuzz")
    for _ in range(draw(st.integers(0, 2))):
        key = draw(st.sampled_from(KEYS))
        if draw(st.booleans()):
            body.pop(key, None)
        elif key == "resources":
            body[key] = draw(
                st.dictionaries(st.sampled_from(["cpus", "memory", "gpus", "pids"]), value)
            )
        else:
            body[key] = draw(value)
    return body


ROUTES = [("POST", "containers"), ("POST", "builds"), ("POST", "sweep"), ("GET", "containers/x")]


def test_fuzzed_requests_never_fail_and_never_start_a_container_outside_policy(
    jde_broker: Running, alice_image: str, jde_engine: Engine
) -> None:
    seen: dict[int, int] = {}

    @settings(
        max_examples=1000, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(body=bodies(alice_image), route=st.sampled_from(ROUTES), raw=st.booleans())
    def fuzz(body: Any, route: tuple[str, str], raw: bool) -> None:
        method, path = route
        payload = json.dumps(body)
        if raw:  # sometimes not even JSON
            payload = payload[: len(payload) // 2]
        answer = jde_broker.call(method, path, raw=payload.encode("utf-8", "surrogatepass"))
        seen[answer.status_code] = seen.get(answer.status_code, 0) + 1
        assert answer.status_code < 500, answer.text
        assert "message" in answer.json() or answer.status_code in (201, 202)
        if answer.status_code == 201 and path == "containers":
            attrs = jde_engine.inspect_container(answer.json()["id"])
            jde_broker.call("DELETE", f"containers/{answer.json()['id']}")
            assert attrs is not None
            host = attrs["HostConfig"]
            assert attrs["Config"]["User"] == "1000:100"
            assert host["Privileged"] is False
            assert host["CapDrop"] == ["ALL"]
            assert 0 < host["Memory"] <= 1024**3
            assert 0 < host["NanoCpus"] <= 10**9
            assert len(attrs["Mounts"]) <= 2  # the workspace, and a kernel's connection file
            assert {m["Destination"] for m in attrs["Mounts"]} <= {WORKSPACE_PATH} | {
                f["path"] for f in body.get("files", [])
            }
        elif answer.status_code == 202:
            jde_broker.call("DELETE", f"builds/{answer.json()['id']}")

    fuzz()
    jde_broker.call("POST", "sweep", body={"instance": "fuzz"})
    assert sum(seen.values()) >= 1000
    assert seen.get(201, 0) > 0, seen  # some were accepted, and checked on the engine


# -- the single-user side: the environment service through the broker ------------------------
def manager(broker: Running, token: str, root: Path, shared: Path) -> BrokerEnvironmentManager:
    """A single-user server's environment service, as the server builds it: like a server in a
    hub's container, it has no Docker socket, so anything that reaches for one fails."""
    root.mkdir(exist_ok=True)
    settings = DockerEnvConfig(shared_env_dirs=[str(shared)])
    client = BrokerClient(url=broker.url, token=token)
    return BrokerEnvironmentManager(
        settings=settings,
        root_dir=root,
        engine=Engine("unix:///nonexistent/docker.sock"),
        kernels_dir=root / ".kernels",
        client=client,
    )


async def test_a_servers_environments_are_built_by_the_broker_and_shared_ones_by_admins(
    jde_broker: Running, jde_tmp: Path
) -> None:
    # Given alice's server and an admin's, and an environment an administrator provides
    shared = jde_tmp / "shared"
    (shared / "team").mkdir(parents=True)
    (shared / "team" / "docker-env.toml").write_text('env = { TEAM = "2" }\n')
    alice = manager(jde_broker, "tok-alice", jde_tmp / "alice", shared)
    carol = manager(jde_broker, "tok-carol", jde_tmp / "carol", shared)
    try:
        # When alice creates and builds her own environment
        created = await alice.create({"name": "mine", "pip": ["six"]})
        assert created.spec is not None
        assert created.spec.base == jde_broker.app.default_base  # the broker's default base
        op = alice.build(await alice.location("mine"), BuildOptions())
        await op.wait()
        assert op.state == "succeeded", op.log[-20:]
        # Then it is built in her namespace, its lock is written, and its kernel uses the broker
        mine = await alice.get("mine")
        assert mine.state == "built"
        assert mine.image is not None
        assert mine.image.tag.startswith(f"{PREFIX}/u-{user_key(ALICE)}/mine:")
        assert (jde_tmp / "alice" / "environments" / "mine" / "docker-env.lock").is_file()
        (spec,) = [s for s in alice.kernel_specs() if s["metadata"]["docker_env"]["env"] == "mine"]
        config = spec["metadata"]["kernel_provisioner"]["config"]
        assert config["backend"] == "broker"
        assert config["image"] == f"{PREFIX}/u-{user_key(ALICE)}/mine:latest"
        # and what a notebook on its kernel records comes from the broker's image too
        await alice.refresh_records()
        assert alice.notebook_records["mine"].image_id == mine.image.id
        # And the administrator's environment is read-only for her: only an admin builds it
        team = await alice.get("team")
        assert team.readonly
        op = alice.build(await alice.location("team"), BuildOptions())
        await op.wait()
        assert op.state == "failed"
        assert "only hub administrators" in (op.error or "")
        op = carol.build(await carol.location("team"), BuildOptions())
        await op.wait()
        assert op.state == "succeeded", op.log[-20:]
        team = await alice.get("team")
        assert team.state == "built"
        assert team.image is not None
        assert team.image.tag.startswith(f"{PREFIX}/shared/team:")
        # And deleting her environment removes its images from the broker
        await alice.delete("mine")
        assert not [r for r in alice.images.catalog() if r.name == "mine"]
        status = (await alice.status()).to_json()
        assert status["engine"]["available"] is True
        assert status["default_base"] == jde_broker.app.default_base
    finally:
        jde_broker.call("DELETE", f"images/team?namespace={PREFIX}/shared", "tok-carol")
        alice.close()
        carol.close()
