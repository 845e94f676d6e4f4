"""Where a kernel's or a run's container works, and as whom.

Kernels and runs follow the same rules (configured once, as ``c.DockerEnvProvisioner.*``): the
workspace is mounted at the same absolute path, the working directory is a folder inside it, the
container runs as the workspace's owner (never root unless an administrator allowed it), and only
allow-listed variables of the caller's environment enter it.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable, Mapping


def within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def working_dir_in(workspace: str, path: str) -> str | None:
    """``path`` as a folder under ``workspace`` (a symlink into it is followed), else None."""
    path = os.path.abspath(path)
    if within(path, workspace):
        return path
    real_ws, real_path = os.path.realpath(workspace), os.path.realpath(path)
    if within(real_path, real_ws):
        return os.path.join(workspace, os.path.relpath(real_path, real_ws))
    return None


def user_for(workspace: str, user: str, allow_root: bool, what: str = "kernel") -> tuple[int, int]:
    """The (uid, gid) a container runs as: ``user`` ("uid[:gid]") or the workspace's owner.

    PermissionError, saying which setting to change, when that is root and root is not allowed.
    """
    st = os.stat(workspace)
    if user:
        uid_s, _, gid_s = user.partition(":")
        try:
            uid, gid = int(uid_s), int(gid_s) if gid_s else st.st_gid
        except ValueError:
            raise ValueError(
                f'c.DockerEnvProvisioner.user = {user!r}: use numeric "uid:gid".'
            ) from None
    else:
        uid, gid = st.st_uid, st.st_gid
    if uid == 0 and not allow_root:
        why = "user is 0" if user else f"the workspace {workspace} belongs to root"
        raise PermissionError(
            f"The {what} would run as root: {why}. "
            'Set c.DockerEnvProvisioner.user = "uid:gid" (the workspace owner), or allow '
            f"root {what}s with c.DockerEnvProvisioner.allow_root = True."
        )
    return uid, gid


def allowed_env(env: Mapping[str, str], patterns: Iterable[str]) -> dict[str, str]:
    """The variables of ``env`` whose names match one of the shell ``patterns``."""
    patterns = list(patterns)
    return {k: v for k, v in env.items() if any(fnmatch.fnmatchcase(k, p) for p in patterns)}
