"""`jupyter-docker-env` end to end: the installed command, run as a user runs it.

Each run gets its own Jupyter config dir (the tests' image prefix, and credentials when a test
sets them) and an empty Docker config dir, so neither the user's settings nor their `docker
login` leak in. The CA bundle reaches builds through the ca_bundle default (PIP_CERT).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from jupyter_docker_env.engine import Engine
from jupyter_docker_env.environments.spec import SPEC_FILE
from jupyter_docker_env.kernels.kernelspecs import PROVISIONER

from .conftest import CA_BUNDLE, JDE_PREFIX, JDE_REGISTRY_PASSWORD, JDE_REGISTRY_USER

CLI = str(Path(sys.executable).parent / "jupyter-docker-env")
BUILD_KEYS = {
    *("name", "image", "image_id", "spec_hash", "built", "pulled", "kernel_name", "lock"),
    "shared_with",
}
# A per-run value in the specs: each run builds anew, the layer cache serves the pip layer.
RUN = uuid.uuid4().hex[:8]
ENV_PREFIX = "cli-"  # every environment built here, so the module can sweep its images


class Cli:
    """Runs the command with an isolated configuration."""

    def __init__(self, home: Path, config: str = "") -> None:
        for sub in ("jupyter-config", "jupyter-data", "jupyter-runtime", "docker-config"):
            (home / sub).mkdir(parents=True, exist_ok=True)
        (home / "jupyter-config" / "jupyter_server_config.py").write_text(
            f'c.DockerEnvApp.image_prefix = "{JDE_PREFIX}"\n' + config
        )
        self.docker_config = home / "docker-config"
        self.env = {
            **os.environ,
            "JUPYTER_CONFIG_DIR": str(home / "jupyter-config"),
            "JUPYTER_DATA_DIR": str(home / "jupyter-data"),
            "JUPYTER_RUNTIME_DIR": str(home / "jupyter-runtime"),
            "DOCKER_CONFIG": str(self.docker_config),
        }

    def __call__(
        self, *args: str, ok: bool = True, cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [CLI, *args],
            env=self.env,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if ok:
            assert proc.returncode == 0, f"`{' '.join(args)}` failed:\n{proc.stderr}"
        return proc

    def json(self, *args: str) -> dict:
        return json.loads(self(*args, "--json").stdout)  # type: ignore[no-any-return]

    def docker_login(self, registry: str, user: str, password: str) -> None:
        """What `docker login` leaves in the Docker config."""
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        host = registry.split("/", 1)[0]
        (self.docker_config / "config.json").write_text(
            json.dumps({"auths": {host: {"auth": token}}})
        )


@pytest.fixture(scope="module")
def cli_sweep(jde_engine: Engine) -> Iterator[None]:
    yield
    for image in jde_engine.images(reference=f"{JDE_PREFIX}/{ENV_PREFIX}*"):
        jde_engine.remove_image(image["Id"], force=True)


def make_env(root: Path, name: str, toml: str | None = None) -> Path:
    """An environment of its own (equal specs would share one image, whatever their names)."""
    folder = root / name
    folder.mkdir(parents=True)
    spec = f'pip = ["six==1.16.0"]\nenv = {{ RUN = "{RUN}", FOR = "{name}" }}\n'
    (folder / SPEC_FILE).write_text(toml or spec)
    return folder


@pytest.mark.docker
@pytest.mark.usefixtures("cli_sweep")
def test_build_show_list_kernelspec_push_rm_pull(
    jde_base_image: str, jde_open_registry: str, jde_tmp: Path
) -> None:
    assert CA_BUNDLE, "the host's CA bundle (PIP_CERT) is needed for builds to reach PyPI here"
    cli = Cli(jde_tmp / "home")
    folder = make_env(jde_tmp, "cli-share")
    d, where = str(folder), ("--registry", jde_open_registry, "--default-base", jde_base_image)

    # build --json says what it made
    built = cli.json("build", d, *where)
    assert set(built) == BUILD_KEYS
    assert built["name"] == "cli-share"
    assert built["image"].startswith(f"{JDE_PREFIX}/cli-share:")
    assert built["kernel_name"] == "docker-env-cli-share"
    assert (built["built"], built["pulled"]) == (True, False)
    assert "six==1.16.0" in built["lock"]["pip"]

    # show and list agree with it
    shown = cli.json("show", d, "--default-base", jde_base_image)
    assert shown["state"] == "built"
    assert shown["spec_hash"] == built["spec_hash"]
    assert shown["image"]["id"] == built["image_id"]
    assert shown["lock"] == built["lock"]
    listed = {r["image_id"]: r for r in cli.json("list") if r["name"] == "cli-share"}
    assert built["image"] in listed[built["image_id"]]["tags"]

    # kernelspec install writes a kernel.json that runs the environment's latest image
    prefix = jde_tmp / "prefix"
    cli("kernelspec", "install", d, "--prefix", str(prefix))
    kernel = json.loads(
        (prefix / "share/jupyter/kernels/docker-env-cli-share/kernel.json").read_text()
    )
    provisioner = kernel["metadata"]["kernel_provisioner"]
    assert provisioner["provisioner_name"] == PROVISIONER
    assert provisioner["config"]["image"] == f"{JDE_PREFIX}/cli-share:latest"

    # push puts the content-hash tag and a readable one in the registry, with progress on stderr
    push = cli("push", d, *where, "--json")
    pushed = json.loads(push.stdout)
    remote = f"{jde_open_registry}/cli-share"
    assert pushed["pushed"] == [f"{remote}:{built['spec_hash'][:16]}", f"{remote}:latest"]
    assert f"Pushing {remote}:" in push.stderr

    # rm removes the local images; a build then pulls instead of building
    assert "removed" in cli("rm", "cli-share").stdout
    assert not [r for r in cli.json("list") if r["name"] == "cli-share"]
    again = cli.json("build", d, *where)
    assert (again["built"], again["pulled"]) == (False, True)
    assert again["image_id"] == built["image_id"]
    assert again["lock"] == built["lock"]

    # pull does the same on request
    cli("rm", "cli-share")
    pulled = cli.json("pull", d, *where)
    assert (pulled["built"], pulled["pulled"]) == (False, True)
    assert pulled["image_id"] == built["image_id"]
    assert cli.json("show", d, "--default-base", jde_base_image)["state"] == "built"


@pytest.mark.docker
@pytest.mark.usefixtures("cli_sweep")
def test_registry_credentials_from_configuration_or_docker_login(
    jde_base_image: str, jde_auth_registry: str, jde_tmp: Path
) -> None:
    folder = make_env(jde_tmp, "cli-auth")
    d, where = str(folder), ("--registry", jde_auth_registry, "--default-base", jde_base_image)
    # Given an environment built with no credentials anywhere (the registry check only warns)
    anonymous = Cli(jde_tmp / "anonymous")
    built = anonymous.json("build", d, *where)
    assert (built["built"], built["pulled"]) == (True, False)

    # When pushed with a wrong password in the configuration, Then exit 1 with a clear error
    wrong = Cli(
        jde_tmp / "wrong",
        f'c.DockerEnvApp.registry_username = "{JDE_REGISTRY_USER}"\n'
        'c.DockerEnvApp.registry_password = "not-the-password"\n',
    )
    denied = wrong("push", d, *where, ok=False)
    assert denied.returncode == 1
    assert "refused the credentials" in denied.stderr
    assert "c.DockerEnvApp.registry_username" in denied.stderr
    assert "Traceback" not in denied.stderr

    # When pushed with the right ones in the configuration, Then it is in the registry
    right = Cli(
        jde_tmp / "right",
        f'c.DockerEnvApp.registry_username = "{JDE_REGISTRY_USER}"\n'
        f'c.DockerEnvApp.registry_password = "{JDE_REGISTRY_PASSWORD}"\n',
    )
    right("push", d, *where)

    # When a colleague logged in with `docker login` builds it, Then it is pulled
    colleague = Cli(jde_tmp / "colleague")
    colleague.docker_login(jde_auth_registry, JDE_REGISTRY_USER, JDE_REGISTRY_PASSWORD)
    colleague("rm", "cli-auth")
    again = colleague.json("build", d, *where)
    assert (again["built"], again["pulled"]) == (False, True)
    assert again["lock"] == built["lock"]


@pytest.mark.parametrize(
    ("toml", "field"),
    [
        ('apt = ["Not A Package"]\n', "apt[0]"),
        ('pip = ["six"]\nregistry_password = "hunter2"\n', "registry_password"),
    ],
    ids=["bad-apt-name", "credentials-in-spec"],
)
def test_bad_spec_exits_non_zero_naming_the_field(tmp_path: Path, toml: str, field: str) -> None:
    cli = Cli(tmp_path / "home")
    folder = make_env(tmp_path, "bad", toml)
    proc = cli("build", str(folder), "--default-base", "python:3.12-slim", ok=False)
    assert proc.returncode != 0
    assert f"error: {field}:" in proc.stderr
    assert f"failed step: spec field {field}" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_a_registry_option_with_a_scheme_is_refused(tmp_path: Path) -> None:
    cli = Cli(tmp_path / "home")
    folder = make_env(tmp_path, "scheme")
    proc = cli("push", str(folder), "--registry", "https://registry.example.com/team", ok=False)
    assert proc.returncode == 2
    assert "is not HOST[:PORT]/NAMESPACE" in proc.stderr
