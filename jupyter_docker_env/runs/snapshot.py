"""``--snapshot``: a run image that holds the code, for runs that must be exactly reproducible or
must run where the workspace is not mounted.

The run image is the environment's image plus a whitelisted copy of the code folder (source
files, notebooks and small configuration; never hidden files, data or models), at the folder's
own path and owned by the run's user, tagged by the content hash of both: the same code on the
same environment reuses its image. Such a run mounts only its own folder (for its log); the
files it creates or changes in its code folder come back to the workspace when it ends
(:func:`copy_back`).

Everything here blocks.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import IO

from .. import labels as L
from ..containers.placement import within
from ..engine import Engine, EngineError
from ..models import FieldError

DEFAULT_INCLUDE = (
    *("*.py", "*.ipynb", "*.r", "*.R", "*.jl", "*.sh", "*.sql"),
    *("*.txt", "*.md", "*.toml", "*.cfg", "*.ini", "*.yaml", "*.yml", "*.json", "Makefile"),
)
SKIP_DIRS = {"__pycache__", "node_modules"}


def code_files(folder: Path, include: list[str], max_size: int) -> list[str]:
    """The files (relative paths) of ``folder`` that go into a run image."""
    found, total = [], 0
    for dirpath, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in SKIP_DIRS)
        for name in sorted(files):
            path = Path(dirpath) / name
            if name.startswith(".") or not any(fnmatch.fnmatchcase(name, p) for p in include):
                continue
            if not path.is_file() or path.is_symlink():
                continue
            total += path.stat().st_size
            if total > max_size:
                raise FieldError(
                    "snapshot",
                    f"the code in {folder} is larger than {max_size} bytes "
                    "(c.RunManager.snapshot_max_size): move data out of it, or run without "
                    "--snapshot",
                )
            found.append(path.relative_to(folder).as_posix())
    return found


def content_hash(base_image: str, folder: Path, owner: tuple[int, int], files: list[str]) -> str:
    digest = hashlib.sha256(json.dumps([base_image, str(folder), list(owner)]).encode())
    for rel in files:
        digest.update(rel.encode() + b"\0")
        digest.update(hashlib.sha256((folder / rel).read_bytes()).digest())
    return digest.hexdigest()


def build(
    engine: Engine,
    base_image: str,
    prefix: str,
    env_name: str,
    folder: Path,
    include: list[str],
    max_size: int,
    owner: tuple[int, int],
    labels: dict[str, str],
) -> tuple[str, bool]:
    """The run image's reference (built now, or reused when it exists: the bool)."""
    files = code_files(folder, include, max_size)
    digest = content_hash(base_image, folder, owner, files)
    ref = f"{prefix}/{env_name}-run:{digest[:16]}"
    if engine.inspect_image(ref) is not None:
        return ref, True
    labels = {**labels, L.MANAGED: "true", L.SNAPSHOT: digest}
    with tempfile.TemporaryDirectory(prefix="docker-env-snapshot-") as tmp:
        context = Path(tmp)
        for rel in files:
            target = context / "code" / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(folder / rel, target)
        (context / "code").mkdir(exist_ok=True)
        uid, gid = owner
        (context / "Dockerfile").write_text(
            f"FROM {base_image}\n"
            f"COPY --chown={uid}:{gid} {json.dumps(['code/', str(folder) + '/'])}\n"
            + L.label_instruction(labels)
        )
        image_id = None
        for event in engine.build(str(context), str(context / "Dockerfile"), "legacy"):
            if event.kind == "error":
                raise EngineError(f"building the run image failed: {event.text}")
            if event.kind == "image":
                image_id = event.text
    if image_id is None:
        raise EngineError("the engine built the run image without an image id")
    repo, _, tag = ref.rpartition(":")
    engine.tag(image_id, repo, tag)
    return ref, False


def copy_back(
    archive: IO[bytes], folder: str, changed: Iterable[str], owner: tuple[int, int]
) -> list[str]:
    """Write the regular files of ``archive`` (a tar of the container's ``folder``) that the run
    created or changed (``changed``: container paths) to the same paths in the workspace."""
    wanted = {os.path.normpath(p) for p in changed}
    parent = os.path.dirname(folder.rstrip("/"))
    real_folder = os.path.realpath(folder)
    written = []
    with tarfile.open(fileobj=archive, mode="r|") as tar:
        for member in tar:
            path = os.path.normpath(os.path.join(parent, member.name))
            if not member.isfile() or path not in wanted or not within(path, folder):
                continue
            if not within(os.path.realpath(os.path.dirname(path)), real_folder):
                continue  # never through a link out of the code folder
            source = tar.extractfile(member)
            assert source is not None
            _write(path, source, owner, member.mode)
            written.append(path)
    return written


def _write(path: str, source: IO[bytes], owner: tuple[int, int], mode: int) -> None:
    _make_dirs(os.path.dirname(path), owner)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
    fd = os.open(path, flags, stat.S_IMODE(mode) or 0o644)
    with os.fdopen(fd, "wb") as out:
        shutil.copyfileobj(source, out)
    if os.geteuid() == 0:
        os.chown(path, *owner)


def _make_dirs(folder: str, owner: tuple[int, int]) -> None:
    if os.path.isdir(folder):
        return
    _make_dirs(os.path.dirname(folder), owner)
    os.mkdir(folder)
    if os.geteuid() == 0:
        os.chown(folder, *owner)
