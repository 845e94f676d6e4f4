"""Spec validation and Dockerfile rendering: no engine needed."""

from __future__ import annotations

from pathlib import Path

import pytest

from jupyter_docker_env.environments import dockerfile
from jupyter_docker_env.environments.spec import (
    SpecError,
    check_base_allowed,
    load,
    parse,
    spec_hash,
)

BASE = "python:3.12-slim"


def write(folder: Path, text: str, name: str = "docker-env.toml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)
    return folder


@pytest.mark.parametrize(
    ("toml", "field", "words"),
    [
        ('colour = "blue"', "colour", "unknown key"),
        ('pip = ["pandas=<2"]', "pip[0]", "not a valid requirement"),
        ('pip = ["--index-url=http://x"]', "pip[0]", "pip options are not allowed"),
        ('apt = ["git; rm -rf /"]', "apt[0]", "Debian package name"),
        ('apt = ["$(curl evil)"]', "apt[0]", "Debian package name"),
        ('base = "Not An Image!"', "base", "image reference"),
        ('name = "Bad Name"', "name", "valid environment name"),
        ("gpu = 3", "gpu", "true or false"),
        ('env = { "1BAD" = "x" }', "env.1BAD", "variable name"),
        ('conda = ["numpy; echo"]', "conda[0]", "conda package"),
        ('pip = "pandas"', "pip", "list of strings"),
        ('requirements = "missing.txt"', "requirements", "does not exist"),
        ("this is = not toml", "docker-env.toml", "not valid TOML"),
    ],
)
def test_bad_spec_names_its_field(tmp_path: Path, toml: str, field: str, words: str) -> None:
    # Given an environment whose spec has one mistake
    folder = write(tmp_path / "env", toml)
    # When it is loaded, Then the error names the field and says what is wrong
    with pytest.raises(SpecError) as err:
        load(folder, BASE)
    assert err.value.field == field
    assert words in err.value.message


def test_disallowed_base_is_refused(tmp_path: Path) -> None:
    spec = load(write(tmp_path / "env", 'base = "evil/miner:latest"'), BASE)
    with pytest.raises(SpecError) as err:
        check_base_allowed(spec, ["python:3.1*-slim", "registry.example.com/*"])
    assert err.value.field == "base"
    assert "python:3.1*-slim" in err.value.message
    check_base_allowed(load(write(tmp_path / "ok", f'base = "{BASE}"'), BASE), ["python:*"])


def test_spec_is_normalized_so_equal_specs_hash_equal(tmp_path: Path) -> None:
    a = parse({"pip": ["Pandas == 2.2.3"], "apt": ["git", "curl", "git"]}, tmp_path, BASE)
    b = parse({"pip": ["Pandas==2.2.3"], "apt": ["curl", "git"]}, tmp_path, BASE)
    assert a == b
    assert spec_hash(a, "sha256:1", "1", {}) == spec_hash(b, "sha256:1", "1", {})
    assert spec_hash(a, "sha256:1", "1", {}) != spec_hash(a, "sha256:2", "1", {})
    assert spec_hash(a, "sha256:1", "1", {}) != spec_hash(a, "sha256:1", "2", {})


def test_folder_kinds_are_detected(tmp_path: Path) -> None:
    assert load(write(tmp_path / "req", "six\n", "requirements.txt"), BASE).kind == "requirements"
    assert load(write(tmp_path / "req", "six\n", "requirements.txt"), BASE).base == BASE
    df = load(write(tmp_path / "df", "FROM busybox\n", "Dockerfile"), BASE)
    assert (df.kind, df.base) == ("dockerfile", None)
    yml = write(tmp_path / "yml", "dependencies:\n  - pip:\n    - six\n", "environment.yml")
    assert load(yml, BASE).kind == "environment"
    with pytest.raises(SpecError, match="holds no"):
        load(tmp_path / "req" / "..", BASE)


def test_rendered_dockerfile_layers_change_least_first(tmp_path: Path) -> None:
    spec = parse({"pip": ["pandas==2.2.3"], "apt": ["git"], "env": {"TZ": "UTC"}}, tmp_path, BASE)
    text = dockerfile.render(spec, tmp_path)
    apt, venv, pip = (text.index(s) for s in ("apt-get install", "venv", "pandas==2.2.3"))
    assert apt < venv < pip
    assert "ipykernel" in text
    # the portable flavour (written into the folder) keeps no caches in the image
    assert "rm -rf /var/lib/apt/lists/*" in text
    assert "pip install --no-cache-dir pandas==2.2.3" in text
    assert "--mount" not in text
    # BuildKit's keeps pip's and apt's downloads in cache mounts, outside the image
    cached = dockerfile.render(spec, tmp_path, cache_id="docker-env")
    assert "RUN --mount=type=cache,id=docker-env-pip,target=/var/cache/docker-env/pip" in cached
    downloads = "/var/cache/docker-env/pip/downloads"
    assert f"pip download --dest {downloads} pandas==2.2.3" in cached
    assert f"pip install --no-index --find-links {downloads} pandas==2.2.3" in cached
    assert "--mount=type=cache,id=docker-env-apt," in cached
    assert "--no-cache-dir" not in cached
    assert "rm -rf /var/lib/apt/lists/*" not in cached
    ignore = dockerfile.dockerignore(spec)
    assert ignore.splitlines()[2:] == [
        "*",
        "!.dockerignore",
        "!docker-env-ca.crt",
        "!docker-env.toml",
    ]
