"""Hardening: bad input, planted files and engine faults never escape, leak or break the server.

The server often runs as root (it owns the Docker socket), so everything a user or a kernel can
write is input to it. These tests play the clumsy user and the attacker: names and values that
used to write outside the workspace, crash a request or start a Dockerfile instruction; links a
kernel plants in an environment folder; broken folders next to good ones; a stopped engine.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from jupyter_docker_env.engine import Engine
from jupyter_docker_env.environments import dockerfile, files
from jupyter_docker_env.environments.spec import SpecError, load, parse
from jupyter_docker_env.labels import label
from jupyter_docker_env.operations import Operation, OperationManager

from .conftest import CA_BUNDLE, JDE_FIXTURE_LABEL, JDE_IN_CI, JDE_PREFIX, JDE_TEST_LABELS
from .test_api import API, call, jp_server_config, wait_operation

__all__ = ["jp_server_config"]  # the test server's configuration, shared with test_api

docker = pytest.mark.docker
# (in CI these run whatever the uid, and fail where they cannot: no skip hides a missing root)
as_root = pytest.mark.skipif(
    os.geteuid() != 0 and not JDE_IN_CI, reason="plays a root server and a uid-1000 kernel"
)
BASE = "python:3.12-slim"
NO_ENGINE = pytest.mark.docker_env_config(
    {"docker_host": "unix:///nonexistent/docker.sock", "registry": "127.0.0.1:5999/team"}
)
KERNEL_UID = 1000  # the uid a kernel runs as (the workspace's owner)
# Plain containers that stand for a kernel holding an image (not confined like a real one)
HOLDER_LABELS = {**JDE_TEST_LABELS, JDE_FIXTURE_LABEL: "1"}
# Names refused on every route: Docker's grammar, lengths, paths and control characters.
BAD_NAMES = [
    "a..b",
    " ",
    "\t",
    "abc\n",
    "a" * 64,
    "é" * 200,  # 400 bytes
    "x" * 300,
    "../../somewhere",
    "/abs/olute",
    "a/b",
    "-a",
    "a-",
    "a___b",
    "Caps",
    "",
]


@pytest.fixture
def jp_root_dir(jde_tmp: Path) -> Path:
    """The workspace, in a folder a uid-1000 process can reach (pytest's own are 0700)."""
    root = jde_tmp / "workspace"
    root.mkdir()
    return root


def tree(top: Path) -> dict[str, tuple[int, int, int]]:
    """Every path under ``top`` (links not followed) with its type, size and owner."""
    found = {}
    for dirpath, dirs, names in os.walk(top):
        for name in dirs + names:
            path = Path(dirpath, name)
            st = path.lstat()
            found[str(path.relative_to(top))] = (st.st_mode, st.st_size, st.st_uid)
    return found


def as_kernel(script: str, cwd: Path) -> None:
    """Run a shell script as the kernel's uid, as code in a notebook would."""
    subprocess.run(
        ["sh", "-ec", script], cwd=cwd, user=KERNEL_UID, group=KERNEL_UID, check=True, timeout=30
    )


def give_to_kernel(path: Path) -> None:
    os.chown(path, KERNEL_UID, KERNEL_UID)


# -- names, references and values (no engine) -------------------------------------------------
@pytest.mark.parametrize("name", BAD_NAMES)
def test_names_follow_dockers_grammar(tmp_path: Path, name: str) -> None:
    with pytest.raises(SpecError) as err:
        parse({"name": name}, tmp_path, BASE)
    assert err.value.field == "name"


@pytest.mark.parametrize("name", ["a", "a-b", "a--b", "a__b", "a.b", "a_b", "x" * 63, "0"])
def test_names_docker_takes_are_taken(tmp_path: Path, name: str) -> None:
    assert parse({"name": name}, tmp_path, BASE).name == name


@pytest.mark.parametrize(
    "base",
    ["Abc/def", "a" * 300, "abc\n", "-a-.b/x", "x:", "x@sha256:abc", " python", "py thon", "a..b"],
)
def test_bases_docker_would_refuse_are_refused(tmp_path: Path, base: str) -> None:
    with pytest.raises(SpecError) as err:
        parse({"base": base}, tmp_path, BASE)
    assert err.value.field == "base"


@pytest.mark.parametrize(
    "base",
    ["python:3.12-slim", "127.0.0.1:5000/team/py:t", "localhost/x", "reg.example.com/a:B", "a/b/c"],
)
def test_bases_docker_takes_are_taken(tmp_path: Path, base: str) -> None:
    assert parse({"base": base}, tmp_path, BASE).base == base


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"env": {"A": "x'\nRUN touch /tmp/pwned #"}}, "env.A"),
        ({"env": {"A\n": "x"}}, "env.A\n"),
        ({"env": {"A": "tab\there"}}, "env.A"),
        ({"env": {"A": "\ud800"}}, "env.A"),
        ({"env": {"A": "x" * 40000}}, "env.A"),
        ({"conda": ["-c", "evilchannel", "--override-channels"]}, "conda[0]"),
        ({"conda": ["numpy", "--override-channels"]}, "conda[1]"),
        ({"conda": ["::numpy"]}, "conda[0]"),
        ({"conda": ["numpy\nRUN x"]}, "conda[0]"),
        ({"apt": ["-oDebug::pkgProblemResolver=1"]}, "apt[0]"),
        ({"apt": ["git\nRUN x"]}, "apt[0]"),
        ({"apt": ["git\n"]}, None),  # surrounding blanks are trimmed, as before
        ({"pip": ["six\nRUN touch /x"]}, "pip[0]"),
        ({"pip": ["--extra-index-url=http://evil"]}, "pip[0]"),
        ({"pip": ["", "-e ."]}, "pip[1]"),
        ({"pip": ["six"] * 1001}, "pip"),
    ],
)
def test_no_value_can_start_a_dockerfile_instruction_or_an_option(
    tmp_path: Path, spec: dict[str, Any], field: str | None
) -> None:
    if field is None:
        parse(spec, tmp_path, BASE)
        return
    with pytest.raises(SpecError) as err:
        parse(spec, tmp_path, BASE)
    assert err.value.field == field


@pytest.mark.parametrize("name", ["req\nRUN touch x", "req txt", "req$(id)", "-r", ".hidden"])
def test_files_a_spec_names_are_plain_names(tmp_path: Path, name: str) -> None:
    # Given a file whose name would break the COPY instruction that copies it
    (tmp_path / name).write_text("six\n")
    with pytest.raises(SpecError) as err:
        parse({"requirements": name}, tmp_path, BASE)
    assert err.value.field == "requirements"


@pytest.mark.parametrize("entry", ["six\nRUN touch /pwned", "--index-url=http://evil", "-e ."])
def test_environment_yml_pip_entries_cannot_reach_the_dockerfile(
    tmp_path: Path, entry: str
) -> None:
    # Given an environment.yml without conda packages: its pip entries become a RUN line
    (tmp_path / "environment.yml").write_text(
        json.dumps({"dependencies": ["python", {"pip": ["six", entry]}]})
    )
    with pytest.raises(SpecError) as err:
        load(tmp_path, BASE)
    assert err.value.field == "environment"
    assert "pip[1]" in err.value.message


def test_a_rendered_dockerfile_holds_exactly_its_instructions(tmp_path: Path) -> None:
    spec = parse(
        {"pip": ["six; python_version > '3'"], "apt": ["git"], "env": {"A": "x y 'z' $HOME \\"}},
        tmp_path,
        BASE,
    )
    lines = [line for line in dockerfile.render(spec, tmp_path).splitlines() if line.strip()]
    instructions = [line.split()[0] for line in lines if not line.startswith((" ", "#"))]
    assert instructions == [
        "FROM",
        "USER",
        "ENV",
        "ARG",
        "COPY",
        "RUN",
        "RUN",
        "RUN",
        "ENV",
        "RUN",
        "RUN",
        "ENV",
    ]
    assert lines[-1] == "ENV A='x y '\"'\"'z'\"'\"' $HOME \\'"


# -- the files module (real files; no engine) --------------------------------------------------
@pytest.fixture
def kernel_folder(jde_tmp: Path) -> tuple[Path, Path]:
    """An environment folder owned by the kernel's uid, and a root-only secret outside it."""
    folder = jde_tmp / "env"
    folder.mkdir()
    give_to_kernel(folder)
    secret = jde_tmp / "secret.txt"
    secret.write_text("root only\n")
    secret.chmod(0o600)
    return folder, secret


@as_root
def test_reads_never_follow_a_link_or_hang_on_a_fifo(kernel_folder: tuple[Path, Path]) -> None:
    folder, secret = kernel_folder
    as_kernel(
        f"ln -s {secret} req.txt; mkdir sub; ln -s {secret.parent} dirlink; mkfifo pipe; "
        "truncate -s 100M big.txt",
        folder,
    )
    for name, words in (
        ("req.txt", "symbolic link"),
        ("dirlink/secret.txt", "symbolic link"),
        ("pipe", "not a regular file"),
        ("big.txt", "larger than"),
        ("../secret.txt", "inside the environment folder"),
        ("missing", "does not exist"),
    ):
        with pytest.raises(files.FileRefused) as err:
            files.read_bytes(folder, name)
        assert err.value.field == name
        assert words in err.value.message
    # a folder reached through a link is refused as a whole
    (folder.parent / "envlink").symlink_to(folder)
    with pytest.raises(files.FileRefused, match="reached through a symbolic link"):
        files.read_bytes(folder.parent / "envlink", "req.txt")


@as_root
def test_as_root_the_server_reads_only_what_the_owner_could(
    kernel_folder: tuple[Path, Path],
) -> None:
    # Given a root-only file moved into the kernel's folder (a user may move what they cannot read)
    folder, secret = kernel_folder
    os.rename(secret, folder / "req.txt")
    with pytest.raises(files.FileRefused, match="owner may not read it"):
        files.read_bytes(folder, "req.txt")
    (folder / "req.txt").chmod(0o644)
    assert files.read_bytes(folder, "req.txt") == b"root only\n"


@as_root
def test_writes_belong_to_the_folder_owner_and_replace_links(
    kernel_folder: tuple[Path, Path],
) -> None:
    folder, secret = kernel_folder
    # A new file is the owner's, and so is a folder made for them
    files.write_text(folder, "Dockerfile", "FROM x\n")
    made = files.make_folder(folder, "a/b")
    for path in (folder / "Dockerfile", folder / "a", made):
        assert (path.stat().st_uid, path.stat().st_gid) == (KERNEL_UID, KERNEL_UID)
    # A link in the file's place is refused; nothing is written through it
    as_kernel(f"ln -s {secret} docker-env.lock; ln -s {secret.parent}/new .dockerignore", folder)
    for name in ("docker-env.lock", ".dockerignore"):
        with pytest.raises(files.FileRefused, match="symbolic link"):
            files.write_text(folder, name, "x")
    assert secret.read_text() == "root only\n"
    assert not (secret.parent / "new").exists()
    # A folder whose owner may not write it is not written as root either
    folder.chmod(0o555)
    assert not files.writable(folder)
    with pytest.raises(files.FileRefused, match="may not write"):
        files.write_text(folder, "Dockerfile", "FROM y\n")
    # Removing a folder with links in it removes the links, not what they point to
    folder.chmod(0o755)
    files.remove_folder(folder)
    assert not folder.exists()
    assert secret.read_text() == "root only\n"


@as_root
def test_a_user_reaches_a_folder_through_folders_they_may_only_traverse(jde_tmp: Path) -> None:
    # Given an environment of uid 1000 below a folder that uid may cross but not list (0711)
    (jde_tmp / "home").mkdir(mode=0o711)
    folder = jde_tmp / "home" / "env"
    folder.mkdir()
    (folder / "docker-env.toml").write_text('pip = ["six"]\n')
    give_to_kernel(folder)
    # When that user's CLI reads it, Then it reads it as any program could
    script = (
        "import pathlib, sys\n"
        "from jupyter_docker_env.environments.spec import load\n"
        "print(load(pathlib.Path(sys.argv[1]), 'python:3').pip)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(folder)],
        user=KERNEL_UID,
        group=KERNEL_UID,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert out.stdout.strip() == "('six',)", out.stderr


def test_a_build_context_keeps_links_inside_and_refuses_links_out(jde_tmp: Path) -> None:
    folder = jde_tmp / "ctx"
    (folder / "data").mkdir(parents=True)
    (folder / "Dockerfile").write_text("FROM x\n")
    (folder / "data" / "a.csv").write_text("1\n")
    (folder / "inside").symlink_to("data/a.csv")
    entries = files.read_tree(folder, ["Dockerfile", "data", "data/a.csv", "inside"])
    assert entries["inside"] == files.Entry("link", b"data/a.csv")
    files.write_tree(entries, jde_tmp / "copy")
    assert (jde_tmp / "copy" / "inside").read_text() == "1\n"
    for target in ("/etc/passwd", "../../outside", "data/../../x"):
        (folder / "out").unlink(missing_ok=True)
        (folder / "out").symlink_to(target)
        with pytest.raises(files.FileRefused, match="outside the environment folder") as err:
            files.read_tree(folder, ["out"])
        assert err.value.field == "out"


# -- REST: bad input is a 400 naming its field, and nothing is written -------------------------
@NO_ENGINE
async def test_bad_names_are_refused_on_every_route_and_nothing_is_written(
    jp_fetch: Any, jp_root_dir: Path, jde_tmp: Path
) -> None:
    # Given a workspace with files to create environments from, and one environment
    (jp_root_dir / "src").mkdir()
    (jp_root_dir / "src" / "Dockerfile").write_text("FROM x\n")
    (jp_root_dir / "src" / "requirements.txt").write_text("six\n")
    (jp_root_dir / "environments" / "demo").mkdir(parents=True)
    (jp_root_dir / "environments" / "demo" / "docker-env.toml").write_text('pip = ["six"]\n')
    before = tree(jde_tmp)
    # When bad names come through every route that takes one
    for name in BAD_NAMES:
        for body in (
            {"name": name},
            {"name": name, "pip": ["six"]},
            {"name": name, "from_path": "src/Dockerfile"},
            {"name": name, "from_path": "src/requirements.txt", "pip": ["six"]},
        ):
            err = await call(jp_fetch, "envs", "POST", body, expect=400)
            assert err["field"] == "name", (name, body, err)
        err = await call(jp_fetch, "envs/demo", "PUT", {"name": name}, expect=400)
        assert err["field"] == "name"
    # Then nothing was written anywhere, in the workspace or outside it
    assert tree(jde_tmp) == before


@NO_ENGINE
async def test_unknown_keys_are_refused_on_every_route(jp_fetch: Any, jp_root_dir: Path) -> None:
    (jp_root_dir / "src").mkdir()
    (jp_root_dir / "src" / "Dockerfile").write_text("FROM x\n")
    (jp_root_dir / "src" / "requirements.txt").write_text("six\n")
    (jp_root_dir / "environments" / "demo").mkdir(parents=True)
    (jp_root_dir / "environments" / "demo" / "docker-env.toml").write_text('pip = ["six"]\n')
    for path, method, body, field in (
        ("envs", "POST", {"name": "ok", "colour": "blue"}, "colour"),
        ("envs", "POST", {"name": "ok", "from_path": "src/Dockerfile", "colour": 1}, "colour"),
        ("envs", "POST", {"name": "ok", "from_path": "src/Dockerfile", "pip": ["six"]}, "pip"),
        (
            "envs",
            "POST",
            {"name": "ok", "from_path": "src/requirements.txt", "requirements": "x"},
            "requirements",
        ),
        ("envs", "POST", {"name": "ok", "from_path": "src/requirements.txt", "x": 1}, "x"),
        ("envs/demo", "PUT", {"from_path": "src/Dockerfile"}, "from_path"),
        ("envs/demo", "PUT", {"kind": "dockerfile"}, "kind"),
        ("envs/demo/builds", "POST", {"turbo": True}, "turbo"),
        ("envs/demo/kernels", "POST", {"cpu": 1}, "cpu"),
    ):
        err = await call(jp_fetch, path, method, body, expect=400)
        assert err["field"] == field, (body, err)
    assert not (jp_root_dir / "environments" / "ok").exists()


@NO_ENGINE
async def test_input_that_crashed_the_server_is_a_400_naming_its_field(
    jp_fetch: Any, jp_root_dir: Path
) -> None:
    (jp_root_dir / "environments" / "demo").mkdir(parents=True)
    (jp_root_dir / "environments" / "demo" / "docker-env.toml").write_text('pip = ["six"]\n')
    deep: Any = "x"
    for _ in range(40):
        deep = [deep]
    for path, method, body, field in (
        ("envs", "POST", {"name": "ok", "from_path": 3}, "from_path"),
        ("envs", "POST", {"name": "ok", "from_path": ["src"]}, "from_path"),
        ("envs", "POST", {"name": "ok", "from_path": "x" * 300 + "/Dockerfile"}, "from_path"),
        ("envs", "POST", {"name": "ok", "from_path": "src/\0Dockerfile"}, "from_path"),
        ("envs", "POST", {"name": "ok", "from_path": "../../../etc/passwd"}, "from_path"),
        ("envs", "POST", {"name": "ok", "pip": deep}, "pip"),
        ("envs", "POST", {"name": "ok", "base": "a" * 300}, "base"),
        ("envs", "POST", {"name": "ok", "base": "Abc/def"}, "base"),
        ("envs", "POST", {"name": "ok", "env": {"A": "\ud800"}}, "env.A"),
        ("envs", "POST", {"name": "ok", "env": {"A": {"B": 1}}}, "env.A"),
        ("envs", "POST", {"name": "ok", "gpu": 1e308}, "gpu"),
        ("envs", "POST", {"name": 10**30}, "name"),
        ("envs", "POST", {"name": None}, "name"),
        ("envs/demo", "PUT", {"base": "abc\n"}, "base"),
        ("envs/demo/kernels", "POST", {"cpus": 1e308}, "cpus"),
        ("envs/demo/kernels", "POST", {"cpus": "nan"}, "cpus"),
        ("envs/demo/kernels", "POST", {"memory": "9" * 400}, "memory"),
        ("envs/demo/kernels", "POST", {"memory": 1e308}, "memory"),
        ("envs/demo/kernels", "POST", {"gpus": ["all"]}, "gpus"),
    ):
        err = await call(jp_fetch, path, method, body, expect=400)
        assert err["field"] == field, (body, err)
    # bodies that are no JSON object name the body
    for raw in ("{nope", "[1]", "[" * 5000 + "]" * 5000):
        resp = await jp_fetch(API, "envs", method="POST", body=raw, raise_error=False)
        assert resp.code == 400
        assert json.loads(resp.body)["field"] == "body"


@as_root
@NO_ENGINE
async def test_a_request_cannot_make_the_server_read_what_its_user_could_not(
    jp_fetch: Any, jp_root_dir: Path, jde_tmp: Path
) -> None:
    # Given a workspace of uid 1000 holding a root-only file, and a link to one outside
    give_to_kernel(jp_root_dir)
    (jp_root_dir / "src").mkdir()
    give_to_kernel(jp_root_dir / "src")
    (jp_root_dir / "src" / "requirements.txt").write_text("root only\n")
    (jp_root_dir / "src" / "requirements.txt").chmod(0o600)
    (jde_tmp / "environment.yml").write_text("dependencies: []\n")
    (jp_root_dir / "src" / "environment.yml").symlink_to(jde_tmp / "environment.yml")
    # When environments are created from them, Then both are refused, naming from_path
    for source, words in (
        ("src/requirements.txt", "owner may not read it"),
        ("src/environment.yml", "outside the workspace"),
    ):
        body = {"name": "stolen", "from_path": source}
        err = await call(jp_fetch, "envs", "POST", body, expect=400)
        assert err["field"] == "from_path"
        assert words in err["message"]
    assert not (jp_root_dir / "environments").exists()


# -- REST: no engine → a clear 503, and nothing changes ----------------------------------------
@NO_ENGINE
async def test_without_an_engine_every_route_that_needs_it_is_a_503_and_changes_nothing(
    jp_fetch: Any, jp_root_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Given an environment, and no Docker engine
    demo = jp_root_dir / "environments" / "demo"
    demo.mkdir(parents=True)
    (demo / "docker-env.toml").write_text('pip = ["six"]\n')
    before = tree(jp_root_dir)
    caplog.set_level(logging.WARNING)
    # When any route that needs the engine is called
    for path, method, body in (
        ("envs", "GET", None),
        ("envs", "POST", {"name": "new", "pip": ["six"]}),
        ("envs/demo", "GET", None),
        ("envs/demo", "PUT", {"pip": ["six", "attrs"]}),
        ("envs/demo", "DELETE", None),
        ("envs/demo/builds", "POST", {}),
        ("envs/demo/push", "POST", {}),
        ("envs/demo/pull", "POST", {}),
        ("envs/demo/registry", "GET", None),
        ("envs/demo/kernels", "POST", {"memory": "1g"}),
    ):
        # Then it answers 503 saying what to do
        err = await call(jp_fetch, path, method, body, expect=503)
        assert "No Docker engine answers" in err["message"], (path, method)
        assert "make docker" in err["message"]
    # and changed nothing, and logged no traceback
    assert tree(jp_root_dir) == before
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records]


# -- REST with the engine: a broken environment never breaks the others ------------------------
@docker
async def test_one_broken_environment_never_breaks_the_listing_or_the_kernel_specs(
    jp_fetch: Any, jp_root_dir: Path, jde_engine: Engine, jp_serverapp: Any, jde_tmp: Path
) -> None:
    # Given a good environment with an image
    envs = jp_root_dir / "environments"
    good = f"hardening-good-{uuid.uuid4().hex[:6]}"
    (envs / good).mkdir(parents=True)
    (envs / good / "docker-env.toml").write_text('pip = ["six"]\n')
    base = jde_engine.inspect_image(os.environ["JDE_BASE_IMAGE"])
    assert base is not None
    jde_engine.tag(base["Id"], f"{JDE_PREFIX}/{good}", "latest")
    # and, next to it, every kind of broken folder a user or a kernel can make
    secret = jde_tmp / "secret.txt"
    secret.write_text("root only\n")
    secret.chmod(0o600)
    broken = {
        "a..b": ("docker-env.toml", 'pip = ["six"]\n'),
        "\t": ("requirements.txt", "six\n"),
        "longbase": ("docker-env.toml", f'base = "{"a" * 300}"\n'),
        "badtoml": ("docker-env.toml", "this is = not toml"),
        "latin1": ("docker-env.toml", None),
        "linked": ("docker-env.toml", secret),
        "fifo": ("Dockerfile", "fifo"),
        "hugereq": ("requirements.txt", "huge"),
    }
    for folder, (file_name, content) in broken.items():
        (envs / folder).mkdir()
        path = envs / folder / file_name
        if isinstance(content, Path):
            path.symlink_to(content)
        elif content == "fifo":
            os.mkfifo(path)
        elif content == "huge":
            with path.open("w") as f:
                f.truncate(100 * 1024**2)  # sparse: no disk used
        elif content is None:
            path.write_bytes('pip = ["caf\xe9"]\n'.encode("latin-1"))
        else:
            path.write_text(content)
    (envs / "dirlink").symlink_to(secret.parent)
    try:
        # When the environments are listed
        listed = {e["name"]: e for e in (await call(jp_fetch, "envs"))["envs"]}
        # Then the good one is there, unharmed, and each broken one shows its error
        assert listed[good]["error"] is None
        assert listed[good]["state"] == "outdated"  # its image is not this spec's
        for name, words in (
            ("a..b", "valid environment name"),
            ("\t", "valid environment name"),
            ("longbase", "image reference"),
            ("badtoml", "not valid TOML"),
            ("latin1", "not UTF-8"),
            ("linked", "symbolic link"),
            ("fifo", "not a regular file"),
            ("hugereq", "larger than"),
            ("dirlink", "symbolic link"),
        ):
            assert listed[name]["state"] == "failed", (name, listed[name])
            assert words in listed[name]["error"], (name, listed[name]["error"])
        # and the good environment's kernel spec is written all the same
        await jp_serverapp.web_app.settings["docker_env"].environments.sync_kernelspecs()
        specs = json.loads((await jp_fetch("api", "kernelspecs")).body)["kernelspecs"]
        assert f"docker-env-{good}" in specs
        # and a broken environment can still be deleted
        await call(jp_fetch, "envs/a..b", "DELETE", expect=204)
        assert not (envs / "a..b").exists()
        # and deleting a linked folder removes the link, never what it points to
        await call(jp_fetch, "envs/dirlink", "DELETE", expect=204)
        assert secret.read_text() == "root only\n"
    finally:
        jde_engine.remove_image(f"{JDE_PREFIX}/{good}:latest")


# -- links planted by a kernel ----------------------------------------------------------------
def _all_image_ids(engine: Engine, dangling: bool = False) -> set[str]:
    filters = {"dangling": True} if dangling else None
    return {str(i["Id"]) for i in engine.client.api.images(all=True, filters=filters)}


def _lineage(engine: Engine, image_id: str) -> set[str]:
    """An image and the images it was built on (the legacy builder's intermediate images)."""
    seen: set[str] = set()
    while image_id and image_id not in seen:
        seen.add(image_id)
        image_id = str((engine.inspect_image(image_id) or {}).get("Parent") or "")
    return seen


def _images_holding(engine: Engine, image_ids: set[str], token: bytes) -> list[str]:
    """Those of ``image_ids`` whose exported layers contain ``token``."""
    holding = []
    for image_id in image_ids:
        tail = b""
        for chunk in engine.client.api.get_image(image_id):
            if token in tail + chunk:
                holding.append(image_id)
                break
            tail = chunk[-len(token) :]
    return holding


def _files_holding(root: str, since: Path, token: bytes) -> list[str]:
    """Files under the engine's data root written since ``since`` that contain ``token``."""
    out = subprocess.run(
        ["find", root, "-xdev", "-newer", str(since), "-type", "f", "-size", "-64M", "-print0"],
        capture_output=True,
        check=False,
    ).stdout
    holding = []
    for raw in out.split(b"\0"):
        if raw:
            try:
                if token in Path(os.fsdecode(raw)).read_bytes():
                    holding.append(os.fsdecode(raw))
            except OSError:
                continue  # gone meanwhile
    return holding


async def _build(jp_fetch: Any, name: str) -> dict[str, Any]:
    op = await call(jp_fetch, f"envs/{name}/builds", "POST", {}, expect=202)
    return await wait_operation(jp_fetch, op["id"])


@docker
@as_root
@pytest.mark.parametrize(
    "builder",
    [
        pytest.param("buildkit", marks=pytest.mark.docker_env_config({"ca_bundle": CA_BUNDLE})),
        pytest.param(
            "legacy",
            marks=pytest.mark.docker_env_config({"ca_bundle": CA_BUNDLE, "builder": "legacy"}),
        ),
    ],
)
async def test_links_a_kernel_plants_are_never_followed_by_a_build(
    jp_fetch: Any,
    jp_root_dir: Path,
    jde_base_image: str,
    jde_engine: Engine,
    jde_tmp: Path,
    builder: str,
) -> None:
    # Given a secret only root can read, outside the workspace, and paths outside that do not
    # exist yet, which has not been read since it was last written
    token = f"jde-secret-{uuid.uuid4().hex}"
    outside = jde_tmp / "outside"
    outside.mkdir(mode=0o700)
    secret = outside / "secret.txt"
    secret.write_text(f"{token}\n")
    secret.chmod(0o600)
    read_at = time.time_ns() - 3600 * 10**9
    os.utime(secret, ns=(read_at, read_at + 10**9))  # relatime: a read now moves the atime
    missing = [outside / f"planted-{i}" for i in range(3)]
    marker = jde_tmp / "marker"
    marker.touch()
    # (a nonce makes this run's images new even where an earlier run left the same ones)
    nonce = uuid.uuid4().hex
    before = _all_image_ids(jde_engine)
    # and a workspace of the kernel's uid, where the kernel plants links in environment folders
    give_to_kernel(jp_root_dir)
    envs = jp_root_dir / "environments"
    as_kernel(
        f"""
        mkdir -p environments && cd environments
        mkdir spec && cd spec
        printf 'base = "{jde_base_image}"\\nrequirements = "req.txt"\\n' > docker-env.toml
        ln -s {secret} req.txt; ln -s {missing[0]} Dockerfile; cd ..
        mkdir lock && cd lock
        printf 'base = "{jde_base_image}"\\n' > docker-env.toml
        ln -s {missing[1]} docker-env.lock; cd ..
        mkdir context && cd context
        printf 'FROM {jde_base_image}\\nCOPY . /ctx/\\n' > Dockerfile
        ln -s {secret} data.txt; cd ..
        mkdir ignored && cd ignored
        printf 'FROM {jde_base_image}\\nLABEL run={nonce}\\nCOPY . /ctx/\\n' > Dockerfile
        printf 'data.txt\\nnotes\\n' > .dockerignore
        ln -s {secret} data.txt; ln -s Dockerfile inside; ln -s {missing[2]} notes; cd ..
        mkdir clean && cd clean
        printf 'base = "{jde_base_image}"\\nenv = {{ JDE_HARDENING = "{nonce}" }}\\n' \\
            > docker-env.toml
        ln -s {secret} notes.txt
        """,
        jp_root_dir,
    )
    # When each is built
    refused = {
        "spec": "req.txt",
        "lock": "docker-env.lock",
        "context": "data.txt",
    }
    logs = []
    for name, field in refused.items():
        done = await _build(jp_fetch, name)
        logs += done["log"]
        # Then a link in the way fails the build, naming it, before anything is built
        assert done["state"] == "failed", done["log"][-10:]
        assert field in done["error"], done["error"]
        assert "symbolic link" in done["error"]
    built: set[str] = set()
    for name in ("ignored", "clean"):
        done = await _build(jp_fetch, name)
        logs += done["log"]
        assert done["state"] == "succeeded", done["log"][-20:]
        built |= _lineage(jde_engine, (await call(jp_fetch, f"envs/{name}"))["image"]["id"])
    # A link out of a Dockerfile's context that .dockerignore leaves out is harmless, and a
    # link inside the context stays a link
    env = await call(jp_fetch, "envs/ignored")
    listing = jde_engine.run_output(env["image"]["id"], ["sh", "-c", "ls -l /ctx/"])
    assert "inside -> Dockerfile" in listing
    assert "data.txt" not in listing
    # The generated files are the folder owner's, written in the folder, not through a link
    for generated in ("Dockerfile", ".dockerignore", "docker-env.lock"):
        st = (envs / "clean" / generated).lstat()
        assert (st.st_uid, st.st_gid, st.st_mode & 0o170000) == (KERNEL_UID, KERNEL_UID, 0o100000)
    # And nothing outside was written or read: no new file, the secret untouched and unread
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    assert secret.stat().st_atime_ns == read_at
    # and the secret is in no log, no image (intermediate and dangling ones too), no build cache
    assert not [line for line in logs if token in line]
    new_images = (built | _all_image_ids(jde_engine, dangling=True)) - before
    assert new_images  # the two builds made images to look into
    assert await asyncio.to_thread(_images_holding, jde_engine, new_images, token.encode()) == []
    root = jde_engine.system_info()["DockerRootDir"]
    assert await asyncio.to_thread(_files_holding, root, marker, token.encode()) == []
    for name in ("ignored", "clean"):
        await call(jp_fetch, f"envs/{name}", "DELETE", expect=204)


# -- operations ------------------------------------------------------------------------------
async def test_an_operation_ends_for_its_clients_only_once_its_follow_up_is_done() -> None:
    # Given a build whose follow-up (writing kernel specs, sweeping old images) takes a while
    operations = OperationManager(workers=1)
    started, release = asyncio.Event(), asyncio.Event()

    async def follow_up(op: Operation) -> None:
        started.set()
        await release.wait()

    op = operations.start("demo", "build", lambda op: "built", after=follow_up)
    await started.wait()
    # Then clients see it running until then: "succeeded" means its kernel spec is there
    assert op.state == "running"
    release.set()
    await op.wait()
    assert op.state == "succeeded"
    operations.close()


# -- leftovers --------------------------------------------------------------------------------
@docker
@pytest.mark.docker_env_config({"ca_bundle": CA_BUNDLE or ""})
async def test_delete_removes_the_image_a_kernel_kept_through_a_rebuild(
    jp_fetch: Any, jde_base_image: str, jde_engine: Engine
) -> None:
    # Given a built environment, and a container (a kernel's) of its image
    env = {"JDE_HARDENING": f"leftover-{uuid.uuid4().hex[:8]}"}  # a new image each run
    body = {"name": "leftover", "base": jde_base_image, "env": env}
    await call(jp_fetch, "envs", "POST", body, expect=201)
    assert (await _build(jp_fetch, "leftover"))["state"] == "succeeded"
    first = (await call(jp_fetch, "envs/leftover"))["image"]["id"]
    kernel = jde_engine.create_container(first, command=["sleep", "600"], labels=HOLDER_LABELS)
    jde_engine.start_container(kernel["Id"])
    # When it is rebuilt from scratch while the kernel still uses the first image
    op = await call(jp_fetch, "envs/leftover/builds", "POST", {"no_cache": True}, expect=202)
    assert (await wait_operation(jp_fetch, op["id"]))["state"] == "succeeded"
    kept = jde_engine.inspect_image(first)
    assert kept is not None
    assert kept["RepoTags"] == []  # the new image took its tags; the kernel keeps it
    # and the kernel ends, and the environment is deleted
    jde_engine.remove_container(kernel["Id"])
    await call(jp_fetch, "envs/leftover", "DELETE", expect=204)
    # Then no image of it survives, tagged or not
    assert jde_engine.inspect_image(first) is None
    assert jde_engine.images(reference=f"{JDE_PREFIX}/leftover") == []


@docker
async def test_a_server_start_sweeps_untagged_images_that_kernels_held(
    jp_serverapp: Any, jde_base_image: str, jde_engine: Engine
) -> None:
    # Given two untagged images of this prefix's environments (a delete took their tags while a
    # kernel or a network sandbox used them), one of them still in use, and one of another prefix
    base = str((jde_engine.inspect_image(jde_base_image) or {})["Id"])
    made: list[tuple[str, str]] = []  # (image, the container that held it while untagged)

    def untagged(repository: str) -> str:
        run = uuid.uuid4().hex[:8]  # a distinct image each time
        tag = f"{JDE_PREFIX}-swept:{run}"
        labels = {label("managed"): "true", label("repository"): repository, "run": run}
        image_id = jde_engine.add_labels(base, {**labels, **JDE_TEST_LABELS}, tag=tag)
        user = jde_engine.create_container(image_id, command=["sleep", "600"], labels=HOLDER_LABELS)
        jde_engine.start_container(user["Id"])
        jde_engine.remove_image(tag, force=True)  # the tag goes, the image in use stays
        made.append((image_id, str(user["Id"])))
        return image_id

    free = untagged(f"{JDE_PREFIX}/gone")
    held = untagged(f"{JDE_PREFIX}/gone")
    other = untagged(f"{JDE_PREFIX}-other/gone")
    for image_id, user in made:
        if image_id != held:
            jde_engine.remove_container(user)
    try:
        # When the server starts
        ext = jp_serverapp.web_app.settings["docker_env"]
        await ext._start_jupyter_server_extension(jp_serverapp)
        # Then the unused one of this prefix is gone; the one in use and the other's stay
        assert jde_engine.inspect_image(free) is None
        assert jde_engine.inspect_image(held) is not None
        assert jde_engine.inspect_image(other) is not None
    finally:
        for image_id, user in made:
            jde_engine.remove_container(user)
            jde_engine.remove_image(image_id)


@docker
@as_root
@pytest.mark.docker_env_config({"ca_bundle": CA_BUNDLE or ""})
async def test_a_kernel_asking_for_memory_0_has_no_memory_limit(
    jp_fetch: Any, jp_root_dir: Path, jde_base_image: str, jde_engine: Engine
) -> None:
    # Given a built environment in a workspace of the kernel's uid
    give_to_kernel(jp_root_dir)  # kernels run as the workspace owner, never root
    body = {"name": "sized", "base": jde_base_image, "env": {"JDE_HARDENING": "sized"}}
    await call(jp_fetch, "envs", "POST", body, expect=201)
    assert (await _build(jp_fetch, "sized"))["state"] == "succeeded"
    # When kernels ask for "0" (as a string or a number) and for 300m
    for memory, limit in (("0", 0), (0, 0), ("300m", 300 * 1024**2)):
        kernel = await call(jp_fetch, "envs/sized/kernels", "POST", {"memory": memory}, expect=201)
        try:
            (container,) = jde_engine.containers({label("kernel-id"): kernel["id"]})
            host_config = jde_engine.inspect_container(container["Id"])["HostConfig"]
            # Then "0" means no limit, as the docs say, and a size is the limit, swap included
            assert host_config["Memory"] == limit, memory
            assert host_config["MemorySwap"] == limit, memory
        finally:
            await jp_fetch("api", "kernels", kernel["id"], method="DELETE")
