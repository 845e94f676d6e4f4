"""Warm kernels as a server runs them: an environment that asks for a pool, the status endpoint
that reports it, the server's stop that removes it; and the rules that decide which container
may serve which start.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from traitlets import TraitError

from jupyter_docker_env.containers import ContainerFile, ContainerRequest, WarmStart
from jupyter_docker_env.containers.pool import CLAIM_PIPE, _deliver, placement_key
from jupyter_docker_env.engine import Engine
from jupyter_docker_env.environments.spec import SpecError, parse, spec_hash
from jupyter_docker_env.kernels.provisioner import (
    DockerEnvProvisioner,
    instance_id_for,
    sweep_orphans,
)
from jupyter_docker_env.labels import label

from .conftest import JDE_PREFIX, JDE_SESSION, JDE_TEST_LABEL
from .test_api import call


# -- which container may serve which start (no engine) ---------------------------------------
def kernel_request(**changes: Any) -> ContainerRequest:
    request = ContainerRequest(
        role="kernel",
        name="jupyter-kernel-1",
        image="env:latest",
        command=("python", "-m", "ipykernel_launcher", "-f", "/run/jupyter-docker-env/k.json"),
        workspace="/home/u",
        working_dir="/home/u/a",
        uid=1000,
        gid=1000,
        instance_id="srv-1",
        environment={"LANG": "C.UTF-8", "JPY_SESSION_NAME": "a/nb.ipynb"},
        labels={label("kernel-id"): "k1", label("env"): "env"},
        mem_limit=1024**3,
        ports=(20001, 20002, 20003, 20004, 20005),
        files=(ContainerFile("/run/jupyter-docker-env/k.json", b"secret key 1", 0o400),),
        warm=WarmStart(size=1, preload=("ipykernel.kernelapp",), claim_env=("JPY_SESSION_NAME",)),
    )
    return replace(request, **changes)


def test_a_warm_container_serves_only_starts_it_was_made_for() -> None:
    # Given a kernel's request, another start of the same environment and placement differs
    # only in what a claim hands over: it may take the same pool's containers
    key = placement_key(kernel_request())
    same_placement = kernel_request(
        name="jupyter-kernel-2",
        working_dir="/home/u/b",
        command=(*kernel_request().command, "--debug"),
        environment={"LANG": "C.UTF-8", "JPY_SESSION_NAME": "b/other.ipynb"},
        labels={label("kernel-id"): "k2", label("env"): "env"},
        ports=(21001, 21002, 21003, 21004, 21005),
        files=(ContainerFile("/run/jupyter-docker-env/k.json", b"secret key 2", 0o400),),
        warm=WarmStart(size=3, preload=("ipykernel.kernelapp",), claim_env=("JPY_SESSION_NAME",)),
    )
    assert placement_key(same_placement) == key
    # But anything fixed when a container is created makes another placement
    for other in (
        {"image": "env:other"},
        {"uid": 1001},
        {"workspace": "/home/v"},
        {"mem_limit": 2 * 1024**3},
        {"nano_cpus": 500_000_000},
        {"network": "isolated"},
        {"environment": {"LANG": "de_DE.UTF-8", "JPY_SESSION_NAME": "a/nb.ipynb"}},
        {"labels": {label("kernel-id"): "k1", label("env"): "other"}},
        {"device_requests": ({"count": -1},)},
        {"instance_id": "srv-2"},
    ):
        assert placement_key(kernel_request(**other)) != key, other


def test_an_environment_asks_for_warm_kernels_without_changing_its_image(tmp_path: Path) -> None:
    # Given a spec, and the same spec asking for two warm kernels
    plain = parse({"pip": ["six"]}, tmp_path, "python:3.12-slim")
    warm = parse({"pip": ["six"], "warm": 2}, tmp_path, "python:3.12-slim")
    # Then the image is the same (the key says how kernels run, not what the image holds)
    assert warm.warm == 2
    assert spec_hash(plain, "base", "1", {}) == spec_hash(warm, "base", "1", {})
    # And the key is kept when the spec is written back, even as 0 (every start cold)
    assert parse({"warm": 0}, tmp_path, "python:3.12-slim").to_toml()["warm"] == 0
    assert "warm" not in plain.to_toml()
    # And anything but a small count is refused, naming the key
    for bad in (True, -1, 17, "1", 1.5):
        with pytest.raises(SpecError, match="not a number of warm kernels") as err:
            parse({"warm": bad}, tmp_path, "python:3.12-slim")
        assert err.value.field == "warm"


def test_warm_pool_settings_that_cannot_work_are_refused_when_read() -> None:
    for setting, value, words in (
        ("warm_pool_size", -1, r"0 \(no warm kernels\) or more"),
        ("warm_pool_memory", "lots", "is not a size"),
        ("warm_pool_idle_timeout", 0, "above 0"),
    ):
        with pytest.raises(TraitError, match=words):
            DockerEnvProvisioner(**{setting: value})
    settings = DockerEnvProvisioner(
        warm_pool_memory="1g", warm_pool_idle_timeout=60
    ).pool_settings()
    assert (settings.memory_budget, settings.idle_timeout, settings.gpus) == (1024**3, 60.0, False)


async def test_a_claim_is_never_written_through_a_link_put_in_place_of_the_pipe(
    tmp_path: Path,
) -> None:
    # Given a pool container's claim folder whose pipe was replaced by a link to a file that the
    # server (often root) may write but its user may not
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    folder = tmp_path / "claim"
    folder.mkdir()
    (folder / CLAIM_PIPE).symlink_to(victim)
    # When the server hands a claim to that container
    with pytest.raises(OSError, match="Too many levels of symbolic links") as refused:
        await _deliver(folder / CLAIM_PIPE, b'{"args": [], "cwd": "/", "env": {}}')
    # Then the link is not followed (the start goes cold) and the file is untouched
    assert refused.value.errno == errno.ELOOP
    assert victim.read_text() == "precious\n"


# -- a server's pools, through its API -------------------------------------------------------
@pytest.fixture
def jp_server_config() -> dict[str, Any]:
    return {
        "ServerApp": {"jpserver_extensions": {"jupyter_docker_env": True}},
        "DockerEnvApp": {"image_prefix": f"{JDE_PREFIX}-warm-{uuid.uuid4().hex[:6]}"},
        "DockerEnvProvisioner": {"extra_labels": {JDE_TEST_LABEL: JDE_SESSION}},
    }


async def until(check: Any, seconds: float, what: str) -> Any:
    deadline = time.monotonic() + seconds
    while not (result := await check()):
        assert time.monotonic() < deadline, f"not within {seconds} s: {what}"
        await asyncio.sleep(0.1)
    return result


@pytest.mark.docker
async def test_an_environment_that_asks_for_a_warm_kernel_gets_one_until_the_server_stops(
    jp_fetch: Any,
    jp_serverapp: Any,
    jp_root_dir: Path,
    jde_kernel_image: str,
    jde_base_image: str,
    jde_engine: Engine,
) -> None:
    # Given a built environment whose docker-env.toml asks for a warm kernel
    ext = jp_serverapp.web_app.settings["docker_env"]
    if os.geteuid() == 0:
        os.chown(jp_root_dir, 1000, 1000)  # kernels run as the workspace's owner, never root
    folder = jp_root_dir / "environments" / "quick"
    folder.mkdir(parents=True)
    (folder / "docker-env.toml").write_text(f'base = "{jde_base_image}"\nwarm = 1\n')
    latest = ext.environments.images.latest_ref("quick")
    jde_engine.tag(jde_kernel_image, *latest.rsplit(":", 1))  # as a build would leave it
    instance = instance_id_for(jp_serverapp.root_dir, jp_serverapp.port)
    try:
        # When the server starts (it writes the environment's kernel spec)
        await ext._start_jupyter_server_extension(jp_serverapp)

        # Then a warm kernel waits for it, and the status endpoint says so
        async def ready() -> Any:
            status = await call(jp_fetch, "status")
            return status if status["pools"] and status["pools"][0]["ready"] else None

        status = await until(ready, 120, "a warm kernel")
        (pool,) = status["pools"]
        assert (pool["env"], pool["image"], pool["size"], pool["error"]) == (
            "quick",
            latest,
            1,
            None,
        )
        assert 10 * 1024**2 < pool["idle_memory"] < 200 * 1024**2
        env = await call(jp_fetch, "envs/quick")
        assert env["warm"] == 1
        # And a notebook's kernel takes it
        reply = await jp_fetch(
            "api", "kernels", method="POST", body=json.dumps({"name": "docker-env-quick"})
        )
        kernel_id = json.loads(reply.body)["id"]
        km = jp_serverapp.kernel_manager.get_kernel(kernel_id)
        assert km.provisioner.warm_started
        await jp_fetch("api", "kernels", kernel_id, method="DELETE")

        # When the server stops, no warm kernel survives it
        await until(ready, 120, "the refill")
        await ext.stop_extension()
        assert jde_engine.containers({label("instance"): instance, label("pool"): None}) == []
    finally:
        await sweep_orphans(jde_engine, instance)
        jde_engine.remove_image(latest, force=True)
