"""A shared JupyterHub, for real: many users, one Docker engine, no one becomes root.

The test starts JupyterHub (from PyPI) with DockerSpawner and configurable-http-proxy (from npm,
installed in tests/hub/), the launch broker as a hub service, and two users whose single-user
servers run in containers of an image built here from the offline base image plus JupyterLab,
JupyterHub (the hub's version) and a wheel of this package. The servers have no Docker socket:
they build environments and start kernels through the broker, which alone holds it.

Run alone with ``pytest -m hub``. The single-user image is cached by the content of what goes
into it, so reruns start in seconds; everything else (hub, proxy, broker, servers, kernels,
volumes, networks, the users' images) is torn down.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
import requests
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from jupyter_docker_env import labels as L
from jupyter_docker_env.broker.policy import user_key
from jupyter_docker_env.engine import Engine

from .conftest import CA_BUNDLE, JDE_PREFIX, JDE_SESSION, JDE_TEST_LABEL, REPO, jde_free_port

pytestmark = [pytest.mark.docker, pytest.mark.hub]

SUFFIX = JDE_SESSION[:6]
USERS = (f"ada{SUFFIX}", f"bo{SUFFIX}")
PREFIX = f"{JDE_PREFIX}-hub{SUFFIX}"  # containers, volumes and networks of this session
IMAGES = f"{JDE_PREFIX}/hub{SUFFIX}"  # the broker's image prefix
WORK = "/home/jovyan/work"
CHP = REPO / "tests" / "hub" / "node_modules" / ".bin" / "configurable-http-proxy"
MANAGER = "jupyter_docker_env.environments.broker.BrokerEnvironmentManager"
SINGLEUSER_DOCKERFILE = """\
FROM {base}
COPY ca-certificates.crt /tmp/jde-ca.crt
RUN PIP_CERT=/tmp/jde-ca.crt python3 -m venv /opt/hub \\
 && PIP_CERT=/tmp/jde-ca.crt /opt/hub/bin/pip install --no-cache-dir \\
      jupyterhub=={hub_version} jupyterlab {dependencies} \\
 && useradd -m -u 1000 -g 100 -s /bin/bash jovyan \\
 && mkdir -p {work} && chown 1000:100 {work}
COPY wheel/ /tmp/wheel/
RUN /opt/hub/bin/pip install --no-cache-dir --no-deps /tmp/wheel/*.whl \\
 && rm -rf /tmp/wheel /tmp/jde-ca.crt
ENV PATH=/opt/hub/bin:$PATH
USER 1000
WORKDIR {work}
CMD ["jupyterhub-singleuser"]
"""


# -- the single-user image, cached by content -----------------------------------------------
def _package_digest() -> str:
    """A hash of what the wheel is built from (not of the wheel: its zip has timestamps)."""
    h = hashlib.sha256((REPO / "pyproject.toml").read_bytes())
    root = REPO / "jupyter_docker_env"
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if path.is_file() and rel.parts[0] != "labextension" and "__pycache__" not in rel.parts:
            h.update(str(rel).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def jde_singleuser_image(jde_engine: Engine, jde_base_image: str) -> str:
    """JupyterLab, JupyterHub (the hub's version) and this package on the offline base."""
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    dockerfile = SINGLEUSER_DOCKERFILE.format(
        base=jde_base_image,
        hub_version=version("jupyterhub"),
        dependencies=" ".join(f"'{d}'" for d in dependencies),
        work=WORK,
    )
    base = jde_engine.inspect_image(jde_base_image)
    assert base is not None
    key = hashlib.sha256(f"{dockerfile}|{base['Id']}|{_package_digest()}".encode()).hexdigest()
    repository = f"{JDE_PREFIX}-hub/singleuser"
    tag = f"{repository}:{key[:16]}"
    if jde_engine.inspect_image(tag) is not None:
        return tag
    for old in jde_engine.images(reference=repository):
        for ref in old.get("RepoTags") or []:
            jde_engine.remove_image(ref)  # an older package: its layers serve the new build
    with tempfile.TemporaryDirectory(prefix="jde-test-singleuser-") as ctx:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--no-deps",
                "-q",
                "-w",
                f"{ctx}/wheel",
                str(REPO),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert out.returncode == 0, out.stderr[-3000:]
        shutil.copy(CA_BUNDLE or "/etc/ssl/certs/ca-certificates.crt", f"{ctx}/ca-certificates.crt")
        Path(ctx, "Dockerfile").write_text(dockerfile)
        image_id, log = None, []
        for event in jde_engine.build(ctx, f"{ctx}/Dockerfile", "legacy"):
            log.append(event.text)
            if event.kind == "error":
                pytest.fail(
                    f"building the single-user image failed: {event.text}\n" + "\n".join(log)
                )
            if event.kind == "image":
                image_id = event.text
    assert image_id
    jde_engine.tag(image_id, repository, key[:16])
    return tag


# -- the hub ---------------------------------------------------------------------------------
def _configurable_http_proxy() -> str:
    """configurable-http-proxy from npm, installed in tests/hub/ (make install does it too)."""
    if not CHP.exists():
        npm = shutil.which("npm")
        assert npm, "npm is needed for configurable-http-proxy (apt-get install -y npm)"
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=CHP.parents[2],
            check=True,
        )
    return str(CHP)


@dataclass
class Hub:
    url: str  # the proxy's public URL
    driver: str  # a service token that manages users, servers and tokens
    broker: str  # the broker's URL, as single-user servers reach it
    folder: Path
    network: str
    tokens: dict[str, str] = field(default_factory=dict)

    def api(
        self, method: str, path: str, body: Any = None, expect: tuple[int, ...] = (200,)
    ) -> Any:
        """The hub's REST API, as the test driver service."""
        answer = call(method, f"{self.url}hub/api/{path}", self.driver, body)
        assert answer.status_code in expect, f"{method} {path}: {answer.status_code} {answer.text}"
        return answer.json() if answer.text else None

    def server(
        self, user: str, path: str, method: str = "GET", body: Any = None, token: str = ""
    ) -> requests.Response:
        """A call to a user's single-user server, through the proxy, with a user's token."""
        return call(method, f"{self.url}user/{user}/{path}", token or self.tokens[user], body)

    def broker_call(self, user: str, method: str, path: str, body: Any = None) -> requests.Response:
        """What a user could do from their server: call the broker with their own token."""
        return call(method, f"{self.broker}api/{path}", self.tokens[user], body)

    def audit(self) -> list[dict[str, Any]]:
        lines = (self.folder / "audit.log").read_text().splitlines()
        return [json.loads(line.split(" audit ", 1)[1]) for line in lines if " audit " in line]


def call(method: str, url: str, token: str, body: Any = None) -> requests.Response:
    return requests.request(
        method,
        url,
        headers={"Authorization": f"token {token}"},
        data=None if body is None else json.dumps(body),
        timeout=120,
    )


def _wait(what: str, check: Any, seconds: float = 120, every: float = 0.25) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if result := check():
                return result
        except (requests.ConnectionError, requests.Timeout):
            pass
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def jde_hub(jde_engine: Engine, jde_base_image: str, jde_singleuser_image: str) -> Iterator[Hub]:
    """JupyterHub + DockerSpawner + the broker service, two users with running servers."""
    folder = Path(tempfile.mkdtemp(prefix="jde-test-hub-"))
    network = f"{PREFIX}-net"
    jde_engine.create_network(
        network, driver="bridge", labels={JDE_TEST_LABEL: JDE_SESSION, L.MANAGED: "true"}
    )
    attrs = jde_engine.inspect_network(network)
    assert attrs is not None
    gateway = attrs["IPAM"]["Config"][0]["Gateway"]
    public, proxy_api, hub_port, broker_port = (jde_free_port() for _ in range(4))
    driver = uuid.uuid4().hex
    broker_url = f"http://{gateway}:{broker_port}/services/docker-env-broker/"
    (folder / "jupyter_docker_env_broker_config.py").write_text(
        f"""
c.DockerEnvBroker.allowed_bases = [{jde_base_image!r}]
c.DockerEnvBroker.default_base = {jde_base_image!r}
c.DockerEnvBroker.image_prefix = {IMAGES!r}
c.DockerEnvBroker.workspace_volume = "{PREFIX}-user-{{username}}"
c.DockerEnvBroker.workspace_path = {WORK!r}
c.DockerEnvBroker.network_prefix = "{PREFIX}-user"
c.DockerEnvBroker.limits = {{"memory": "2g", "cpus": 1, "gpus": 0}}
c.DockerEnvBroker.ca_bundle = {CA_BUNDLE or "/etc/ssl/certs/ca-certificates.crt"!r}
c.DockerEnvBroker.state_dir = "{folder}/broker-state"
c.DockerEnvBroker.audit_log = "{folder}/audit.log"
c.DockerEnvBroker.reap_interval = 2.0
"""
    )
    (folder / "jupyterhub_config.py").write_text(
        f"""
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = {public}
c.JupyterHub.hub_ip = {gateway!r}
c.JupyterHub.hub_port = {hub_port}
c.JupyterHub.hub_connect_ip = {gateway!r}
c.JupyterHub.db_url = "sqlite:///{folder}/hub.sqlite"
c.JupyterHub.cookie_secret_file = "{folder}/cookie_secret"
c.JupyterHub.pid_file = "{folder}/hub.pid"
c.JupyterHub.authenticator_class = "null"
c.JupyterHub.cleanup_servers = True
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{proxy_api}"
c.ConfigurableHTTPProxy.command = [{_configurable_http_proxy()!r}]
c.ConfigurableHTTPProxy.pid_file = "{folder}/proxy.pid"
c.JupyterHub.spawner_class = "dockerspawner.DockerSpawner"
c.DockerSpawner.image = {jde_singleuser_image!r}
c.DockerSpawner.pull_policy = "never"
c.DockerSpawner.network_name = {network!r}
c.DockerSpawner.use_internal_ip = True
c.DockerSpawner.remove = True
c.DockerSpawner.prefix = {PREFIX!r}
c.DockerSpawner.volumes = {{"{PREFIX}-user-{{username}}": {WORK!r}}}
c.DockerSpawner.notebook_dir = {WORK!r}
c.DockerSpawner.environment = {{"JUPYTER_DOCKER_ENV_BROKER_URL": {broker_url!r}}}
c.DockerSpawner.args = [
    "--DockerEnvApp.environment_manager_class={MANAGER}",
    "--DockerEnvProvisioner.backend=broker",
]
c.DockerSpawner.extra_create_kwargs = {{"labels": {{{JDE_TEST_LABEL!r}: {JDE_SESSION!r}}}}}
c.Spawner.start_timeout = 120
c.Spawner.http_timeout = 90
c.JupyterHub.services = [
    {{
        "name": "docker-env-broker",
        "url": "http://{gateway}:{broker_port}",
        "command": [{sys.executable!r}, "-m", "jupyter_docker_env.broker"],
        "cwd": "{folder}",
    }},
    {{"name": "test-driver", "api_token": {driver!r}}},
]
c.JupyterHub.load_roles = [
    {{
        "name": "docker-env-broker",
        "scopes": ["read:users", "read:servers", "admin:server_state"],
        "services": ["docker-env-broker"],
    }},
    {{
        "name": "test-driver",
        "scopes": ["admin:users", "admin:servers", "tokens", "admin:groups"],
        "services": ["test-driver"],
    }},
]
"""
    )
    log = (folder / "hub.log").open("wb")
    hub_process = subprocess.Popen(
        [sys.executable, "-m", "jupyterhub", "-f", str(folder / "jupyterhub_config.py")],
        cwd=folder,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    hub = Hub(f"http://127.0.0.1:{public}/", driver, broker_url, folder, network)
    try:
        _wait(
            "the hub",
            lambda: hub_process.poll() is None and requests.get(f"{hub.url}hub/api/", timeout=2).ok,
        )
        _wait(
            "the broker",
            lambda: requests.get(f"{broker_url}api/whoami", timeout=2).status_code == 401,
        )
        for user in USERS:
            hub.api("POST", f"users/{user}", expect=(201,))
            hub.tokens[user] = hub.api(
                "POST", f"users/{user}/tokens", {"note": "jde test"}, expect=(201, 200)
            )["token"]
            hub.api("POST", f"users/{user}/server", expect=(201, 202))
        for user in USERS:
            _wait(
                f"{user}'s server",
                lambda user=user: (
                    hub.api("GET", f"users/{user}")["servers"].get("", {}).get("ready")
                ),
            )
        yield hub
    finally:
        for name in ("hub.log", "audit.log"):  # shown when a test failed
            if (folder / name).exists():
                print(f"--- {name}\n" + (folder / name).read_text()[-8000:])
        for user in USERS:
            call("DELETE", f"{hub.url}hub/api/users/{user}/server", driver)
        if hub_process.poll() is None:
            os.killpg(hub_process.pid, signal.SIGTERM)
            try:
                hub_process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(hub_process.pid, signal.SIGKILL)
        log.close()
        _remove_everything(jde_engine, network)
        shutil.rmtree(folder, ignore_errors=True)


def _remove_everything(engine: Engine, network: str) -> None:
    for c in engine.containers({JDE_TEST_LABEL: JDE_SESSION}):
        engine.remove_container(c["Id"])
    for user in USERS:
        for c in engine.containers({L.HUB_USER: user}):
            engine.remove_container(c["Id"])
        user_network = f"{PREFIX}-user-{user_key(user)}"
        for c in engine.containers({L.NETWORK: user_network}):
            engine.remove_container(c["Id"])
        engine.remove_network(user_network)
        for image in engine.images(reference=f"{IMAGES}/u-{user_key(user)}/*"):
            for ref in image.get("RepoTags") or []:
                engine.remove_image(ref, force=True)
        engine.remove_volume(f"{PREFIX}-user-{user_key(user)}")
    engine.remove_network(network)


# -- talking to a kernel through the single-user server --------------------------------------
async def _execute(hub: Hub, user: str, kernel_id: str, code: str, seconds: float = 60) -> str:
    """Run ``code`` in a kernel over the server's websocket; return its output (or error)."""
    url = hub.url.replace("http", "ws", 1) + f"user/{user}/api/kernels/{kernel_id}/channels"
    request = HTTPRequest(url, headers={"Authorization": f"token {hub.tokens[user]}"})
    ws = await websocket_connect(request)
    msg_id = uuid.uuid4().hex
    ws.write_message(
        json.dumps(
            {
                "header": {
                    "msg_id": msg_id,
                    "msg_type": "execute_request",
                    "username": user,
                    "session": uuid.uuid4().hex,
                    "version": "5.3",
                    "date": "",
                },
                "parent_header": {},
                "metadata": {},
                "content": {
                    "code": code,
                    "silent": False,
                    "store_history": False,
                    "user_expressions": {},
                    "allow_stdin": False,
                },
                "channel": "shell",
                "buffers": [],
            }
        )
    )
    out: list[str] = []
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            raw = await asyncio.wait_for(ws.read_message(), deadline - time.monotonic())
            assert raw is not None, "the kernel's websocket closed"
            msg = json.loads(raw)
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                out.append(content["text"])
            elif kind == "error":
                out.append(f"{content['ename']}: {content['evalue']}")
            elif kind == "status" and content["execution_state"] == "idle":
                return "".join(out)
        raise AssertionError(f"no answer from the kernel within {seconds} s: {out}")
    finally:
        ws.close()


def execute(hub: Hub, user: str, kernel_id: str, code: str) -> str:
    return asyncio.run(_execute(hub, user, kernel_id, code))


@pytest.fixture(scope="module")
def jde_kernels(jde_hub: Hub) -> dict[str, str]:
    """Each user writes a file in their workspace, builds an environment and starts a kernel."""
    kernels = {}
    for user in USERS:
        secret = {"type": "file", "format": "text", "content": f"{user}'s secret\n"}
        assert jde_hub.server(
            user, f"api/contents/{user}-secret.txt", "PUT", secret
        ).status_code in (200, 201)
        created = jde_hub.server(
            user, "jupyter-docker-env/api/envs", "POST", {"name": "demo", "env": {"OWNER": user}}
        )
        assert created.status_code == 201, created.text
        started = jde_hub.server(user, "jupyter-docker-env/api/envs/demo/builds", "POST", {})
        assert started.status_code == 202, started.text
        op_id = started.json()["id"]

        def done(user: str = user, op_id: str = op_id) -> Any:
            op = jde_hub.server(user, f"jupyter-docker-env/api/operations/{op_id}").json()
            return op if op["state"] not in ("queued", "running") else None

        op = _wait(f"{user}'s build", done, seconds=600, every=1)
        assert op["state"] == "succeeded", "\n".join(op["log"][-30:])
        env = jde_hub.server(user, "jupyter-docker-env/api/envs/demo").json()
        assert env["state"] == "built", env
        assert env["image"]["tag"].startswith(f"{IMAGES}/u-{user_key(user)}/demo:")
        kernel = jde_hub.server(user, "jupyter-docker-env/api/envs/demo/kernels", "POST", {})
        assert kernel.status_code == 201, kernel.text
        kernels[user] = kernel.json()["id"]
    return kernels


def kernel_containers(engine: Engine, user: str) -> list[dict[str, Any]]:
    return [
        c
        for c in engine.containers({L.HUB_USER: user, L.ROLE: "kernel"})
        if c["State"] == "running"
    ]


# -- the tests -------------------------------------------------------------------------------
def test_each_users_kernel_sees_only_their_own_workspace(
    jde_hub: Hub, jde_kernels: dict[str, str], jde_engine: Engine
) -> None:
    ada, bo = USERS
    for user, other in ((ada, bo), (bo, ada)):
        out = execute(
            jde_hub,
            user,
            jde_kernels[user],
            "import os, json\n"
            "print(json.dumps({'uid': os.getuid(), 'gid': os.getgid(),"
            " 'owner': os.environ.get('OWNER'),"
            f" 'files': sorted(os.listdir({WORK!r})), 'cwd': os.getcwd(),"
            f" 'mine': open('{WORK}/{user}-secret.txt').read(),"
            f" 'socket': os.path.exists('/var/run/docker.sock')}}))",
        )
        seen = json.loads(out)
        assert seen["uid"] == 1000
        assert seen["gid"] == 100
        assert seen["owner"] == user  # the environment the user built
        assert seen["mine"] == f"{user}'s secret\n"
        assert f"{user}-secret.txt" in seen["files"]
        assert f"{other}-secret.txt" not in seen["files"]
        assert seen["cwd"] == WORK
        assert seen["socket"] is False
        # and the engine agrees: the user's volume (and the connection file), nothing else
        (container,) = kernel_containers(jde_engine, user)
        attrs = jde_engine.inspect_container(container["Id"])
        assert attrs is not None
        volumes = [
            (m["Type"], m.get("Name"), m["Destination"])
            for m in attrs["Mounts"]
            if m["Type"] == "volume"
        ]
        assert volumes == [("volume", f"{PREFIX}-user-{user_key(user)}", WORK)]
        assert all(
            m["Destination"].startswith("/run/") for m in attrs["Mounts"] if m["Type"] == "bind"
        )
        assert attrs["HostConfig"]["CapDrop"] == ["ALL"]
        assert attrs["HostConfig"]["Privileged"] is False
        assert attrs["HostConfig"]["Memory"] == 2 * 1024**3


def test_no_single_user_container_has_the_docker_socket(
    jde_hub: Hub, jde_engine: Engine, jde_kernels: dict[str, str]
) -> None:
    servers = jde_engine.containers({JDE_TEST_LABEL: JDE_SESSION})
    assert len([s for s in servers if s["Names"][0].startswith(f"/{PREFIX}-")]) == len(USERS)
    for summary in servers:
        attrs = jde_engine.inspect_container(summary["Id"])
        assert attrs is not None
        mounts = [m["Source"] for m in attrs["Mounts"]] + list(
            attrs["HostConfig"].get("Binds") or []
        )
        assert not any("docker.sock" in m for m in mounts), attrs["Name"]
        assert attrs["HostConfig"]["Privileged"] is False
    for user in USERS:
        out = execute(
            jde_hub,
            user,
            jde_kernels[user],
            "import os; print(os.path.exists('/var/run/docker.sock'))",
        )
        assert out.strip() == "False"


def test_a_kernel_of_one_user_cannot_reach_another_users_kernel(
    jde_hub: Hub, jde_kernels: dict[str, str], jde_engine: Engine
) -> None:
    ada, bo = USERS

    def address(user: str) -> tuple[str, int]:
        (kernel,) = kernel_containers(jde_engine, user)
        attrs = jde_engine.inspect_container(kernel["Id"])
        assert attrs is not None
        sandbox = jde_engine.inspect_container(
            attrs["HostConfig"]["NetworkMode"].removeprefix("container:")
        )
        assert sandbox is not None
        ip = sandbox["NetworkSettings"]["Networks"][f"{PREFIX}-user-{user_key(user)}"]["IPAddress"]
        port = json.loads(
            execute(
                jde_hub,
                user,
                jde_kernels[user],
                "print(open('/run/jupyter-docker-env/kernel.json').read())",
            )
        )["shell_port"]
        return ip, int(port)

    probe = (
        "import socket\n"
        "def reach(ip, port):\n"
        "    try:\n"
        "        socket.create_connection((ip, port), timeout=3).close()\n"
        "        return 'reached'\n"
        "    except OSError as exc:\n"
        "        return f'blocked ({exc})'\n"
    )
    ada_ip, ada_port = address(ada)
    bo_ip, bo_port = address(bo)
    # Given each kernel listens on its own user's network (the host reaches both)
    import socket

    for ip, port in ((ada_ip, ada_port), (bo_ip, bo_port)):
        socket.create_connection((ip, port), timeout=3).close()
    # When ada's kernel connects to its own port and to bo's
    out = execute(
        jde_hub,
        ada,
        jde_kernels[ada],
        probe + f"print(reach({ada_ip!r}, {ada_port}))\nprint(reach({bo_ip!r}, {bo_port}))",
    )
    own, other = out.strip().splitlines()
    # Then it reaches its own and not bo's
    assert own == "reached"
    assert other.startswith("blocked"), other
    out = execute(jde_hub, bo, jde_kernels[bo], probe + f"print(reach({ada_ip!r}, {ada_port}))")
    assert out.strip().startswith("blocked")


def test_one_user_cannot_see_or_touch_anothers_environments_kernels_runs_or_images(
    jde_hub: Hub, jde_kernels: dict[str, str], jde_engine: Engine
) -> None:
    ada, bo = USERS
    # bo's token does not open ada's server
    for method, path in (
        ("GET", "jupyter-docker-env/api/envs"),
        ("POST", "jupyter-docker-env/api/envs/demo/builds"),
        ("DELETE", "jupyter-docker-env/api/envs/demo"),
        ("POST", "jupyter-docker-env/api/envs/demo/kernels"),
        ("GET", "api/kernels"),
        ("DELETE", f"api/kernels/{jde_kernels[ada]}"),
    ):
        answer = jde_hub.server(
            ada, path, method, {} if method == "POST" else None, token=jde_hub.tokens[bo]
        )
        assert answer.status_code in (403, 404), (method, path, answer.status_code)
    # nor, asked directly, does the broker show or act on ada's images, builds or containers
    ada_namespace = f"{IMAGES}/u-{user_key(ada)}"
    images = jde_hub.broker_call(bo, "GET", "images").json()["images"]
    assert not any(t.startswith(ada_namespace) for row in images for t in row["tags"])
    listed = jde_hub.broker_call(bo, "GET", "containers").json()["containers"]
    assert listed
    assert all(c["user"] == bo for c in listed)
    (ada_kernel,) = kernel_containers(jde_engine, ada)
    for method, path, body in (
        ("GET", f"containers/{ada_kernel['Id']}", None),
        ("GET", f"containers/{ada_kernel['Id']}/logs", None),
        ("POST", f"containers/{ada_kernel['Id']}/signal", {"signal": 9}),
        ("DELETE", f"containers/{ada_kernel['Id']}", None),
        ("DELETE", f"images/demo?namespace={ada_namespace}", None),
    ):
        assert jde_hub.broker_call(bo, method, path, body).status_code == 404, path
    for build in jde_hub.broker_call(ada, "GET", "builds").json()["builds"]:
        assert jde_hub.broker_call(bo, "GET", f"builds/{build['id']}").status_code == 404
        assert jde_hub.broker_call(bo, "DELETE", f"builds/{build['id']}").status_code == 404
    # bo cannot use ada's image for a kernel or a run
    run = {
        "role": "run",
        "image": f"{ada_namespace}/demo:latest",
        "command": ["sleep", "30"],
        "instance": "probe",
    }
    refused = jde_hub.broker_call(bo, "POST", "containers", run)
    assert refused.status_code == 404
    assert "not one of your environments' images" in refused.json()["message"]
    # while ada can, and bo cannot see her run
    started = jde_hub.broker_call(ada, "POST", "containers", run)
    assert started.status_code == 201, started.text
    run_id = started.json()["id"]
    assert jde_hub.broker_call(bo, "GET", f"containers/{run_id}").status_code == 404
    assert jde_hub.broker_call(bo, "DELETE", f"containers/{run_id}").status_code == 404
    assert jde_hub.broker_call(ada, "DELETE", f"containers/{run_id}").status_code == 204
    # and ada's kernel still runs
    assert execute(jde_hub, ada, jde_kernels[ada], "print(6 * 7)").strip() == "42"


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"privileged": True}, "never starts privileged"),
        ({"mounts": [{"Type": "bind", "Source": "/", "Target": "/host"}]}, "only your workspace"),
        ({"uid": 0}, "broker's mapping of your hub user"),
        ({"uid": "00"}, "broker's mapping of your hub user"),
        ({"uid": "+0"}, "broker's mapping of your hub user"),
        ({"uid": " 0"}, "broker's mapping of your hub user"),
        ({"resources": {"memory": "64g"}}, "64 GiB is more than your limit of 2 GiB"),
        ({"resources": {"gpus": 2}}, "2 GPUs is more than your limit of 0"),
    ],
)
def test_requests_outside_the_policy_are_refused_with_a_clear_message(
    jde_hub: Hub, jde_kernels: dict[str, str], change: dict[str, Any], words: str
) -> None:
    ada = USERS[0]
    run = {
        "role": "run",
        "image": f"{IMAGES}/u-{user_key(ada)}/demo:latest",
        "command": ["true"],
        "instance": "x",
    }
    refused = jde_hub.broker_call(ada, "POST", "containers", {**run, **change})
    assert refused.status_code == 403
    assert words in refused.json()["message"]


def test_the_single_user_server_says_why_the_broker_refused(
    jde_hub: Hub, jde_kernels: dict[str, str]
) -> None:
    ada = USERS[0]
    too_big = jde_hub.server(
        ada, "jupyter-docker-env/api/envs/demo/kernels", "POST", {"memory": "64g"}
    )
    assert too_big.status_code == 409
    assert "64 GiB is more than your limit of 2 GiB" in too_big.json()["message"]
    gpus = jde_hub.server(ada, "jupyter-docker-env/api/envs/demo/kernels", "POST", {"gpus": "1"})
    assert "1 GPUs is more than your limit of 0" in gpus.json()["message"]
    # a base outside the allow-list: the environment is created, its build refused
    made = jde_hub.server(
        ada, "jupyter-docker-env/api/envs", "POST", {"name": "evil", "base": "evil/miner:1"}
    )
    assert made.status_code == 201, made.text
    started = jde_hub.server(ada, "jupyter-docker-env/api/envs/evil/builds", "POST", {})
    op_id = started.json()["id"]
    op = _wait(
        "the refused build",
        lambda: (
            (o := jde_hub.server(ada, f"jupyter-docker-env/api/operations/{op_id}").json())["state"]
            not in ("queued", "running")
            and o
        ),
    )
    assert op["state"] == "failed"
    assert "'evil/miner:1' is not allowed on this hub" in op["error"]
    assert jde_hub.server(ada, "jupyter-docker-env/api/envs/evil", "DELETE").status_code == 204
    # and every decision is in the audit log
    audit = jde_hub.audit()
    assert any(
        e["user"] == ada and e["action"] == "kernel.start" and e["verdict"] == "allowed"
        for e in audit
    )
    assert any(
        e["user"] == ada and e["verdict"] == "refused" and "64 GiB" in e.get("reason", "")
        for e in audit
    )
    assert any(
        e["action"] == "build" and e["verdict"] == "refused" and "evil" in e["image"] for e in audit
    )


def test_a_training_run_goes_through_the_broker_too(
    jde_hub: Hub, jde_kernels: dict[str, str], jde_engine: Engine
) -> None:
    # Given ada's server, whose runs use the kernels' back end (the broker), and a run that
    # waits for a file in her workspace before it writes its own
    ada, bo = USERS
    code = (
        "import os, time\n"
        "while not os.path.exists('run-go.txt'): time.sleep(0.1)\n"
        "open('from-run.txt', 'w').write(f'ran as {os.getuid()}')\n"
    )
    made = jde_hub.server(
        ada,
        "jupyter-docker-env/api/runs",
        "POST",
        {"env": "demo", "command": ["python", "-c", code]},
    )
    assert made.status_code == 201, made.text
    run_id = made.json()["id"]
    # When it runs, then its container is ada's, in her own network
    (container,) = _wait(
        "ada's run container", lambda: jde_engine.containers({L.RUN_ID: run_id}), seconds=180
    )
    assert container["Labels"][L.HUB_USER] == ada
    attrs = jde_engine.inspect_container(container["Id"])
    assert attrs is not None
    assert list(attrs["NetworkSettings"]["Networks"]) == [f"{PREFIX}-user-{user_key(ada)}"]
    # and bo's token finds nothing of it at the broker
    assert jde_hub.broker_call(bo, "GET", f"containers?label={L.RUN_ID}={run_id}").json() == {
        "containers": []
    }
    go = {"type": "file", "format": "text", "content": "go"}
    assert jde_hub.server(ada, "api/contents/run-go.txt", "PUT", go).status_code in (200, 201)

    def ended() -> Any:
        run = jde_hub.server(ada, f"jupyter-docker-env/api/runs/{run_id}").json()
        return run if run["state"] not in ("queued", "running") else None

    # and once it ends it succeeded in her workspace, as her uid
    run = _wait("ada's run", ended, seconds=180, every=1)
    assert run["state"] == "succeeded", run
    made_file = jde_hub.server(ada, "api/contents/from-run.txt").json()
    assert made_file["content"] == "ran as 1000"
    assert any(e["action"] == "run.start" and e["user"] == ada for e in jde_hub.audit())


def test_what_needs_an_engine_of_the_servers_own_says_so(
    jde_hub: Hub, jde_kernels: dict[str, str]
) -> None:
    # Given ada's server, which has no Docker socket
    ada, _ = USERS
    files = {"model.json": "{}\n", "serve.py": "def predict(payload):\n    return payload\n"}
    for path, text in files.items():
        body = {"type": "file", "format": "text", "content": text}
        assert jde_hub.server(ada, f"api/contents/{path}", "PUT", body).status_code in (200, 201)
    # When she asks for a snapshot run, it ends failed, saying why
    made = jde_hub.server(
        ada,
        "jupyter-docker-env/api/runs",
        "POST",
        {"env": "demo", "command": ["python", "-c", "pass"], "snapshot": True},
    )
    assert made.status_code == 201, made.text

    def ended() -> Any:
        run = jde_hub.server(ada, f"jupyter-docker-env/api/runs/{made.json()['id']}").json()
        return run if run["state"] not in ("queued", "running") else None

    run = _wait("the snapshot run", ended, seconds=120, every=0.5)
    assert run["state"] == "failed"
    assert "no Docker engine of its own" in run["reason"], run
    # and a serving build ends failed in the same words
    serving = jde_hub.server(
        ada,
        "jupyter-docker-env/api/envs/demo/serving",
        "POST",
        {"model": "model.json", "handler": "serve.py:predict"},
    )
    assert serving.status_code == 202, serving.text
    op_path = f"jupyter-docker-env/api/operations/{serving.json()['id']}"

    def built() -> Any:
        op = jde_hub.server(ada, op_path).json()
        return op if op["state"] not in ("queued", "running") else None

    op = _wait("the serving build", built, seconds=120, every=0.5)
    assert op["state"] == "failed"
    assert "no Docker engine of its own" in op["error"], op


def test_kernels_of_a_server_that_died_are_removed_by_the_broker(
    jde_hub: Hub, jde_kernels: dict[str, str], jde_engine: Engine
) -> None:
    # (runs last, in file order) A stopped server shuts its kernels down itself; one that dies
    # cannot. Given ada's server container is killed
    ada, bo = USERS
    assert kernel_containers(jde_engine, ada)
    (server,) = [
        c
        for c in jde_engine.containers({JDE_TEST_LABEL: JDE_SESSION})
        if c["Names"][0] == f"/{PREFIX}-{user_key(ada)}"
    ]
    jde_engine.kill_container(server["Id"])
    # Then the broker's reaper removes her kernel, and only hers
    _wait(
        "ada's kernel to go",
        lambda: not jde_engine.containers({L.HUB_USER: ada, L.ROLE: "kernel"}),
        seconds=60,
    )
    assert kernel_containers(jde_engine, bo)
    assert any(e["action"] == "kernel.reap" and e["user"] == ada for e in jde_hub.audit())
    # and, at a later sweep, the network sandbox her kernels shared
    network = f"{PREFIX}-user-{user_key(ada)}"
    _wait("ada's sandbox to go", lambda: not jde_engine.containers({L.NETWORK: network}), 60)
    assert jde_engine.containers({L.NETWORK: f"{PREFIX}-user-{user_key(bo)}"})
