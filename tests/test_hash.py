"""The content hash names an environment's image: it must cover everything that changes what is
built, and nothing that does not (the name, the CA bundle, the package index). No engine needed:
the base image's id is given, as one listing of the engine would give it."""

from __future__ import annotations

import tempfile
from dataclasses import fields, replace
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from jupyter_docker_env.engine import Engine
from jupyter_docker_env.environments.dockerfile import RENDERER_VERSION
from jupyter_docker_env.environments.images import BuildSettings, ImageBuilder
from jupyter_docker_env.environments.spec import RUN_KEYS, spec_hash
from jupyter_docker_env.models import EnvSpec

BASE, BASE_ID = "python:3.12-slim", "sha256:" + "1" * 64
words = st.from_regex(r"[a-z][a-z0-9]{0,8}", fullmatch=True)
versions = st.from_regex(r"[0-9]{1,2}\.[0-9]{1,2}", fullmatch=True)
specs = st.builds(
    EnvSpec,
    name=words,
    kind=st.just("spec"),
    base=st.sampled_from([BASE, "debian:12", "registry.example.com/team/py:3.11"]),
    pip=st.lists(st.builds(lambda n, v: f"{n}=={v}", words, versions), max_size=3).map(tuple),
    apt=st.lists(words, max_size=3).map(tuple),
    conda=st.lists(words, max_size=2).map(tuple),
    gpu=st.booleans(),
    env=st.dictionaries(words.map(str.upper), words, max_size=3),
    requirements=st.none() | st.just("requirements.txt"),
    environment=st.none() | st.just("environment.yml"),
)

# One changed value for every field that shapes the image, and for the inputs beside the spec.
CHANGES = {
    "base": lambda s: replace(s, base="other/base:1"),
    "pip": lambda s: replace(s, pip=(*s.pip, "extra-package==1.0")),
    "apt": lambda s: replace(s, apt=(*s.apt, "extra-apt")),
    "conda": lambda s: replace(s, conda=(*s.conda, "extra-conda")),
    "gpu": lambda s: replace(s, gpu=not s.gpu),
    "env": lambda s: replace(s, env={**s.env, "EXTRA": "1"}),
    "requirements": lambda s: replace(
        s, requirements=None if s.requirements else "requirements.txt"
    ),
    "environment": lambda s: replace(s, environment=None if s.environment else "environment.yml"),
    "kind": lambda s: replace(s, kind="requirements"),
}


def h(
    spec: EnvSpec,
    base_id: str = BASE_ID,
    files: dict[str, bytes] | None = None,
    renderer: str = RENDERER_VERSION,
) -> str:
    return spec_hash(spec, base_id, renderer, files or {"requirements.txt": b"six\n"})


def test_every_field_of_the_spec_is_either_changed_below_or_does_not_shape_the_image() -> None:
    # a field added to EnvSpec must join CHANGES (or be a run setting, like warm)
    assert set(CHANGES) == {f.name for f in fields(EnvSpec)} - {"name", *RUN_KEYS}


@settings(max_examples=200, deadline=None)
@given(specs)
def test_every_field_that_shapes_the_image_changes_the_hash(spec: EnvSpec) -> None:
    original = h(spec)
    for field, change in CHANGES.items():
        assert h(change(spec)) != original, f"changing {field} kept the hash"
    # the base image's id and the bytes of a copied file are part of it too
    assert h(spec, base_id="sha256:" + "2" * 64) != original
    assert h(spec, files={"requirements.txt": b"six==1.16.0\n"}) != original
    assert h(spec, files={"requirements.txt": b"six\n", "environment.yml": b"x"}) != original
    # and so is the renderer's version: a new Dockerfile makes a new image
    assert h(spec, renderer=RENDERER_VERSION + "+1") != original


@settings(max_examples=200, deadline=None)
@given(specs, words)
def test_the_name_does_not_change_the_hash(spec: EnvSpec, name: str) -> None:
    assert h(replace(spec, name=name)) == h(spec)


@settings(max_examples=50, deadline=None)
@given(specs, st.none() | st.integers(min_value=0, max_value=8))
def test_run_settings_do_not_change_the_hash(spec: EnvSpec, warm: int | None) -> None:
    # how many kernels are kept warm changes how the image is used, not what it is
    assert h(replace(spec, warm=warm)) == h(spec)


def test_the_ca_bundle_and_the_index_do_not_change_the_planned_hash() -> None:
    # Given one folder planned by builders that differ only in CA bundle and package index
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "demo"
        folder.mkdir()
        (folder / "docker-env.toml").write_text(f'base = "{BASE}"\npip = ["six"]\n')
        ca = Path(tmp) / "corporate.pem"
        ca.write_text("-----BEGIN CERTIFICATE-----\n")
        hashes = {
            ImageBuilder(Engine("unix:///nonexistent.sock"), settings)
            .plan(folder, resolve_base=False, base_ids={BASE: BASE_ID})
            .hash
            for settings in (
                BuildSettings(default_base=BASE),
                BuildSettings(default_base=BASE, ca_bundle=str(ca)),
                BuildSettings(default_base=BASE, pip_index_url="https://pypi.example.com/simple"),
            )
        }
    # Then they agree
    assert len(hashes) == 1
    assert "" not in hashes
