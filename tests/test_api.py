"""The REST API, through a real Jupyter server (pytest-jupyter) and, where it builds, the engine."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema.exceptions import ValidationError
from openapi_schema_validator import OAS30Validator

import jupyter_docker_env
from jupyter_docker_env.labels import label

from .conftest import CA_BUNDLE, JDE_FIXTURE_LABEL, JDE_PREFIX, JDE_SESSION, JDE_TEST_LABEL

API = "jupyter-docker-env/api"
RUN = uuid.uuid4().hex[:8]
OPENAPI = yaml.safe_load((Path(jupyter_docker_env.__file__).parent / "openapi.yaml").read_text())


def check_schema(path: str, method: str, status: int, body: Any) -> None:
    """Validate a response body against openapi.yaml."""
    op = OPENAPI["paths"][path][method]
    # 401/403 come from jupyter_server's auth for every verb (see the document's description)
    response = op["responses"].get(str(status)) or {"$ref": "#/components/responses/Error"}
    assert str(status) in op["responses"] or status in (401, 403), (path, method, status)
    if "$ref" in response:
        response = OPENAPI["components"]["responses"][response["$ref"].rsplit("/", 1)[1]]
    schema = response["content"]["application/json"]["schema"]
    OAS30Validator({"allOf": [schema], "components": OPENAPI["components"]}).validate(body)


@pytest.fixture
def jp_server_config(jp_root_dir: Path, request: pytest.FixtureRequest) -> dict[str, Any]:
    docker_env: dict[str, Any] = {"default_base": "python:3.12-slim", "image_prefix": JDE_PREFIX}
    marker = request.node.get_closest_marker("docker_env_config")
    if marker:
        docker_env.update(marker.args[0])
    return {
        "ServerApp": {"jpserver_extensions": {"jupyter_docker_env": True}},
        "DockerEnvApp": docker_env,
    }


async def call(
    jp_fetch: Any, path: str, method: str = "GET", body: Any = None, expect: int = 200, **kw: Any
) -> Any:
    """Call the API; assert the status and the schema; return the JSON body."""
    args: dict[str, Any] = {"method": method, "raise_error": False, **kw}
    if body is not None:
        args["body"] = json.dumps(body)
    elif method in ("POST", "PUT"):
        args["body"] = ""
    resp = await jp_fetch(API, *path.split("/"), **args)
    assert resp.code == expect, resp.body
    data = json.loads(resp.body) if resp.body else None
    template = "/" + path
    for key, pattern in (
        ("envs/", "/envs/{name}"),
        ("builds/", "/builds/{id}"),
        ("operations/", "/operations/{id}"),
    ):
        if path.startswith(key):
            rest = path[len(key) :].split("/", 1)
            template = pattern + ("/" + rest[1] if len(rest) > 1 else "")
    if template in OPENAPI["paths"] and data is not None:
        check_schema(template, method.lower(), expect, data)
    return data


# -- without an engine ----------------------------------------------------------------------
@pytest.mark.docker_env_config({"docker_host": "unix:///nonexistent/docker.sock"})
async def test_status_reports_an_unreachable_engine_and_what_to_do(jp_fetch: Any) -> None:
    status = await call(jp_fetch, "status")
    assert status["engine"]["available"] is False
    assert "/nonexistent/docker.sock" in status["engine"]["reason"]
    assert "make docker" in status["engine"]["reason"]
    assert status["gpu"]["available"] is False


@pytest.mark.docker_env_config({"docker_host": "unix:///nonexistent/docker.sock"})
async def test_listing_without_an_engine_is_a_clear_503(jp_fetch: Any, jp_root_dir: Path) -> None:
    (jp_root_dir / "environments" / "demo").mkdir(parents=True)
    (jp_root_dir / "environments" / "demo" / "docker-env.toml").write_text('pip = ["six"]\n')
    err = await call(jp_fetch, "envs", expect=503)
    assert "No Docker engine answers" in err["message"]


# -- with the engine -------------------------------------------------------------------------
docker = pytest.mark.docker


@docker
async def test_status_with_the_engine_up(jp_fetch: Any, jde_base_image: str) -> None:
    status = await call(jp_fetch, "status")
    assert status["engine"]["available"] is True
    assert status["engine"]["version"]
    assert status["engine"]["api_version"]
    assert status["engine"]["builder"] in ("buildkit", "legacy")
    # This engine has no NVIDIA runtime: no GPU, and the reason says what to install
    assert status["gpu"]["available"] is False
    assert "runc" in status["gpu"]["runtimes"]
    assert "nvidia" not in status["gpu"]["runtimes"]
    assert "NVIDIA Container Toolkit" in status["gpu"]["reason"]


@docker
async def test_environment_crud_and_field_errors(
    jp_fetch: Any, jp_root_dir: Path, jde_base_image: str
) -> None:
    # Create
    env = await call(
        jp_fetch,
        "envs",
        "POST",
        {"name": "crud", "base": jde_base_image, "pip": ["six==1.16.0"]},
        expect=201,
    )
    assert env["state"] == "not_built"
    assert env["kernel_name"] == "docker-env-crud"
    assert env["pip"] == ["six==1.16.0"]
    assert (jp_root_dir / "environments" / "crud" / "docker-env.toml").is_file()
    # Duplicate → 409; bad spec → 400 naming the field; nothing was written
    await call(jp_fetch, "envs", "POST", {"name": "crud"}, expect=409)
    bad = await call(jp_fetch, "envs", "POST", {"name": "bad", "apt": ["git;reboot"]}, expect=400)
    assert bad["field"] == "apt[0]"
    assert not (jp_root_dir / "environments" / "bad").exists()
    bad = await call(jp_fetch, "envs", "POST", {"name": "bad", "colour": "x"}, expect=400)
    assert bad["field"] == "colour"
    # Read and list
    assert (await call(jp_fetch, "envs/crud"))["base"] == jde_base_image
    assert [e["name"] for e in (await call(jp_fetch, "envs"))["envs"]] == ["crud"]
    await call(jp_fetch, "envs/nope", expect=404)
    # Update; a bad update keeps the old spec
    env = await call(jp_fetch, "envs/crud", "PUT", {"base": jde_base_image, "gpu": True})
    assert env["gpu"] is True
    err = await call(jp_fetch, "envs/crud", "PUT", {"pip": ["not a req!!"]}, expect=400)
    assert err["field"] == "pip[0]"
    assert (await call(jp_fetch, "envs/crud"))["gpu"] is True
    # Malformed JSON and bad build options are 400s, not 500s
    resp = await jp_fetch(API, "envs", method="POST", body="{nope", raise_error=False)
    assert resp.code == 400
    await call(jp_fetch, "envs/crud/builds", "POST", {"turbo": True}, expect=400)
    await call(jp_fetch, "builds/0123456789ab", params={"offset": "-1"}, expect=400)
    await call(jp_fetch, "builds/0123456789ab", expect=404)
    # From a workspace file
    (jp_root_dir / "proj").mkdir()
    (jp_root_dir / "proj" / "requirements.txt").write_text("six\n")
    env = await call(
        jp_fetch,
        "envs",
        "POST",
        {"name": "fromreq", "from_path": "proj/requirements.txt"},
        expect=201,
    )
    assert env["kind"] == "requirements"
    err = await call(
        jp_fetch, "envs", "POST", {"name": "esc", "from_path": "../etc/passwd"}, expect=400
    )
    assert err["field"] == "from_path"
    # Delete
    await call(jp_fetch, "envs/crud", "DELETE", expect=204)
    await call(jp_fetch, "envs/crud", expect=404)


async def wait_operation(jp_fetch: Any, operation_id: str) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 600
    while loop.time() < deadline:
        op = await call(jp_fetch, f"operations/{operation_id}")
        if op["state"] not in ("queued", "running"):
            return op  # type: ignore[no-any-return]
        await asyncio.sleep(0.3)
    raise AssertionError(f"operation {operation_id} did not finish")


@docker
@pytest.mark.docker_env_config({"ca_bundle": CA_BUNDLE or ""})
async def test_build_followed_by_a_second_client_and_kernel_appears(
    jp_fetch: Any, jp_root_dir: Path, jde_base_image: str, jp_serverapp: Any
) -> None:
    await call(
        jp_fetch,
        "envs",
        "POST",
        # a value of this run's: the build has work to do, so the second client can join it
        {"name": "apibuild", "base": jde_base_image, "env": {"TZ": "UTC", "RUN": RUN}},
        expect=201,
    )
    # Given a build started by one client
    first = await call(jp_fetch, "envs/apibuild/builds", "POST", {"no_cache": False}, expect=202)
    # a second request for the same environment joins it
    second = await call(jp_fetch, "envs/apibuild/builds", "POST", {}, expect=202)
    assert second["id"] == first["id"]
    # the first client reads a little, then "disconnects"
    partial = await call(jp_fetch, f"builds/{first['id']}", params={"offset": "0"})
    env = await call(jp_fetch, "envs/apibuild")
    assert env["operation"]["id"] == first["id"]
    # When another client follows the build from where the first left off, and from the start
    done = await wait_operation(jp_fetch, first["id"])
    assert done["state"] == "succeeded", done["log"][-20:]
    rest = await call(
        jp_fetch, f"operations/{first['id']}", params={"offset": str(partial["log_offset"])}
    )
    whole = await call(jp_fetch, f"operations/{first['id']}")
    # Then together they saw the whole log, and the outcome
    assert partial["log"] + rest["log"] == whole["log"]
    assert whole["progress"] == 1.0
    assert done["image"].startswith(f"{JDE_PREFIX}/apibuild:")
    env = await call(jp_fetch, "envs/apibuild")
    assert env["state"] == "built"
    assert env["image"]["size"] > 0
    assert any(p.startswith("ipykernel==") for p in env["lock"]["pip"])
    # and its kernel is listed right away, no restart needed
    specs = json.loads((await jp_fetch("api", "kernelspecs")).body)["kernelspecs"]
    assert "docker-env-apibuild" in specs
    spec = specs["docker-env-apibuild"]["spec"]
    assert spec["metadata"]["kernel_provisioner"]["provisioner_name"] == "docker-env-provisioner"
    assert "(Docker env)" in spec["display_name"]
    # A kernel of it can be started with its own size, without a kernel spec per size
    if os.geteuid() == 0:
        os.chown(jp_root_dir, 1000, 1000)  # kernels run as the workspace owner, never root
    for bad, field in (({"memory": "lots"}, "memory"), ({"cpus": -1}, "cpus"), ({"x": 1}, "x")):
        err = await call(jp_fetch, "envs/apibuild/kernels", "POST", bad, expect=400)
        assert err["field"] == field
    kernel = await call(
        jp_fetch, "envs/apibuild/kernels", "POST", {"memory": "256m", "cpus": 0.5}, expect=201
    )
    engine = jp_serverapp.web_app.settings["docker_env"].engine
    (container,) = engine.containers({label("kernel-id"): kernel["id"]})
    host_config = engine.inspect_container(container["Id"])["HostConfig"]
    assert (host_config["Memory"], host_config["NanoCpus"]) == (256 * 1024**2, 500_000_000)
    await jp_fetch("api", "kernels", kernel["id"], method="DELETE")
    assert engine.containers({label("kernel-id"): kernel["id"]}) == []
    # and a GPU on this GPU-less engine is refused with words a user can act on
    err = await call(jp_fetch, "envs/apibuild/kernels", "POST", {"gpus": "all"}, expect=409)
    assert "NVIDIA" in err["message"]
    # Editing the spec makes it out of date
    await call(jp_fetch, "envs/apibuild", "PUT", {"base": jde_base_image, "pip": ["six"]})
    outdated = await call(jp_fetch, "envs/apibuild")
    assert outdated["state"] == "outdated"
    assert outdated["image"]["id"] == env["image"]["id"]  # the last build still serves kernels
    # Deleting works although a kernel of it ran (its network sandbox may still use the image)
    await call(jp_fetch, "envs/apibuild", "DELETE", expect=204)
    assert engine.images(reference=f"{JDE_PREFIX}/apibuild") == []
    specs = json.loads((await jp_fetch("api", "kernelspecs")).body)["kernelspecs"]
    assert "docker-env-apibuild" not in specs


@docker
async def test_a_failing_build_reports_its_step_and_cancel_works(
    jp_fetch: Any, jde_base_image: str
) -> None:
    await call(
        jp_fetch,
        "envs",
        "POST",
        # This session's own package name: BuildKit runs a step that another build runs at the
        # same time once for both, and may show the other build's output only to that one.
        {"name": "apifail", "base": jde_base_image, "apt": [f"no-such-package-{JDE_SESSION}"]},
        expect=201,
    )
    op = await call(jp_fetch, "envs/apifail/builds", "POST", {}, expect=202)
    done = await wait_operation(jp_fetch, op["id"])
    assert done["state"] == "failed"
    assert "apt-get install" in done["failed_step"]
    assert f"E: Unable to locate package no-such-package-{JDE_SESSION}" in done["error"]
    assert (await call(jp_fetch, "envs/apifail"))["state"] == "failed"
    # A cancelled build ends as cancelled
    op = await call(jp_fetch, "envs/apifail/builds", "POST", {"no_cache": True}, expect=202)
    cancelled = await call(jp_fetch, f"operations/{op['id']}", "DELETE", expect=202)
    assert cancelled["id"] == op["id"]
    done = await wait_operation(jp_fetch, op["id"])
    assert done["state"] == "cancelled"


def test_openapi_document_is_valid() -> None:
    from openapi_spec_validator import validate

    validate(OPENAPI)
    with pytest.raises(ValidationError):
        check_schema("/envs/{name}", "get", 200, {"name": "x"})


@docker
async def test_admin_provided_environments_are_read_only(
    jp_fetch: Any, jde_base_image: str, jp_serverapp: Any, tmp_path_factory: Any
) -> None:
    # Given an environment an administrator provides in a shared folder
    shared = tmp_path_factory.mktemp("shared-envs")
    (shared / "team").mkdir()
    (shared / "team" / "docker-env.toml").write_text(f'base = "{jde_base_image}"\n')
    jp_serverapp.web_app.settings["docker_env"].environments.shared_env_dirs = [shared]
    # Then users see it, but cannot change or delete it
    env = await call(jp_fetch, "envs/team")
    assert env["readonly"] is True
    assert env["path"] == str(shared / "team")
    err = await call(jp_fetch, "envs/team", "PUT", {"pip": ["six"]}, expect=403)
    assert "administrator" in err["message"]
    await call(jp_fetch, "envs/team", "DELETE", expect=403)
    assert (shared / "team" / "docker-env.toml").read_text() == f'base = "{jde_base_image}"\n'


@docker
async def test_server_start_sweeps_kernel_containers_a_crash_left_behind(
    jp_serverapp: Any, jde_engine: Any, jde_base_image: str
) -> None:
    # Given a kernel container that an earlier run of this same server left when it crashed
    from jupyter_docker_env.kernels.provisioner import instance_id_for
    from jupyter_docker_env.labels import INSTANCE as LABEL_INSTANCE

    instance = instance_id_for(str(jp_serverapp.root_dir), jp_serverapp.port)
    orphan = jde_engine.create_container(
        jde_base_image,
        command=["sleep", "600"],
        labels={
            LABEL_INSTANCE: instance,
            label("managed"): "true",
            JDE_TEST_LABEL: JDE_SESSION,
            JDE_FIXTURE_LABEL: "1",
        },
    )
    jde_engine.start_container(orphan["Id"])
    other = jde_engine.create_container(
        jde_base_image,
        command=["sleep", "600"],
        labels={
            LABEL_INSTANCE: "srv-another-server",
            JDE_TEST_LABEL: JDE_SESSION,
            JDE_FIXTURE_LABEL: "1",
        },
    )
    # When the server (re)starts
    ext = jp_serverapp.web_app.settings["docker_env"]
    await ext._start_jupyter_server_extension(jp_serverapp)
    # Then the orphan is gone, and nothing else was touched
    assert jde_engine.inspect_container(orphan["Id"]) is None
    assert jde_engine.inspect_container(other["Id"]) is not None
    jde_engine.remove_container(other["Id"])
