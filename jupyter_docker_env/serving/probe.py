"""Run inside an environment's image with its venv's Python (``python -c`` this file's source):
what a serving image needs to know about it, as one JSON object on stdout.

Every importable distribution (the first on sys.path, as imports find it) with its version,
whether it is in the venv, and its ``Requires-Dist``; the values of the environment markers those
requirements are evaluated with; and the installed Debian packages with their section and
dependencies. Standard library only.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import platform
import shutil
import subprocess
import sys
from typing import Any


def markers() -> dict[str, str]:
    """PEP 508's environment markers (what packaging.markers.default_environment gives)."""
    impl = sys.implementation.version
    impl_version = f"{impl.major}.{impl.minor}.{impl.micro}"
    if impl.releaselevel != "final":
        impl_version += impl.releaselevel[0] + str(impl.serial)
    return {
        "implementation_name": sys.implementation.name,
        "implementation_version": impl_version,
        "os_name": os.name,
        "platform_machine": platform.machine(),
        "platform_release": platform.release(),
        "platform_system": platform.system(),
        "platform_version": platform.version(),
        "python_full_version": platform.python_version(),
        "platform_python_implementation": platform.python_implementation(),
        "python_version": ".".join(platform.python_version_tuple()[:2]),
        "sys_platform": sys.platform,
    }


def distributions() -> list[dict[str, Any]]:
    in_venv = sys.prefix != sys.base_prefix
    seen: dict[str, dict[str, Any]] = {}
    for dist in md.distributions():
        name = dist.metadata["Name"]
        key = (name or "").lower().replace("_", "-").replace(".", "-")
        if not name or key in seen:
            continue
        where = str(getattr(dist, "_path", "") or "")
        seen[key] = {
            "name": name,
            "version": dist.version,
            "venv": in_venv and where.startswith(sys.prefix),
            "requires": list(dist.requires or []),
        }
    return sorted(seen.values(), key=lambda d: str(d["name"]).lower())


def debian_packages() -> list[dict[str, str]]:
    if shutil.which("dpkg-query") is None:
        return []
    out = subprocess.run(
        ["dpkg-query", "-W", "-f=${Package}\t${Version}\t${Section}\t${Depends}\n"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    rows = []
    for line in out.splitlines():
        name, version, section, depends = [*line.split("\t"), "", "", ""][:4]
        rows.append({"name": name, "version": version, "section": section, "depends": depends})
    return rows


print(
    json.dumps(
        {
            "python": platform.python_version(),
            "markers": markers(),
            "distributions": distributions(),
            "apt": debian_packages(),
        }
    )
)
