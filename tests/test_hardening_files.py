"""Hardening: the files that serving images and notebook restores read and write for a user.

A root server builds serving images from a model and a handler that the user names, and
recreates a notebook's environment folder in the user's workspace. A kernel (uid 1000) can plant
links there: to a root-only secret outside the workspace, to a path outside that does not exist
yet, or put a root-only file inside. None of them is followed, read or written through; every
refusal names the request's field, before anything is built.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nbformat
import pytest

from jupyter_docker_env.engine import Engine
from jupyter_docker_env.environments import files
from jupyter_docker_env.labels import SPEC_HASH

from .conftest import JDE_PREFIX, jde_build_image
from .test_api import API, call, jp_server_config, wait_operation
from .test_cli import Cli
from .test_hardening import KERNEL_UID, NO_ENGINE, as_kernel, as_root, give_to_kernel, jp_root_dir
from .test_notebooks import RECORD

__all__ = ["jp_root_dir", "jp_server_config"]  # the test server's workspace and configuration

docker = pytest.mark.docker
HANDLER = "def predict(payload):\n    return payload\n"


@dataclass
class Outside:
    """A root-only folder outside the workspace: secrets not read since they were written, paths
    that do not exist yet, and folders to link to, in which nothing may be made."""

    folder: Path
    secrets: dict[str, int]  # name → the atime it must keep (relatime: a read moves it)
    folders: dict[str, int] = field(default_factory=dict)  # path → its mtime: nothing made in it

    def missing(self, name: str) -> Path:
        return self.folder / name

    def make_folder(self, name: str) -> Path:
        path = self.folder / name
        path.mkdir()
        self.folders |= {".": self.folder.stat().st_mtime_ns, name: path.stat().st_mtime_ns}
        return path

    def assert_untouched(self) -> None:
        """Nothing outside was read, or written even for a while (a folder's mtime moves when
        anything is made or removed in it)."""
        assert self.folder.stat().st_mtime_ns == self.folders["."], "written outside"
        for name, mtime in self.folders.items():
            assert (self.folder / name).stat().st_mtime_ns == mtime, f"written in {name}"
        for name, atime in self.secrets.items():
            assert (self.folder / name).stat().st_atime_ns == atime, f"{name} was read"


@pytest.fixture
def outside(jde_tmp: Path) -> Outside:
    folder = jde_tmp / "outside"
    folder.mkdir(mode=0o700)
    read_at = time.time_ns() - 3600 * 10**9
    secrets = {}
    for name, text in (("secret.json", '{"secret": 1}\n'), ("secret.py", HANDLER)):
        (folder / name).write_text(text)
        (folder / name).chmod(0o600)
        os.utime(folder / name, ns=(read_at, read_at + 10**9))
        secrets[name] = read_at
    return Outside(folder, secrets, {".": folder.stat().st_mtime_ns})


def plant(workspace: Path, outside: Outside) -> None:
    """What a kernel of the workspace's owner plants, and a root-only file put into it."""
    as_kernel(
        f"""
        printf '{{"weights": [1]}}\\n' > model.json
        printf '{HANDLER}' > serve.py
        ln -s {outside.folder}/secret.json stolen.json
        ln -s {outside.missing("planted.json")} planted.json
        ln -s {outside.folder}/secret.py stolen.py
        ln -s {outside.missing("planted.py")} planted.py
        mkdir -p models/weights && printf 'w' > models/weights/a.bin
        ln -s {outside.folder}/secret.json models/weights/b.bin
        ln -s rootonly.json inner.json
        """,
        workspace,
    )
    for name, text in (("rootonly.json", '{"root": 1}\n'), ("rootonly.py", HANDLER)):
        (workspace / name).write_text(text)
        (workspace / name).chmod(0o600)


# What each planted input is refused with: the field, and words of the message.
REFUSED = [
    ({"model": "stolen.json"}, "model", "stolen.json is a symbolic link"),
    ({"model": "planted.json"}, "model", "planted.json is a symbolic link"),
    ({"model": "models/weights"}, "model", "models/weights/b.bin is a symbolic link"),
    ({"model": "inner.json"}, "model", "inner.json is a symbolic link"),
    ({"model": "rootonly.json"}, "model", "owner may not read it"),
    ({"handler": "stolen.py:predict"}, "handler", "stolen.py is a symbolic link"),
    ({"handler": "planted.py:predict"}, "handler", "planted.py is a symbolic link"),
    ({"handler": "rootonly.py:predict"}, "handler", "owner may not read it"),
]


# -- the files module: large files streamed (no engine) -----------------------------------------
@as_root
def test_a_model_folder_is_streamed_hashed_and_copied_without_following_anything(
    jde_tmp: Path, outside: Outside
) -> None:
    # Given a model folder of the kernel's uid, one file larger than a read
    folder = jde_tmp / "workspace"
    folder.mkdir()
    give_to_kernel(folder)
    as_kernel("mkdir -p m/sub && printf a > m/a.bin && truncate -s 3M m/sub/big.bin", folder)
    # When it is streamed into a private folder, Then every file is hashed and copied, readable
    found = files.stream(folder, "m", jde_tmp / "copy")
    assert [(f.path, f.size) for f in found] == [("a.bin", 1), ("sub/big.bin", 3 * 1024**2)]
    assert found[1].digest == hashlib.sha256(bytes(3 * 1024**2)).hexdigest()
    assert (jde_tmp / "copy" / "sub" / "big.bin").read_bytes() == bytes(3 * 1024**2)
    assert (jde_tmp / "copy" / "sub").stat().st_mode & 0o777 == 0o755
    assert (jde_tmp / "copy" / "a.bin").stat().st_mode & 0o777 == 0o644
    assert files.stream(folder, "m/a.bin") == [files.Streamed("", found[0].digest, 1)]
    # When the kernel plants a link, a FIFO or a folder it may not list, or root moves a
    # root-only file in, Then streaming refuses it by its path and reads nothing it should not
    for script, name, words in (
        (f"ln -s {outside.folder}/secret.json m/sub/link", "m/sub/link", "symbolic link"),
        (f"ln -s {outside.missing('new')} m/new", "m/new", "symbolic link"),
        ("mkfifo m/pipe", "m/pipe", "not a regular file or a folder"),
    ):
        as_kernel(script, folder)
        with pytest.raises(files.FileRefused, match=words) as err:
            files.stream(folder, "m", jde_tmp / f"copy-{uuid.uuid4().hex}")
        assert err.value.field == name
        as_kernel(f"rm {name}", folder)
    (folder / "m" / "rootonly.bin").write_bytes(b"root")
    (folder / "m" / "rootonly.bin").chmod(0o600)
    with pytest.raises(files.FileRefused, match="owner may not read it") as err:
        files.stream(folder, "m")
    assert err.value.field == "m/rootonly.bin"
    (folder / "m" / "rootonly.bin").unlink()
    (folder / "m" / "private").mkdir(mode=0o700)
    with pytest.raises(files.FileRefused, match="owner may not list it"):
        files.stream(folder, "m")
    (folder / "m" / "private" / "open.bin").write_bytes(b"x")
    with pytest.raises(files.FileRefused, match="owner may not enter private"):
        files.stream(folder, "m/private/open.bin")
    outside.assert_untouched()


# -- serving: what a request names --------------------------------------------------------------
@docker
@as_root
async def test_rest_serving_inputs_never_follow_a_planted_link_or_read_what_the_user_could_not(
    jp_fetch: Any, jp_root_dir: Path, jde_base_image: str, outside: Outside
) -> None:
    # Given a workspace of the kernel's uid with an environment (not built: nothing is built here)
    give_to_kernel(jp_root_dir)
    spec = {"name": "servelinks", "base": jde_base_image}
    await call(jp_fetch, "envs", "POST", spec, expect=201)
    # and links the kernel planted, and root-only files put into it
    plant(jp_root_dir, outside)
    good = {"model": "model.json", "handler": "serve.py:predict"}
    # When a serving image is asked for with each, Then each is a 400 naming its field
    for change, named, words in REFUSED:
        err = await call(jp_fetch, "envs/servelinks/serving", "POST", good | change, expect=400)
        assert (err["field"], words in err["message"]) == (named, True), (change, err)
    # and nothing outside was read or written
    outside.assert_untouched()
    # while the good inputs pass their check, and the environment is the only thing missing
    err = await call(jp_fetch, "envs/servelinks/serving", "POST", good, expect=409)
    assert "build it first" in err["message"]
    await call(jp_fetch, "envs/servelinks", "DELETE", expect=204)


@docker
@as_root
def test_cli_serving_inputs_never_follow_a_planted_link_or_read_what_the_user_could_not(
    jde_tmp: Path, outside: Outside
) -> None:
    # Given a folder of the kernel's uid with links planted and root-only files put into it,
    # and an environment whose spec cannot build (what passed the input check would fail next)
    work = jde_tmp / "work"
    work.mkdir()
    give_to_kernel(work)
    plant(work, outside)
    as_kernel("mkdir env && printf 'base = \"Not A Base\"\\n' > env/docker-env.toml", work)
    cli = Cli(jde_tmp / "home")
    # When root's CLI is asked for a serving image with each, Then it refuses, naming the input
    for change, named, words in REFUSED:
        args = {"model": "model.json", "handler": "serve.py:predict"} | change
        serve_image = ["serve-image", "env", "--model", args["model"], "--handler", args["handler"]]
        proc = cli(*serve_image, ok=False, cwd=work)
        assert proc.returncode != 0
        assert f"error: {named}: " in proc.stderr, (change, proc.stderr)
        assert words in proc.stderr, (change, proc.stderr)
    # and nothing outside was read or written
    outside.assert_untouched()


# -- notebook restores -----------------------------------------------------------------------------
@docker
@as_root
async def test_a_restore_writes_nothing_through_a_planted_link_and_leaves_the_user_owning_it(
    jp_fetch: Any, jp_root_dir: Path, outside: Outside, jde_engine: Engine, jde_base_image: str
) -> None:
    # Given a workspace of the kernel's uid holding a notebook that carries its environment
    give_to_kernel(jp_root_dir)
    nb = nbformat.v4.new_notebook(metadata={"docker_env": RECORD.to_json()})
    (jp_root_dir / "sent.ipynb").write_text(json.dumps(nb))
    # and where the environments folder would be, a link the kernel planted to a folder outside
    as_kernel(f"ln -s {outside.make_folder('envs')} environments", jp_root_dir)
    # When it is restored, Then it is refused, naming the link, and nothing is written outside
    body = {"path": "sent.ipynb"}
    err = await call(jp_fetch, "notebooks/env/restore", "POST", body, expect=400)
    assert "symbolic link" in err["message"], err
    outside.assert_untouched()
    # When the kernel makes it a folder, planting a link in the restored environment's place,
    # where an image of that name (built before its files were recorded) is on the engine
    as_kernel(
        f"rm environments && mkdir environments && ln -s {outside.missing('demo')} "
        "environments/demo",
        jp_root_dir,
    )
    demo = f"{JDE_PREFIX}/demo:latest"
    jde_build_image(jde_engine, f"FROM {jde_base_image}\nLABEL {SPEC_HASH}={'d' * 64}", demo, {})
    try:
        op = await call(jp_fetch, "notebooks/env/restore", "POST", body, expect=202)
    finally:
        jde_engine.remove_image(demo, force=True)
    # (only the folder matters here: the operation that pulls or builds its image is cancelled)
    await jp_fetch(API, "operations", op["id"], method="DELETE", raise_error=False)
    await wait_operation(jp_fetch, op["id"])
    # Then the link is left alone, the environment is recreated beside it, and all of it, the
    # folder and every file, belongs to the workspace's owner
    assert (jp_root_dir / "environments" / "demo").is_symlink()
    made = jp_root_dir / "environments" / f"demo-{RECORD.spec_hash[:8]}"
    assert {"docker-env.toml", "docker-env.lock"} <= {p.name for p in made.iterdir()}
    for path in (made, *made.iterdir()):
        assert (path.lstat().st_uid, path.lstat().st_gid) == (KERNEL_UID, KERNEL_UID), path
    assert [p.name for p in (jp_root_dir / "environments").iterdir() if p.name[0] == "."] == []
    outside.assert_untouched()


# -- environments made from a workspace file ----------------------------------------------------
@as_root
@NO_ENGINE
async def test_a_root_only_file_in_a_root_owned_folder_of_the_workspace_is_not_read_for_its_user(
    jp_fetch: Any, jp_root_dir: Path
) -> None:
    # Given a workspace of the kernel's uid holding a folder made by root (as Docker makes a
    # missing bind-mount source) with a root-only file in it, and a folder its owner may not enter
    give_to_kernel(jp_root_dir)
    for name, mode in (("data", 0o755), ("private", 0o700)):
        (jp_root_dir / name).mkdir(mode=mode)
        (jp_root_dir / name / "requirements.txt").write_text("root only\n")
    (jp_root_dir / "data" / "requirements.txt").chmod(0o600)
    # When environments are created from them, Then both are refused, naming from_path
    for source, words in (
        ("data/requirements.txt", "owner may not read it"),
        ("private/requirements.txt", "owner may not enter private"),
    ):
        body = {"name": "stolen", "from_path": source}
        err = await call(jp_fetch, "envs", "POST", body, expect=400)
        assert err["field"] == "from_path"
        assert words in err["message"], err
    assert not (jp_root_dir / "environments").exists()
