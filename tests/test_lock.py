"""The lock is whole: everything the kernel can import, the apt versions, the base by digest;
and ``from_lock`` rebuilds exactly that, even after the base image's tag moved.

One environment, built once for the module, on a tag of the base image that the tests move.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from jupyter_docker_env.engine import Engine
from jupyter_docker_env.environments import lock
from jupyter_docker_env.environments.images import ImageBuilder
from jupyter_docker_env.environments.spec import SpecError
from jupyter_docker_env.models import BuildResult, Lock

from .builds import build, make_builder, make_env, venv_freeze
from .conftest import JDE_PREFIX, check_inside, jde_build_image

pytestmark = pytest.mark.docker
RUN = uuid.uuid4().hex[:8]


def normalized(entries: list[str]) -> dict[str, str]:
    """name==version lines → {normalized name: version}; the first of a name wins."""
    out: dict[str, str] = {}
    for entry in entries:
        name, _, version = entry.partition("==")
        out.setdefault(name.lower().replace("_", "-").replace(".", "-"), version)
    return out


def run_python(engine: Engine, image: str, code: str, python: str = "python3") -> str:
    return engine.run_output(image, [python, "-c", code]).strip()


@pytest.fixture(scope="module")
def base_tag(jde_engine: Engine, jde_base_image: str) -> Iterator[str]:
    """This module's own tag of the base image, free to be moved to another image."""
    repo, tag = f"{JDE_PREFIX}-base/python", RUN
    jde_engine.tag(jde_base_image, repo, tag)
    yield f"{repo}:{tag}"
    jde_engine.remove_image(f"{repo}:{tag}", force=True)


@pytest.fixture(scope="module")
def builder(jde_engine: Engine, base_tag: str) -> ImageBuilder:
    return make_builder(jde_engine, base_tag)


@pytest.fixture(scope="module")
def locked(
    builder: ImageBuilder, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, BuildResult]:
    """An environment with a system package from apt and an unpinned pip package, built."""
    folder = make_env(
        tmp_path_factory.mktemp("lock"),
        "locked",
        f'apt = ["python3-yaml"]\npip = ["tabulate"]\nenv = {{ RUN = "{RUN}" }}\n',
    )
    result, _ = build(builder, folder)
    assert result.built
    assert result.lock is not None
    return folder, result


def test_the_lock_names_everything_the_kernel_can_import(
    builder: ImageBuilder, locked: tuple[Path, BuildResult], base_tag: str
) -> None:
    engine = builder.engine
    folder, result = locked
    found = result.lock
    assert found is not None
    # Then every distribution the kernel's python can import is in the lock, at its version
    # (pip itself, without --local, lists the venv's and the system's)
    out = engine.run_output(result.image, ["/opt/venv/bin/pip", "list", "--format=freeze"])
    assert normalized(out.split()) == found.distributions()
    # and what the base image brought is marked as such: Debian's python3-pip brings wheel
    wheel = run_python(
        engine, base_tag, "import importlib.metadata as m; print(m.version('wheel'))"
    )
    assert f"wheel=={wheel}" in found.pip_base
    assert run_python(engine, result.image, "import wheel; print('ok')") == "ok"
    # and a Python package that apt installed is importable from the system, with its version,
    # and apt's package with Debian's version
    yaml = run_python(engine, result.image, "import yaml; print(yaml.__version__)")
    assert f"PyYAML=={yaml}" in found.pip_system
    assert not [p for p in (*found.pip, *found.pip_base) if p.startswith("PyYAML")]
    deb = engine.run_output(result.image, ["dpkg-query", "-W", "-f=${Version}", "python3-yaml"])
    assert found.apt == (f"python3-yaml={deb}",)
    # and the venv holds exactly the lock's pip section
    assert venv_freeze(engine, result.image) == sorted(found.pip)
    assert "tabulate" in normalized(list(found.pip))
    # and the base image is recorded by the name the spec gives, its id and a digest
    base = engine.inspect_image(base_tag)
    assert base is not None
    assert found.base is not None
    assert (found.base.image, found.base.id) == (base_tag, base["Id"])
    assert found.base.digest in base["RepoDigests"]
    # and the folder's lock file says the same
    assert lock.read(folder) == (found, result.spec_hash)
    # and the throwaway container that read it from the image is confined: nobody, no network,
    # a read-only root with only /tmp writable, limited
    check_inside(
        engine,
        result.image,
        kind="inspect",
        user=(65534, 65534),
        mounts={"/tmp": "tmpfs"},
        pids=64,
        memory=512 * 1024**2,
        read_only=True,
        network=False,
    )


def test_from_lock_builds_on_the_locked_digest_and_versions_after_the_base_tag_moved(
    builder: ImageBuilder, locked: tuple[Path, BuildResult], base_tag: str
) -> None:
    engine = builder.engine
    folder, first = locked
    assert first.lock is not None
    assert first.lock.base is not None
    # Given a lock with an older tabulate than `pip = ["tabulate"]` gets (so only the lock can
    # bring it)
    pip = tuple(
        "tabulate==0.8.10" if p.lower().startswith("tabulate==") else p for p in first.lock.pip
    )
    lock.write(folder, dataclasses.replace(first.lock, pip=pip), first.spec_hash, "locked")
    # and the base tag now names another image
    repo, _, tag = base_tag.rpartition(":")
    moved = jde_build_image(engine, f"FROM {base_tag}\nRUN touch /moved", f"{repo}:moved-{RUN}", {})
    engine.tag(moved, repo, tag)
    try:
        assert engine.inspect_image(base_tag)["Id"] != first.lock.base.id  # type: ignore[index]
        # When the environment is built from its lock
        again, op = build(builder, folder, from_lock=True)
    finally:
        engine.tag(first.lock.base.id, repo, tag)
        engine.remove_image(moved, force=True)

    # Then it was built FROM the locked digest, not the moved tag
    new = again.lock
    assert new is not None
    assert new.base is not None
    assert (new.base.id, new.base.digest) == (first.lock.base.id, first.lock.base.digest)
    assert new.base.image == base_tag
    assert f"FROM {first.lock.base.digest}" in (folder / "Dockerfile").read_text()
    absent = engine.run_output(again.image, ["sh", "-c", "test -e /moved || echo absent"])
    assert absent.strip() == "absent"
    # and installed exactly the locked pip versions and apt's locked version
    assert venv_freeze(engine, again.image) == sorted(pip)
    assert sorted(new.pip) == sorted(pip)
    assert new.apt == first.lock.apt
    assert any(f" {first.lock.apt[0]}" in line for line in op.log if line.startswith("Step "))


def test_from_lock_refuses_a_moved_base_it_cannot_find_by_digest(
    builder: ImageBuilder, locked: tuple[Path, BuildResult], base_tag: str, jde_base_image: str
) -> None:
    # Given a lock of a base without a digest (one that never came from a registry)
    folder, first = locked
    assert first.lock is not None
    assert first.lock.base is not None
    base = dataclasses.replace(first.lock.base, digest="")
    lock.write(folder, dataclasses.replace(first.lock, base=base), first.spec_hash, "locked")
    # When its tag names another image, Then from_lock refuses, naming the base and what to do
    repo, _, tag = base_tag.rpartition(":")
    engine = builder.engine
    other = jde_build_image(engine, f"FROM {jde_base_image}", f"{repo}:other-{RUN}", {})
    engine.tag(other, repo, tag)
    try:
        with pytest.raises(SpecError) as err:
            builder.plan(folder, from_lock=True)
    finally:
        engine.tag(base.id, repo, tag)
        engine.remove_image(other, force=True)
    assert err.value.field == "base"
    assert "no digest" in str(err.value)
    assert "Build without from_lock" in str(err.value)
    # and while the tag names the locked image, the lock's base is found by that tag
    plan = builder.plan(folder, from_lock=True)
    assert (plan.spec.base, plan.base) == (base_tag, base)


def test_a_lock_pins_pip_apt_and_the_base_of_the_spec() -> None:
    from jupyter_docker_env.models import BaseImage, EnvSpec

    spec = EnvSpec(name="x", kind="spec", base="py:3", pip=("six",), apt=("git", "tini:amd64"))
    found = Lock(
        pip=("six==1.16.0", "ipykernel==6.29.5"),
        apt=("git=1:2.39.5-0+deb12u1", "tini=0.19.0-1"),
        base=BaseImage(image="py:3", id="sha256:1", digest="py@sha256:2"),
    )
    pinned = lock.pin(spec, found)
    assert pinned.pip == found.pip
    assert pinned.apt == ("git=1:2.39.5-0+deb12u1", "tini:amd64=0.19.0-1")
    assert pinned.base == "py@sha256:2"
    with pytest.raises(SpecError, match="no lock yet"):
        lock.pin(spec, Lock())
