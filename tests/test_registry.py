"""Sharing environments through a registry: push, pull instead of build, and clear errors.

Every test drives the real engine and a real registry (Debian's docker-registry) on loopback:
one without auth, one with basic auth through an htpasswd file (fixtures in conftest.py).
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from jupyter_docker_env.engine import Engine
from jupyter_docker_env.environments import lock
from jupyter_docker_env.environments.images import ImageBuilder
from jupyter_docker_env.environments.spec import LOCK_FILE, SPEC_FILE
from jupyter_docker_env.labels import LOCK as LABEL_LOCK
from jupyter_docker_env.models import BuildOptions
from jupyter_docker_env.operations import Operation, OperationFailed

from .builds import make_builder
from .conftest import JDE_PREFIX, JDE_REGISTRY_PASSWORD, JDE_REGISTRY_USER, jde_free_port

pytestmark = pytest.mark.docker

# Small, and built from layers other tests cache already (the base and the ipykernel venv). The
# per-run value makes each run build anew while the engine's layer cache serves the pip layer.
RUN = uuid.uuid4().hex[:8]
ENV_PREFIX = "reg-"  # every environment here, so the module can sweep its images


@pytest.fixture(scope="module", autouse=True)
def _sweep_images(jde_engine: Engine) -> Iterator[None]:
    yield
    for image in jde_engine.images(reference=f"{JDE_PREFIX}/{ENV_PREFIX}*"):
        jde_engine.remove_image(image["Id"], force=True)


def registry_has(builder: ImageBuilder, folder: Path) -> bool | None:
    state = builder.registry_state(builder.plan(folder))
    assert state is not None
    return state.available


def read_lock(folder: Path) -> dict | None:
    found = lock.read(folder)
    return found[0].to_json() if found else None


@pytest.fixture(scope="module")
def open_builder(jde_engine: Engine, jde_base_image: str, jde_open_registry: str) -> ImageBuilder:
    return make_builder(jde_engine, jde_base_image, jde_open_registry)


@pytest.fixture(scope="module")
def auth_builder(jde_engine: Engine, jde_base_image: str, jde_auth_registry: str) -> ImageBuilder:
    auth = {"username": JDE_REGISTRY_USER, "password": JDE_REGISTRY_PASSWORD}
    return make_builder(jde_engine, jde_base_image, jde_auth_registry, auth)


def make_env(root: Path, name: str) -> Path:
    """An environment of its own: equal specs would share one image, whatever their names."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / SPEC_FILE).write_text(
        f'pip = ["six==1.16.0"]\nenv = {{ RUN = "{RUN}", FOR = "{name}" }}\n'
    )
    return folder


def build(builder: ImageBuilder, folder: Path) -> tuple[dict, Operation]:
    op = Operation(env=folder.name, kind="build")
    return builder.build(folder, BuildOptions(), op).to_json(), op


def push(builder: ImageBuilder, folder: Path) -> tuple[dict, Operation]:
    op = Operation(env=folder.name, kind="push")
    return builder.push(folder, op).to_json(), op


def pull(builder: ImageBuilder, folder: Path) -> tuple[dict, Operation]:
    op = Operation(env=folder.name, kind="pull")
    return builder.pull(folder, op).to_json(), op


def forget_locally(builder: ImageBuilder, image_id: str) -> None:
    """Remove the image and every tag of it, as on a colleague's machine that never built it."""
    builder.engine.remove_image(image_id, force=True)
    assert builder.engine.inspect_image(image_id) is None


def untag(builder: ImageBuilder, folder: Path) -> None:
    """Drop the environment's tags: the build must look again, its layers stay cached."""
    builder.remove(builder.plan(folder).spec.name)


def test_pushed_environment_is_pulled_instead_of_built(
    open_builder: ImageBuilder, jde_open_registry: str, jde_tmp: Path
) -> None:
    # Given a built environment
    folder = make_env(jde_tmp, "reg-share")
    first, _ = build(open_builder, folder)
    assert first["built"] is True
    plan = open_builder.plan(folder)
    assert registry_has(open_builder, folder) is False

    # When it is pushed
    pushed, op = push(open_builder, folder)
    # Then the registry has it under its content-hash tag and a readable one, with progress shown
    remote = f"{jde_open_registry}/reg-share"
    assert pushed["pushed"] == [f"{remote}:{plan.short_hash}", f"{remote}:latest"]
    assert pushed["digest"].startswith("sha256:")
    assert f"Pushing {remote}:{plan.short_hash}" in op.log
    assert any(line.endswith(": Pushed") or "Layer already exists" in line for line in op.log)
    assert registry_has(open_builder, folder) is True
    assert open_builder.engine.registry_digest(f"{remote}:latest") == pushed["digest"]

    # When the local image is deleted and the same folder is built again
    forget_locally(open_builder, first["image_id"])
    again, op = build(open_builder, folder)
    # Then it was pulled, not built: the same image, the same lock
    assert again["built"] is False
    assert again["pulled"] is True
    assert again["image_id"] == first["image_id"]
    assert again["lock"] == first["lock"]
    assert not any(line.startswith("Step ") for line in op.log)
    pulled = open_builder.find_image(again["image"])
    assert pulled is not None
    assert lock.from_label(pulled.labels[LABEL_LOCK]).to_json() == first["lock"]
    latest = open_builder.find_image(open_builder.latest_ref("reg-share"))
    assert latest is not None
    assert latest.id == first["image_id"]


def test_a_colleagues_clone_gets_the_kernel_by_pulling(
    open_builder: ImageBuilder, jde_tmp: Path
) -> None:
    # Given an environment pushed from one checkout
    mine = make_env(jde_tmp / "mine", "reg-clone")
    built, _ = build(open_builder, mine)
    push(open_builder, mine)
    # and a colleague whose engine never saw it, with a fresh clone (no lock, no Dockerfile)
    forget_locally(open_builder, built["image_id"])
    theirs = jde_tmp / "theirs" / "reg-clone"
    theirs.mkdir(parents=True)
    shutil.copy(mine / SPEC_FILE, theirs / SPEC_FILE)
    # When the colleague builds it
    result, _ = build(open_builder, theirs)
    # Then it is pulled, the kernel runs in it, and their lock file equals the pushed lock
    assert (result["built"], result["pulled"]) == (False, True)
    out = open_builder.engine.run_output(
        result["image"], ["python", "-c", "import ipykernel, six; print(six.__version__)"]
    )
    assert out.strip() == "1.16.0"
    assert read_lock(theirs) == built["lock"]
    assert read_lock(theirs) == read_lock(mine)


def test_pull_command_fetches_what_was_pushed(open_builder: ImageBuilder, jde_tmp: Path) -> None:
    folder = make_env(jde_tmp, "reg-pull")
    built, _ = build(open_builder, folder)
    push(open_builder, folder)
    forget_locally(open_builder, built["image_id"])

    result, op = pull(open_builder, folder)

    assert (result["built"], result["pulled"]) == (False, True)
    assert result["image_id"] == built["image_id"]
    assert result["lock"] == built["lock"]
    assert any(line.startswith("Pulling ") for line in op.log)


def test_missing_tag_is_a_clear_error_and_keeps_the_local_image(
    open_builder: ImageBuilder, jde_tmp: Path
) -> None:
    # Given an environment built here but never pushed
    folder = make_env(jde_tmp, "reg-unpushed")
    built, _ = build(open_builder, folder)
    # When it is pulled, Then the error says it is not in the registry and what to do
    with pytest.raises(OperationFailed) as err:
        pull(open_builder, folder)
    assert "is not in the registry" in str(err.value)
    assert "Push it first" in str(err.value)
    assert err.value.step == "pull"
    # and the local image is still there
    kept = open_builder.find_image(built["image"])
    assert kept is not None
    assert kept.id == built["image_id"]


def test_push_before_build_says_so(open_builder: ImageBuilder, jde_tmp: Path) -> None:
    folder = make_env(jde_tmp, "reg-never-built")
    with pytest.raises(OperationFailed, match="not built yet"):
        push(open_builder, folder)


def test_unreachable_registry_is_a_clear_error_and_builds_still_work(
    jde_engine: Engine, jde_base_image: str, jde_tmp: Path
) -> None:
    # Given a registry setting where nothing listens, and an environment built here
    nowhere = make_builder(jde_engine, jde_base_image, f"127.0.0.1:{jde_free_port()}/{JDE_PREFIX}")
    folder = make_env(jde_tmp, "reg-offline")
    built, _ = build(nowhere, folder)
    # When it is pushed or pulled, Then the error says the registry cannot be reached
    for action in (push, pull):
        with pytest.raises(OperationFailed) as err:
            action(nowhere, folder)
        assert "cannot be reached" in str(err.value)
        assert "c.DockerEnvApp.registry" in str(err.value)
    # and the local image is kept
    assert nowhere.find_image(built["image"]) is not None
    assert registry_has(nowhere, folder) is None
    # When a build must ask the registry, Then it warns and builds from the local cache instead
    untag(nowhere, folder)
    again, op = build(nowhere, folder)
    assert (again["built"], again["pulled"]) == (True, False)
    assert any("WARNING" in line and "cannot be reached" in line for line in op.log)


def test_basic_auth_registry_with_configured_credentials(
    auth_builder: ImageBuilder, jde_tmp: Path
) -> None:
    # Given an environment pushed with the configured credentials
    folder = make_env(jde_tmp, "reg-auth")
    built, _ = build(auth_builder, folder)
    pushed, _ = push(auth_builder, folder)
    assert registry_has(auth_builder, folder) is True
    # When the local image is gone, Then a build pulls it with the same credentials
    forget_locally(auth_builder, built["image_id"])
    again, _ = build(auth_builder, folder)
    assert (again["built"], again["pulled"]) == (False, True)
    assert again["image_id"] == built["image_id"]
    assert again["lock"] == built["lock"]
    assert read_lock(folder) == built["lock"]
    assert (folder / LOCK_FILE).is_file()
    assert pushed["digest"].startswith("sha256:")


@pytest.mark.parametrize(
    ("auth", "expected"),
    [
        ({"username": JDE_REGISTRY_USER, "password": "wrong"}, "refused the credentials"),
        (None, "needs credentials"),
    ],
    ids=["wrong-password", "no-credentials"],
)
def test_wrong_or_missing_credentials_are_clear_errors_and_keep_the_local_image(
    jde_engine: Engine,
    jde_base_image: str,
    jde_auth_registry: str,
    jde_tmp: Path,
    auth: dict[str, str] | None,
    expected: str,
) -> None:
    # Given an environment built here, and a builder with bad credentials for the auth registry
    builder = make_builder(jde_engine, jde_base_image, jde_auth_registry, auth)
    folder = make_env(jde_tmp, "reg-denied")
    built, _ = build(builder, folder)
    # When it is pushed or pulled, Then the error names the problem and the settings to fix
    for action in (push, pull):
        with pytest.raises(OperationFailed) as err:
            action(builder, folder)
        message = str(err.value)
        assert expected in message
        assert "docker login" in message
        assert "c.DockerEnvApp.registry_username" in message
    # and the local image is kept
    kept = builder.find_image(built["image"])
    assert kept is not None
    assert kept.id == built["image_id"]
    # When a build must ask the registry, Then it warns with the same message and builds
    untag(builder, folder)
    again, op = build(builder, folder)
    assert (again["built"], again["pulled"]) == (True, False)
    assert any("WARNING" in line and expected in line for line in op.log)


def test_a_registry_setting_that_is_no_host_and_namespace_is_a_clear_error(
    jde_engine: Engine, jde_base_image: str, jde_tmp: Path
) -> None:
    builder = make_builder(jde_engine, jde_base_image, "http://127.0.0.1:5000/jde-test")
    folder = make_env(jde_tmp, "reg-scheme")
    with pytest.raises(OperationFailed, match=r"is not HOST\[:PORT\]/NAMESPACE .*no http://"):
        pull(builder, folder)
