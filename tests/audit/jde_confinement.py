"""Every container (and Swarm service) the extension creates is confined: checked where it is
created, and from inside while it runs.

Where it is created (:func:`install`): on ``Engine.create_container`` and
``Engine.create_service`` in the test process (conftest.py) and, through ``sitecustomize.py`` on
PYTHONPATH, in every Python process the tests start (the CLI, JupyterLab, crash scripts), so a
new kind of container cannot skip the check. A container that fails it is removed and the
creation raises, naming what is wrong.

While it runs (:func:`check_inside`): the one helper that every kind's test calls on a running
container of that kind. It reads ``docker inspect`` and, inside, every process's status
(``CapEff`` 0, ``NoNewPrivs`` 1, seccomp on, the expected non-root user), the mount table (only
the intended mounts, no socket) and the cgroup limits (as asked). ``KINDS`` names the container
kinds (their ``role`` label); a container of a role it does not know fails at creation, and
tests/test_confinement.py fails until some test checks that kind from inside.

Tests that create plain containers on purpose (e.g. fake orphans) label them ``FIXTURE``.
This module imports nothing of the project: it is loaded before it, in other processes too.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from typing import Any

FIXTURE = "org.jupyter.docker-env.test-fixture"
MANAGED = "org.jupyter.docker-env.managed"
ROLE = "org.jupyter.docker-env.role"
HUB_USER = "org.jupyter.docker-env.hub-user"
FORBIDDEN_SOURCES = ("/var/run/docker.sock", "/run/docker.sock", "/", "/etc", "/root", "/proc")
#: Where containers get the files the server gives them (a kernel's connection file, a pool
#: container's claim pipe), and the host folder those come from.
FILES_DIR = "/run/jupyter-docker-env"
HOST_FILES = "/docker-env-files/"
RELAY_DIR = "/run/jupyter-docker-env-relay"
#: The kinds of container the project starts, by role label: what each may mount besides
#: tmpfs folders ("workspace": one host folder at its own path, read-write; "files": read-only
#: files of the server under FILES_DIR; "relay": the Swarm relay's socket folder at RELAY_DIR).
KINDS: dict[str, frozenset[str]] = {
    "kernel": frozenset({"workspace", "files"}),
    "pool": frozenset({"workspace", "files"}),  # a warm pool's kernel, waiting for its claim
    "sandbox": frozenset(),  # the network namespace kernels share
    "run": frozenset({"workspace"}),  # its files are copied in: it outlives the server
    "serving": frozenset(),
    "inspect": frozenset(),  # reads what an image holds (the lock)
    "relay": frozenset({"relay"}),  # Swarm: the network sandbox that relays kernels' ports
    "prepull": frozenset(),  # Swarm: a job that pulls an image on every node (runs `true`)
}
#: Kinds that end as soon as they start: checked where they are created only, and why.
ENDS_AT_ONCE = {"prepull": "its tasks run `true` on each node: nothing runs to look into"}
#: Security options that undo Docker's default confinement.
UNCONFINED = ("seccomp=unconfined", "seccomp:unconfined", "apparmor=unconfined", "label=disable")


def problems(attrs: dict[str, Any], network_owner: dict[str, Any] | None = None) -> list[str]:
    """What is wrong with a container's confinement, read from `docker inspect`.

    ``network_owner``: the inspected container whose network namespace it joins, if any.
    """
    host = attrs.get("HostConfig") or {}
    config = attrs.get("Config") or {}
    role = (config.get("Labels") or {}).get(ROLE)
    found = []
    if role not in KINDS:
        found.append(
            f"an unknown kind of container (role label {role!r}): add it to KINDS in "
            "tests/audit/jde_confinement.py and check it from inside in its test"
        )
    if host.get("Privileged"):
        found.append("privileged")
    uid = (config.get("User") or "").split(":")[0]
    if uid in ("", "0", "root"):
        found.append(f"runs as root (User={config.get('User')!r})")
    if "ALL" not in (host.get("CapDrop") or []) or host.get("CapAdd"):
        found.append(
            f"keeps capabilities (CapDrop={host.get('CapDrop')}, CapAdd={host.get('CapAdd')})"
        )
    options = [str(o) for o in host.get("SecurityOpt") or []]
    if not any(o.startswith("no-new-privileges") for o in options):
        found.append("may gain privileges (no no-new-privileges)")
    found += [f"security option {o}" for o in options if o.startswith(UNCONFINED)]
    modes = ("NetworkMode", "PidMode", "IpcMode", "UTSMode", "UsernsMode")
    found += [f"{mode}=host" for mode in modes if host.get(mode) == "host"]
    found += [
        f"{mode}={host[mode]} (shares another container's namespace)"
        for mode in ("PidMode", "IpcMode")
        if str(host.get(mode) or "").startswith("container:")
    ]
    if str(host.get("NetworkMode") or "").startswith("container:"):
        owner_role = ((network_owner or {}).get("Config") or {}).get("Labels", {}).get(ROLE)
        if owner_role != "sandbox":
            found.append(f"joins the network of {host['NetworkMode']}, which is no sandbox")
    if not host.get("PidsLimit"):
        found.append("no process limit")
    if host.get("Devices"):
        found.append(f"devices {host['Devices']}")
    if host.get("VolumesFrom"):
        found.append(f"mounts the volumes of {host['VolumesFrom']}")
    labels = config.get("Labels") or {}
    allowed = KINDS.get(str(role), frozenset())
    found += mount_problems(attrs.get("Mounts") or [], allowed, labels.get(HUB_USER))
    return found


def hub_users_workspace(mount: dict[str, Any], hub_user: str | None) -> bool:
    """A container the launch broker starts for a hub user mounts that user's workspace (a
    folder or a volume named after them, as DockerSpawner names it) where the broker puts it."""
    if not hub_user or not mount.get("RW") or mount.get("Type") not in ("bind", "volume"):
        return False
    name = str(mount.get("Name") or "") or str(mount.get("Source") or "").rstrip("/")
    from jupyter_docker_env.broker.policy import user_key  # only the broker's containers

    return name.rsplit("/", 1)[-1].endswith(user_key(hub_user))


def mount_problems(
    mounts: list[dict[str, Any]], allowed: frozenset[str], hub_user: str | None = None
) -> list[str]:
    """Anything mounted but what the kind may have: the workspace at its own path (a bind, or on
    Swarm a volume whose driver options name that path; or a hub user's own workspace where the
    broker puts it), the server's files (read-only), the relay's folder."""
    found = []
    workspaces = []
    for mount in mounts:
        kind, source = mount.get("Type"), str(mount.get("Source") or "")
        target = str(mount.get("Destination") or "")
        options = json.dumps((mount.get("VolumeOptions") or {}).get("DriverConfig") or {})
        if source.rstrip("/") in FORBIDDEN_SOURCES or "docker.sock" in source:
            found.append(f"mounts {source}")
        elif "workspace" in allowed and mount.get("RW") and kind == "bind" and source == target:
            workspaces.append(source)
        elif "workspace" in allowed and mount.get("RW") and kind == "volume" and target in options:
            workspaces.append(target)
        elif "workspace" in allowed and hub_users_workspace(mount, hub_user):
            workspaces.append(source)
        elif kind != "bind":
            found.append(f"mounts a {kind} at {target}")
        elif "files" in allowed and HOST_FILES in source and within(target, FILES_DIR):
            if mount.get("RW"):
                found.append(f"mounts the server's files at {target} writable")
        elif "relay" in allowed and target == RELAY_DIR and _relay_folder(source):
            pass
        else:
            found.append(f"mounts {source} at {target}, which is not for this kind of container")
    if len(workspaces) > 1:
        found.append(f"mounts more than one workspace: {workspaces}")
    return found


def _relay_folder(source: str) -> bool:
    """A folder of the server's for the Swarm relay's control socket."""
    name = source.rstrip("/").rpartition("/")[2]
    return (HOST_FILES in source and name.startswith("relay-")) or name.startswith("jde-relay-")


def within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def service_problems(spec: dict[str, Any]) -> list[str]:
    """What is wrong with the confinement of a Swarm service's tasks, read from its spec."""
    task = spec.get("TaskTemplate") or {}
    container = task.get("ContainerSpec") or {}
    role = (container.get("Labels") or {}).get(ROLE)
    found = []
    if role not in KINDS:
        found.append(
            f"an unknown kind of service (role label {role!r}): add it to KINDS in "
            "tests/audit/jde_confinement.py and check it from inside in its test"
        )
    if (container.get("User") or "").split(":")[0] in ("", "0", "root"):
        found.append(f"runs as root (User={container.get('User')!r})")
    if "ALL" not in (container.get("CapabilityDrop") or []) or container.get("CapabilityAdd"):
        found.append("keeps capabilities")
    nnp = (container.get("Privileges") or {}).get("NoNewPrivileges")
    if not nnp and (container.get("Args") or [])[:2] != ["setpriv", "--no-new-privs"]:
        found.append("may gain privileges (neither NoNewPrivileges nor setpriv --no-new-privs)")
    if not ((task.get("Resources") or {}).get("Limits") or {}).get("Pids"):
        found.append("no process limit")
    mounts = [
        {
            "Type": m.get("Type"),
            "Source": m.get("Source"),
            "Destination": m.get("Target"),
            "RW": not m.get("ReadOnly"),
            "VolumeOptions": m.get("VolumeOptions"),
        }
        for m in container.get("Mounts") or []
        if m.get("Type") != "tmpfs"
    ]
    found += mount_problems(mounts, KINDS.get(str(role), frozenset()))
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
        network = str((inspected.get("HostConfig") or {}).get("NetworkMode") or "")
        owner = None
        if network.startswith("container:"):
            owner = self.inspect_container(network.removeprefix("container:"))
        if found := problems(inspected, owner):
            self.remove_container(attrs["Id"])
            raise AssertionError(
                f"container {attrs.get('Name')} ({labels.get(ROLE)}) is not confined: "
                f"{'; '.join(found)}"
            )
        return attrs

    audited.jde_audited = True  # type: ignore[attr-defined]
    engine_class.create_container = audited  # type: ignore[method-assign]


# -- from inside ----------------------------------------------------------------------------
#: Run inside the container (by any Python 3 of the image): what its processes may do, what it
#: mounts, its cgroup limits, its network interfaces; printed as JSON.
PROBE = r"""
import json, os, re, stat
KEYS = ("Name", "Uid", "Gid", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs",
        "Seccomp")
def status(pid):
    out = {}
    try:
        with open("/proc/%s/status" % pid) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in KEYS:
                    out[key] = value.split() if key in ("Uid", "Gid") else value.strip()
    except OSError:
        return None
    return out
def read(*paths):
    for path in paths:
        try:
            with open(path) as f:
                return f.read().split()
        except OSError:
            pass
    return None
def unescape(text):
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)
processes = {pid: status(pid) for pid in os.listdir("/proc") if pid.isdigit()}
processes = {pid: s for pid, s in processes.items() if s}
mounts = []
with open("/proc/self/mountinfo") as f:
    for line in f:
        fields = line.split()
        dash = fields.index("-")
        point = unescape(fields[4])
        try:
            socket = stat.S_ISSOCK(os.lstat(point).st_mode)
        except OSError:
            socket = False
        mounts.append({"root": unescape(fields[3]), "point": point, "options": fields[5],
                       "type": fields[dash + 1], "socket": socket})
cg = "/sys/fs/cgroup"
print(json.dumps({
    "self": status("self"),
    "processes": processes,
    "mounts": mounts,
    "memory": read(cg + "/memory/memory.limit_in_bytes", cg + "/memory.max"),
    "pids": read(cg + "/pids/pids.max", cg + "/pids.max"),
    "cpu": read(cg + "/cpu/cpu.cfs_quota_us", cg + "/cpu.max"),
    "cpu_period": read(cg + "/cpu/cpu.cfs_period_us"),
    "sockets": [p for p in ("/var/run/docker.sock", "/run/docker.sock") if os.path.exists(p)],
    "interfaces": sorted(os.listdir("/sys/class/net")),
}))
"""
#: Mounts every container has from Docker itself: (mount point pattern, file system types).
RUNTIME_MOUNTS = (
    (r"/proc(/.*)?", {"proc", "tmpfs"}),  # /proc and the paths Docker masks in it
    (r"/dev|/dev/shm", {"tmpfs"}),
    (r"/dev/pts", {"devpts"}),
    (r"/dev/mqueue", {"mqueue"}),
    (r"/sys|/sys/firmware", {"sysfs", "tmpfs"}),
    (r"/sys/fs/cgroup(/[\w,=]+)?", {"tmpfs", "cgroup", "cgroup2"}),
)
#: Files Docker writes for each container (their source is in its own folder of the engine).
ENGINE_FILES = ("/etc/resolv.conf", "/etc/hostname", "/etc/hosts")
INIT = ("/dev/init", "/sbin/docker-init", "/usr/sbin/docker-init")
UNLIMITED = 2**62


def check_inside(
    engine: Any,
    target: str,
    *,
    kind: str,
    user: tuple[int, int],
    mounts: Mapping[str, str],
    pids: int,
    memory: int | None = None,
    nano_cpus: int | None = None,
    read_only: bool = False,
    network: bool = True,
) -> dict[str, Any]:
    """Assert that the running container ``target`` of ``kind`` is confined as intended.

    ``mounts``: every mount it should have besides Docker's own, by mount point: "workspace"
    (a host folder at its own path, read-write), "ro" (a read-only bind of the server's files),
    "rw" (a writable folder the server made for it, as the relay's socket folder) or "tmpfs".
    ``pids``, ``memory`` (bytes) and ``nano_cpus`` are the limits it was asked for (None:
    unlimited); ``read_only``: its root file system is; ``network``: it has one besides
    loopback. For kind "inspect" ``target`` is an image: the probe runs as the command of the
    engine's throwaway inspect container (``run_output``), the only way into it.

    Returns what the probe read (for further checks).
    """
    assert kind in KINDS, f"unknown kind {kind!r}: add it to KINDS"
    command = ["python3", "-c", PROBE]
    if kind == "inspect":
        report = json.loads(engine.run_output(target, command))
        found = []
    else:
        attrs = engine.inspect_container(target)
        assert attrs is not None, f"container {target} is gone"
        assert attrs["State"]["Running"], f"container {target} is not running"
        role = attrs["Config"]["Labels"].get(ROLE)
        assert role == kind, f"container {target} is a {role}, not a {kind}"
        network_mode = str(attrs["HostConfig"].get("NetworkMode") or "")
        owner = None
        if network_mode.startswith("container:"):
            owner = engine.inspect_container(network_mode.removeprefix("container:"))
        found = problems(attrs, owner)
        report = json.loads(_exec(engine, target, command))
    found += inside_problems(
        report,
        user=user,
        mounts=mounts,
        pids=pids,
        memory=memory,
        nano_cpus=nano_cpus,
        read_only=read_only,
        network=network,
    )
    assert not found, f"{kind} container {target[:12]} is not confined: " + "; ".join(found)
    return report  # type: ignore[no-any-return]


def _exec(engine: Any, container_id: str, command: list[str]) -> str:
    """Run ``command`` in the running container as its own user; its stdout."""
    api = engine.client.api
    exec_id = api.exec_create(container_id, command, stdout=True, stderr=True)["Id"]
    out = api.exec_start(exec_id, demux=True)
    code = api.exec_inspect(exec_id)["ExitCode"]
    stdout, stderr = (part.decode(errors="replace") if part else "" for part in out)
    assert code == 0, f"the probe failed in {container_id[:12]} ({code}): {stderr}"
    return stdout


def inside_problems(
    report: dict[str, Any],
    *,
    user: tuple[int, int],
    mounts: Mapping[str, str],
    pids: int,
    memory: int | None,
    nano_cpus: int | None,
    read_only: bool,
    network: bool,
) -> list[str]:
    """What the probe's ``report`` shows to be wrong (see :func:`check_inside`)."""
    found = []
    uid, gid = (str(user[0]),) * 4, (str(user[1]),) * 4
    for pid, s in sorted({**report["processes"], "probe": report["self"]}.items()):
        who = f"process {pid} ({s.get('Name')})"
        if "0" in s["Uid"] or tuple(s["Uid"]) != uid or tuple(s["Gid"]) != gid:
            found.append(f"{who} runs as uid {s['Uid']} gid {s['Gid']}, not {user}")
        caps = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")
        found += [f"{who} has capabilities ({k} {s[k]})" for k in caps if int(s[k], 16)]
        if s.get("NoNewPrivs") != "1":
            found.append(f"{who} may gain privileges (NoNewPrivs {s.get('NoNewPrivs')})")
        if s.get("Seccomp") != "2":
            found.append(f"{who} is not filtered by seccomp (Seccomp {s.get('Seccomp')})")
    found += _mount_problems(report["mounts"], mounts, read_only)
    found += [f"the Docker socket is at {p}" for p in report["sockets"]]
    found += _limit_problems(report, pids, memory, nano_cpus)
    others = [i for i in report["interfaces"] if i != "lo"]
    if network != bool(others):
        found.append(f"network interfaces {report['interfaces']}, expected network={network}")
    return found


def _mount_problems(seen: list[dict[str, Any]], wanted: Mapping[str, str], ro: bool) -> list[str]:
    found, extra = [], {}
    for m in seen:
        point, kind, root, options = m["point"], m["type"], m["root"], m["options"].split(",")
        if m["socket"]:
            found.append(f"a socket is mounted at {point}")
        if point == "/":
            if ("ro" in options) != ro:
                found.append(f"the root file system is {options[0]}, expected ro={ro}")
        elif not _from_docker(point, kind, root, options):
            extra[point] = (kind, root, "ro" if "ro" in options else "rw")
    for point, (kind, root, mode) in sorted(extra.items()):
        want = wanted.get(point)
        if want is None:
            found.append(f"mounts {root} ({kind}) at {point}, which was not intended")
        elif want == "tmpfs" and kind != "tmpfs":
            found.append(f"{point} is a {kind}, not a tmpfs")
        elif want == "workspace" and not (mode == "rw" and point.endswith(root)):
            found.append(f"the workspace {point} is {root} ({mode}), not itself read-write")
        elif want == "ro" and mode != "ro":
            found.append(f"{point} is writable")
        elif want == "rw" and (kind == "tmpfs" or mode != "rw"):
            found.append(f"{point} is {root} ({kind}, {mode}), not a writable folder of the server")
    found += [f"{point} is not mounted" for point in sorted(set(wanted) - set(extra))]
    return found


def _from_docker(point: str, kind: str, root: str, options: list[str]) -> bool:
    """A mount every container gets from Docker itself."""
    if any(re.fullmatch(pattern, point) and kind in types for pattern, types in RUNTIME_MOUNTS):
        return True
    if point in ENGINE_FILES:
        return "/containers/" in root
    return point in INIT and "ro" in options


def _limit_problems(
    report: dict[str, Any], pids: int, memory: int | None, nano_cpus: int | None
) -> list[str]:
    def number(values: list[str] | None) -> int | None:
        if not values or values[0] in ("max", "-1"):
            return None
        value = int(values[0])
        return None if value >= UNLIMITED else value

    found = []
    if number(report["pids"]) != pids:
        found.append(f"pids limit {report['pids']}, asked {pids}")
    if number(report["memory"]) != memory:
        found.append(f"memory limit {report['memory']}, asked {memory}")
    quota = number(report["cpu"])
    period = int((report["cpu_period"] or report["cpu"][1:] or ["100000"])[0])
    cpus = None if quota is None else quota * 10**9 // period
    if cpus != nano_cpus:
        found.append(f"cpu quota {report['cpu']} per {period} µs, asked {nano_cpus} nano CPUs")
    return found
