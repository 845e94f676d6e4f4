"""Every container (and Swarm service) the extension creates is confined: checked where it is
created.

Installed on ``Engine.create_container`` in the test process (conftest.py) and, through
``sitecustomize.py`` on PYTHONPATH, in every Python process the tests start (the CLI, JupyterLab,
crash scripts), so a new kind of container cannot skip the check. A container that fails it is
removed and the creation raises, naming what is wrong.

Tests that create plain containers on purpose (e.g. fake orphans) label them ``FIXTURE``.
"""

from __future__ import annotations

import functools
from typing import Any

FIXTURE = "org.jupyter.docker-env.test-fixture"
MANAGED = "org.jupyter.docker-env.managed"
FORBIDDEN_SOURCES = ("/var/run/docker.sock", "/run/docker.sock", "/", "/etc", "/root", "/proc")


def problems(attrs: dict[str, Any]) -> list[str]:
    """What is wrong with a container's confinement, read from `docker inspect`."""
    host = attrs.get("HostConfig") or {}
    config = attrs.get("Config") or {}
    found = []
    if host.get("Privileged"):
        found.append("privileged")
    uid = (config.get("User") or "").split(":")[0]
    if uid in ("", "0", "root"):
        found.append(f"runs as root (User={config.get('User')!r})")
    if "ALL" not in (host.get("CapDrop") or []) or host.get("CapAdd"):
        found.append(
            f"keeps capabilities (CapDrop={host.get('CapDrop')}, CapAdd={host.get('CapAdd')})"
        )
    if not any(str(o).startswith("no-new-privileges") for o in host.get("SecurityOpt") or []):
        found.append("may gain privileges (no no-new-privileges)")
    modes = ("NetworkMode", "PidMode", "IpcMode", "UTSMode", "UsernsMode")
    found += [f"{mode}=host" for mode in modes if host.get(mode) == "host"]
    if not host.get("PidsLimit"):
        found.append("no process limit")
    if host.get("Devices"):
        found.append(f"devices {host['Devices']}")
    for mount in attrs.get("Mounts") or []:
        source = str(mount.get("Source") or "")
        if source.rstrip("/") in FORBIDDEN_SOURCES or "docker.sock" in source:
            found.append(f"mounts {source}")
    return found


def service_problems(spec: dict[str, Any]) -> list[str]:
    """What is wrong with the confinement of a Swarm service's tasks, read from its spec."""
    task = spec.get("TaskTemplate") or {}
    container = task.get("ContainerSpec") or {}
    found = []
    if (container.get("User") or "").split(":")[0] in ("", "0", "root"):
        found.append(f"runs as root (User={container.get('User')!r})")
    if "ALL" not in (container.get("CapabilityDrop") or []) or container.get("CapabilityAdd"):
        found.append("keeps capabilities")
    nnp = (container.get("Privileges") or {}).get("NoNewPrivileges")
    if not nnp and (container.get("Args") or [])[:2] != ["setpriv", "--no-new-privs"]:
        found.append("may gain privileges (neither NoNewPrivileges nor setpriv --no-new-privs)")
    if not ((task.get("Resources") or {}).get("Limits") or {}).get("Pids"):
        found.append("no process limit")
    for mount in container.get("Mounts") or []:
        source = str(mount.get("Source") or "")
        if source.rstrip("/") in FORBIDDEN_SOURCES or "docker.sock" in source:
            found.append(f"mounts {source}")
    return found


def install(engine_class: type) -> None:
    """Check every container ``engine_class.create_container`` makes, and every Swarm service
    ``create_service`` makes."""
    create = engine_class.create_container
    if getattr(create, "jde_audited", False):
        return
    create_service = engine_class.create_service

    @functools.wraps(create_service)
    def audited_service(self: Any, spec: dict[str, Any]) -> str:
        if found := service_problems(spec):
            raise AssertionError(f"service {spec.get('Name')} is not confined: {'; '.join(found)}")
        return str(create_service(self, spec))

    engine_class.create_service = audited_service  # type: ignore[method-assign]

    @functools.wraps(create)
    def audited(self: Any, image: str, **kwargs: Any) -> dict[str, Any]:
        attrs: dict[str, Any] = create(self, image, **kwargs)
        labels = (attrs.get("Config") or {}).get("Labels") or {}
        if FIXTURE in labels:
            return attrs
        inspected = self.inspect_container(attrs["Id"]) or attrs
        if found := problems(inspected):
            self.remove_container(attrs["Id"])
            raise AssertionError(
                f"container {attrs.get('Name')} ({labels.get('org.jupyter.docker-env.role')}) "
                f"is not confined: {'; '.join(found)}"
            )
        return attrs

    audited.jde_audited = True  # type: ignore[attr-defined]
    engine_class.create_container = audited  # type: ignore[method-assign]
