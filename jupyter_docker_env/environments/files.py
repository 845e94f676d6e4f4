"""The files of environment folders, read and written on a user's behalf.

The server often runs as root (it owns the Docker socket) while users and their kernels write
the environment folders, so every file it reads or writes in one goes through here:

- **No links.** A folder is reached from ``/`` one component at a time with ``O_NOFOLLOW``
  along its real path (checked with ``realpath`` first), and so is every file in it: a link
  planted anywhere on the way, even between a check and a use, makes the open fail instead of
  leading out of the folder.
- **Only regular files are read**, up to a size: a FIFO or a device would hang or flood the server.
  Large files (models) are streamed in chunks, hashed as they are copied, never held whole.
- **Never as root where the owner could not.** Running as root, the server reads only what the
  folder's owner could read (through folders they could enter and list), writes only where that
  owner could write, and what it writes belongs to that owner.
- **Atomic writes.** A file is written under a fresh temporary name and renamed over the old
  one: a link planted under the same name is replaced, never written through, and a failed
  write leaves the old file whole.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
import shutil
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..models import FieldError

MAX_INPUT = 8 * 1024**2  # a spec, requirements or environment file larger than this is a mistake
NAME_MAX = 255  # bytes in one file name (Linux)
# Folders on the way are opened as paths only: search permission suffices, as for any path.
_DIR = getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_LIST = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
CHUNK = 1024**2
NO_LINKS = "links are never followed: put the file itself there instead"


class FileRefused(FieldError):
    """A file the server will not read or write as it is; ``field`` is its path in the folder."""

    def __init__(self, field: str, message: str, code: int | None = None) -> None:
        super().__init__(field, message)
        self.code = code  # the errno behind it, if any


def _as_root() -> bool:
    return os.geteuid() == 0


_REASONS = {
    errno.ELOOP: f"is a symbolic link: {NO_LINKS}",
    errno.ENOTDIR: f"has a symbolic link or a file where a folder should be: {NO_LINKS}",
    errno.ENOENT: "does not exist",
    errno.EISDIR: "is a folder, not a file",
    errno.EACCES: "cannot be read or written: permission denied",
    errno.EPERM: "cannot be read or written: permission denied",
    errno.ENAMETOOLONG: f"has a name longer than {NAME_MAX} bytes",
    errno.EEXIST: "already exists",
}


def _refused(field: str, exc: OSError, subject: str = "") -> FileRefused:
    """The user's words for why ``field`` could not be opened; other errors are re-raised."""
    if exc.errno not in _REASONS:
        raise exc
    return FileRefused(field, f"{subject}{_REASONS[exc.errno]}", exc.errno)


def _parts(name: str) -> list[str]:
    """The components of a relative path inside a folder; no way out of it."""
    parts = name.split("/")
    if "\0" in name or any(p in ("", ".", "..") for p in parts):
        raise FileRefused(name or "path", "must be a path inside the environment folder")
    if any(len(p.encode(errors="surrogateescape")) > NAME_MAX for p in parts):
        raise FileRefused(name, f"has a name longer than {NAME_MAX} bytes", errno.ENAMETOOLONG)
    return parts


def _step(fd: int, part: str, field: str, subject: str = "") -> int:
    """Open the folder ``part`` below ``fd`` without following a link."""
    try:
        return os.open(part, _DIR, dir_fd=fd)
    except OSError as exc:
        raise _refused(field, exc, subject) from exc


@contextlib.contextmanager
def _walk(
    fd: int, parts: list[str], field: str, subject: str = "", owner: os.stat_result | None = None
) -> Iterator[int]:
    """A descriptor of the folder ``parts`` below ``fd``, each step without following a link
    (and, given the ``owner`` the server acts for, only through folders that owner may enter)."""
    fd = os.dup(fd)
    try:
        for part in parts:
            new = _step(fd, part, field, subject)
            os.close(fd)
            fd = new
            if owner is not None and _as_root() and not _owner_may(os.fstat(fd), owner, os.X_OK):
                raise FileRefused(
                    field, f"cannot be reached: the folder's owner may not enter {part}"
                )
        yield fd
    finally:
        os.close(fd)


@contextlib.contextmanager
def _folder(folder: Path) -> Iterator[tuple[int, os.stat_result]]:
    """An open descriptor of ``folder`` and its stat, reached without following any link."""
    path = os.path.abspath(folder)
    if os.path.realpath(path) != path:
        raise FileRefused("folder", f"{path} is reached through a symbolic link: {NO_LINKS}")
    root = os.open("/", _DIR)
    try:
        with _walk(root, [p for p in path.split("/") if p], "folder", f"{path} ") as fd:
            yield fd, os.fstat(fd)
    finally:
        os.close(root)


@contextlib.contextmanager
def _parent(folder: Path, name: str) -> Iterator[tuple[int, str, os.stat_result]]:
    """The folder that holds ``name`` (a path inside ``folder``), its last component, and the
    stat of ``folder`` itself (its owner stands for the user)."""
    parts = _parts(name)
    with _folder(folder) as (top, owner), _walk(top, parts[:-1], name, owner=owner) as fd:
        yield fd, parts[-1], owner


def _owner_may(st: os.stat_result, owner: os.stat_result, access: int = os.R_OK) -> bool:
    """Could the folder's owner ``access`` (os.R_OK, os.X_OK or both) what has this stat? (Only
    asked when running as root; otherwise the kernel has already checked.) Their own files they
    could always chmod."""
    if owner.st_uid == 0 or st.st_uid == owner.st_uid:
        return True
    shift = 3 if st.st_gid == owner.st_gid else 0
    return (st.st_mode >> shift) & access == access


def _owner_may_write(owner: os.stat_result) -> bool:
    return not _as_root() or owner.st_uid == 0 or bool(owner.st_mode & stat.S_IWUSR)


# -- looking ---------------------------------------------------------------------------------
def entry(folder: Path, name: str) -> os.stat_result | None:
    """What is at ``name`` in ``folder`` (a link is a link), or None when nothing is."""
    try:
        with _parent(folder, name) as (fd, last, _owner):
            return os.stat(last, dir_fd=fd, follow_symlinks=False)
    except FileRefused as exc:
        if exc.code in (errno.ENOENT, errno.ENOTDIR):
            return None  # nothing there, or a file on the way
        raise
    except (FileNotFoundError, NotADirectoryError):
        return None


def present(folder: Path, name: str) -> bool:
    """True when something other than a folder is at ``name``: a file, or a link to refuse."""
    st = entry(folder, name)
    return st is not None and not stat.S_ISDIR(st.st_mode)


def is_file(folder: Path, name: str) -> bool:
    """True when ``name`` is a regular file (a link to one is not)."""
    st = entry(folder, name)
    return st is not None and stat.S_ISREG(st.st_mode)


def check_file(folder: Path, name: str) -> None:
    """Refuse ``name`` unless it is missing or a regular file (the server writes it later)."""
    st = entry(folder, name)
    if st is not None and not stat.S_ISREG(st.st_mode):
        kind = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a regular file"
        raise FileRefused(name, f"is {kind}: the server writes this file itself; remove it")


def writable(folder: Path) -> bool:
    """Whether the server may write into ``folder`` on its owner's behalf."""
    try:
        with _folder(folder) as (_fd, owner):
            if _as_root():
                return _owner_may_write(owner)
    except FileRefused:
        return False
    return os.access(folder, os.W_OK)


# -- reading ---------------------------------------------------------------------------------
def _readable(fd: int, name: str, owner: os.stat_result) -> None:
    """Refuse the open ``fd`` unless it is a regular file that the folder's owner could read."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise FileRefused(name, "is not a regular file")
    if _as_root() and not _owner_may(st, owner):
        raise FileRefused(name, "cannot be read: the folder's owner may not read it")


def _read_open(fd: int, name: str, owner: os.stat_result, limit: int | None) -> bytes:
    _readable(fd, name, owner)
    chunks, size = [], 0
    while chunk := os.read(fd, CHUNK):
        size += len(chunk)
        if limit is not None and size > limit:
            raise FileRefused(name, f"is larger than {limit // 1024**2} MiB")
        chunks.append(chunk)
    return b"".join(chunks)


def read_bytes(folder: Path, name: str, limit: int | None = MAX_INPUT) -> bytes:
    """The content of the regular file ``name`` (a path inside ``folder``)."""
    with _parent(folder, name) as (dir_fd, last, owner):
        try:
            fd = os.open(last, _READ, dir_fd=dir_fd)
        except OSError as exc:
            raise _refused(name, exc) from exc
        try:
            return _read_open(fd, name, owner, limit)
        finally:
            os.close(fd)


def read_text(folder: Path, name: str, limit: int | None = MAX_INPUT) -> str:
    try:
        return read_bytes(folder, name, limit).decode()
    except UnicodeDecodeError as exc:
        raise FileRefused(name, f"is not UTF-8 text: {exc}") from exc


# -- large files (models): streamed, hashed while copied ----------------------------------------
@dataclass(frozen=True)
class Streamed:
    """One regular file that :func:`stream` read: its path below the name it was given ("" for
    that file itself), its sha256 (hex) and its size."""

    path: str
    digest: str
    size: int


def stream(folder: Path, name: str, dest: Path | None = None) -> list[Streamed]:
    """Hash the regular file ``name`` (a path inside ``folder``), or every regular file below
    the folder ``name``, in chunks (never whole in memory) and, given ``dest`` (a path that does
    not exist yet in a private folder of the server's own), copy it there as it is read.

    Nothing is followed: a link anywhere, or anything but files and folders, is refused, naming
    it. As root, only what the folder's owner could read, in folders they could list. Files come
    in the order of their sorted paths; copies are readable by anyone (0644, folders 0755), what
    an image's unprivileged user needs.
    """
    found: list[Streamed] = []
    with _parent(folder, name) as (top, last, owner):
        pending = [[last]]  # what is left to read, as paths below ``top``
        while pending:
            parts = pending.pop()
            below = "/".join(parts[1:])
            field = f"{name}/{below}" if below else name
            target = dest.joinpath(*parts[1:]) if dest is not None else None
            with _walk(top, parts[:-1], field) as fd:
                try:
                    st = os.stat(parts[-1], dir_fd=fd, follow_symlinks=False)
                    if stat.S_ISDIR(st.st_mode):
                        children = _list(fd, parts[-1], field, owner)
                        if target is not None:
                            target.mkdir()
                            target.chmod(0o755)
                        pending += [[*parts, child] for child in reversed(children)]
                    elif stat.S_ISREG(st.st_mode):
                        found.append(
                            Streamed(below, *_copy_out(fd, parts[-1], field, owner, target))
                        )
                    elif stat.S_ISLNK(st.st_mode):
                        raise FileRefused(field, f"is a symbolic link: {NO_LINKS}", errno.ELOOP)
                    else:
                        raise FileRefused(field, "is not a regular file or a folder")
                except OSError as exc:
                    raise _refused(field, exc) from exc
    return found


def _list(dir_fd: int, name: str, field: str, owner: os.stat_result) -> list[str]:
    """The sorted entries of the folder ``name`` below ``dir_fd``, if its owner could list it."""
    fd = os.open(name, _LIST, dir_fd=dir_fd)
    try:
        if _as_root() and not _owner_may(os.fstat(fd), owner, os.R_OK | os.X_OK):
            raise FileRefused(field, "cannot be read: the folder's owner may not list it")
        return sorted(os.listdir(fd))
    finally:
        os.close(fd)


def _copy_out(
    dir_fd: int, name: str, field: str, owner: os.stat_result, target: Path | None
) -> tuple[str, int]:
    """The sha256 and size of the regular file ``name`` below ``dir_fd``, copied to ``target``."""
    fd = os.open(name, _READ, dir_fd=dir_fd)
    out = None
    try:
        _readable(fd, field, owner)
        if target is not None:
            out = os.open(target, _CREATE, 0o644)
            os.fchmod(out, 0o644)
        digest, size = hashlib.sha256(), 0
        while chunk := os.read(fd, CHUNK):
            digest.update(chunk)
            size += len(chunk)
            view = memoryview(chunk)
            while out is not None and view:
                view = view[os.write(out, view) :]
        return digest.hexdigest(), size
    finally:
        os.close(fd)
        if out is not None:
            os.close(out)


# -- writing ---------------------------------------------------------------------------------
def write_bytes(folder: Path, name: str, data: bytes) -> bool:
    """Write ``name`` directly in ``folder`` unless it already holds ``data``; True if written.

    Atomic (a temporary file renamed over the old one), owned by the folder's owner, with the
    old file's mode. A link in its place is refused, and one planted meanwhile is replaced.
    """
    if "/" in name:
        raise FileRefused(name, "must be a file directly in the environment folder")
    with _parent(folder, name) as (fd, last, owner):
        if not _owner_may_write(owner):
            raise FileRefused(name, f"cannot be written: the owner of {folder} may not write there")
        try:
            old = os.stat(last, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            old = None
        mode = 0o644
        if old is not None:
            if not stat.S_ISREG(old.st_mode):
                check_file(folder, name)  # says what is wrong with it
            mode = stat.S_IMODE(old.st_mode) & 0o777
            if old.st_size == len(data) and _unchanged(fd, last, owner, data):
                return False
        tmp = f".{last}.{secrets.token_hex(6)}.tmp"
        out = os.open(tmp, _CREATE, 0o600, dir_fd=fd)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(out, view) :]
                if _as_root():
                    os.fchown(out, owner.st_uid, owner.st_gid)
                os.fchmod(out, mode)
            finally:
                os.close(out)
            os.rename(tmp, last, src_dir_fd=fd, dst_dir_fd=fd)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=fd)
            if isinstance(exc, OSError):
                raise _refused(name, exc) from exc
            raise
    return True


def _unchanged(dir_fd: int, name: str, owner: os.stat_result, data: bytes) -> bool:
    try:
        fd = os.open(name, _READ, dir_fd=dir_fd)
    except OSError:
        return False
    try:
        return _read_open(fd, name, owner, len(data)) == data
    except FileRefused:
        return False
    finally:
        os.close(fd)


def write_text(folder: Path, name: str, text: str) -> bool:
    return write_bytes(folder, name, text.encode())


def make_folder(base: Path, name: str, exist_ok: bool = False) -> Path:
    """Create the folder ``name`` (a path inside ``base``) and any missing folder on the way,
    each owned by the owner of the folder it is made in; FileExistsError if the last exists
    (unless ``exist_ok``; something other than a folder there is refused all the same)."""
    parts = _parts(name)
    with _folder(base) as (top, owner), _walk(top, [], name) as start:
        fd = os.dup(start)
        try:
            for i, part in enumerate(parts):
                if not _owner_may_write(owner):
                    raise FileRefused(name, f"cannot be created: {base} is not writable")
                try:
                    os.mkdir(part, 0o755, dir_fd=fd)
                    if _as_root():
                        os.chown(part, owner.st_uid, owner.st_gid, dir_fd=fd, follow_symlinks=False)
                except FileExistsError:
                    if i == len(parts) - 1 and not exist_ok:
                        raise
                new = _step(fd, part, name)
                os.close(fd)
                fd = new
                owner = os.fstat(fd)
        finally:
            os.close(fd)
    return base.joinpath(*parts)


def rename(folder: Path, name: str, dest: Path) -> None:
    """Move ``name`` from directly in ``folder`` to directly in ``dest``, reaching both without
    following a link; FileExistsError when ``dest`` holds that name already."""
    if "/" in name:
        raise FileRefused(name, "must be a name directly in the folder")
    _parts(name)
    with _folder(folder) as (src, _owner), _folder(dest) as (dst, owner):
        if not _owner_may_write(owner):
            raise FileRefused(name, f"cannot be moved: the owner of {dest} may not write there")
        try:
            os.stat(name, dir_fd=dst, follow_symlinks=False)
            raise FileExistsError(errno.EEXIST, "already exists", str(dest / name))
        except FileNotFoundError:
            pass
        try:
            os.rename(name, name, src_dir_fd=src, dst_dir_fd=dst)
        except OSError as exc:
            if exc.errno == errno.ENOTEMPTY:  # made meanwhile
                raise FileExistsError(errno.EEXIST, "already exists", str(dest / name)) from exc
            raise _refused(name, exc) from exc


def remove_folder(folder: Path) -> None:
    """Remove ``folder`` and everything in it without following links (a link in its place is
    removed itself, never what it points to)."""
    with _parent(folder.parent, folder.name) as (fd, last, _owner):
        try:
            st = os.stat(last, dir_fd=fd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                shutil.rmtree(last, dir_fd=fd)
            else:
                os.unlink(last, dir_fd=fd)
        except OSError as exc:
            raise _refused(folder.name, exc) from exc


# -- build contexts --------------------------------------------------------------------------
@dataclass(frozen=True)
class Entry:
    """One entry of a build context: a file's content, a folder, or a link's target."""

    kind: Literal["file", "dir", "link"]
    data: bytes = b""
    mode: int = 0o755


def read_tree(folder: Path, names: Iterable[str]) -> dict[str, Entry]:
    """The entries ``names`` of ``folder`` (a Dockerfile's build context), read without
    following links. A link is kept as a link (builders send the link, never its target) and
    must stay inside the folder; anything but files, folders and such links is refused."""
    tree: dict[str, Entry] = {}
    for name in sorted(names):
        with _parent(folder, name) as (fd, last, owner):
            try:
                st = os.stat(last, dir_fd=fd, follow_symlinks=False)
                mode = stat.S_IMODE(st.st_mode)
                if stat.S_ISDIR(st.st_mode):
                    tree[name] = Entry("dir", mode=mode)
                elif stat.S_ISLNK(st.st_mode):
                    target = os.readlink(last, dir_fd=fd)
                    where = os.path.normpath(os.path.join(os.path.dirname(name), target))
                    if os.path.isabs(target) or where == ".." or where.startswith("../"):
                        raise FileRefused(
                            name,
                            f"is a symbolic link to {target!r}, outside the environment folder: "
                            "builders would send only the link, and it is never followed; copy "
                            "the file in instead",
                        )
                    tree[name] = Entry("link", os.fsencode(target))
                elif stat.S_ISREG(st.st_mode):
                    file_fd = os.open(last, _READ, dir_fd=fd)
                    try:
                        tree[name] = Entry("file", _read_open(file_fd, name, owner, None), mode)
                    finally:
                        os.close(file_fd)
                else:
                    raise FileRefused(name, "is not a regular file, a folder or a link")
            except OSError as exc:
                raise _refused(name, exc) from exc
    return tree


def write_tree(tree: dict[str, Entry], dest: Path) -> None:
    """Recreate ``tree`` under ``dest``, a fresh private folder of the server's own. Modes are
    kept, except setuid, setgid and sticky bits."""
    dest.mkdir(exist_ok=True)
    for name, item in sorted(tree.items()):
        path = dest / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if item.kind == "dir":
            path.mkdir(exist_ok=True)
        elif item.kind == "link":
            os.symlink(os.fsdecode(item.data), path)
        else:
            path.write_bytes(item.data)
            path.chmod(item.mode & 0o777)
    for name, item in sorted(tree.items(), reverse=True):  # a read-only folder last
        if item.kind == "dir":
            (dest / name).chmod(item.mode & 0o777)
