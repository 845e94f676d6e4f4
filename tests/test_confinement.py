"""The confinement checks themselves (tests/audit/jde_confinement.py): each fault they exist for
is caught, every kind of container the project starts is known to them, and each kind is checked
from inside, while it runs, by some test.
"""

from __future__ import annotations

import ast
import copy
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jde_confinement
import pytest

import jupyter_docker_env
from jupyter_docker_env.containers import ContainerRequest, Role, hardening
from jupyter_docker_env.engine import Engine

from .conftest import JDE_FIXTURE_LABEL, JDE_TEST_LABELS, check_inside

PACKAGE = Path(jupyter_docker_env.__file__).parent
TESTS = Path(__file__).parent
ROLE = jde_confinement.ROLE
WORKSPACE = "/home/ada/work"


def roles_the_code_creates() -> set[str]:
    """Every role label the package can give a container: the request's roles, and the
    constants (or module constants) written beside a ``ROLE`` label or as a ``role=``
    argument."""
    found = set(typing.get_args(Role))
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        constants = {
            target.id: str(node.value.value)
            for node in tree.body
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
            for target in node.targets
            if isinstance(target, ast.Name)
        }
        for node in ast.walk(tree):
            pairs: list[tuple[str | None, ast.expr]] = []
            if isinstance(node, ast.Dict):
                pairs = [
                    (getattr(k, "id", None) or getattr(k, "attr", None), v)
                    for k, v in zip(node.keys, node.values, strict=True)
                ]
            elif isinstance(node, ast.keyword) and node.arg == "role":
                pairs = [("ROLE", node.value)]
            for key, value in pairs:
                if key == "ROLE" and (role := _text(value, constants)):
                    found.add(role)
    return found


def _text(node: ast.expr, constants: dict[str, str]) -> str | None:
    """The string a node of the code stands for, if it is a constant or names one."""
    if isinstance(node, ast.Constant):
        return str(node.value)
    if isinstance(node, ast.Name):
        return constants.get(node.id)
    return None


def kinds_checked_from_inside() -> dict[str, list[str]]:
    """kind → the tests that call ``check_inside`` on a container of that kind."""
    found: dict[str, list[str]] = {}
    for path in TESTS.glob("test_*.py"):
        for test in ast.walk(ast.parse(path.read_text())):
            if not isinstance(test, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for call in ast.walk(test):
                if isinstance(call, ast.Call) and getattr(call.func, "id", "") == "check_inside":
                    for kw in call.keywords:
                        for const in ast.walk(kw.value) if kw.arg == "kind" else ():
                            if isinstance(const, ast.Constant) and isinstance(const.value, str):
                                found.setdefault(const.value, []).append(test.name)
    return found


def test_every_kind_of_container_is_known_to_the_audit_and_checked_from_inside() -> None:
    # Given every role the package gives the containers it creates
    roles = roles_the_code_creates()
    # Then the creation-time audit knows what each may mount (an unknown role fails there)
    assert roles <= set(jde_confinement.KINDS), (
        f"add {sorted(roles - set(jde_confinement.KINDS))} to KINDS in jde_confinement.py"
    )
    # And some test checks a running container of each kind from inside (but for kinds that
    # never run long enough to be looked at, which say why)
    checked = kinds_checked_from_inside()
    missing = sorted(set(jde_confinement.KINDS) - set(checked) - set(jde_confinement.ENDS_AT_ONCE))
    assert not missing, f"no test calls check_inside(kind=...) for {missing}"


# -- at creation: docker inspect ---------------------------------------------------------------
def created(role: str = "kernel", **changes: Any) -> dict[str, Any]:
    """What `docker inspect` shows of a container created with hardening() for ``role``."""
    request = ContainerRequest(
        role="kernel",
        name="k",
        image="img",
        command=("python",),
        workspace=WORKSPACE,
        working_dir=WORKSPACE,
        uid=1000,
        gid=1000,
        instance_id="i",
        pids_limit=1024,
    )
    options = hardening(request)
    attrs: dict[str, Any] = {
        "Config": {"User": options["user"], "Labels": {ROLE: role}},
        "HostConfig": {
            "CapDrop": options["cap_drop"],
            "SecurityOpt": options["security_opt"],
            "PidsLimit": options["pids_limit"],
            "NetworkMode": "bridge",
            "Privileged": options["privileged"],
        },
        "Mounts": [
            {"Type": "bind", "Source": src, "Destination": bind["bind"], "RW": bind["mode"] == "rw"}
            for src, bind in options["volumes"].items()
        ]
        + [
            {
                "Type": "bind",
                "Source": "/root/.local/share/jupyter/runtime/docker-env-files/i/k/0-kernel.json",
                "Destination": "/run/jupyter-docker-env/kernel.json",
                "RW": False,
            }
        ],
    }
    for path, value in changes.items():
        *parents, key = path.split(".")
        target = attrs
        for parent in parents:
            target = target[parent]
        target[key] = value
    return attrs


MOUNT = {"Type": "bind", "Source": "/srv/data", "Destination": "/data", "RW": False}
SANDBOX = {"Config": {"Labels": {ROLE: "sandbox"}}}
FAULTS: dict[str, tuple[dict[str, Any], str]] = {
    "root": ({"Config.User": "0:0"}, "runs as root"),
    "no user": ({"Config.User": ""}, "runs as root"),
    "capabilities kept": ({"HostConfig.CapDrop": None}, "keeps capabilities"),
    "a capability added": ({"HostConfig.CapAdd": ["SYS_ADMIN"]}, "keeps capabilities"),
    "privilege gain": ({"HostConfig.SecurityOpt": []}, "may gain privileges"),
    "seccomp off": (
        {"HostConfig.SecurityOpt": ["no-new-privileges:true", "seccomp=unconfined"]},
        "security option seccomp=unconfined",
    ),
    "apparmor off": (
        {"HostConfig.SecurityOpt": ["no-new-privileges:true", "apparmor=unconfined"]},
        "security option apparmor=unconfined",
    ),
    "privileged": ({"HostConfig.Privileged": True}, "privileged"),
    "host network": ({"HostConfig.NetworkMode": "host"}, "NetworkMode=host"),
    "host pids": ({"HostConfig.PidMode": "host"}, "PidMode=host"),
    "another's pids": ({"HostConfig.PidMode": "container:abc"}, "shares another container"),
    "another's ipc": ({"HostConfig.IpcMode": "container:abc"}, "shares another container"),
    "a network that is no sandbox": (
        {"HostConfig.NetworkMode": "container:abc"},
        "which is no sandbox",
    ),
    "no process limit": ({"HostConfig.PidsLimit": 0}, "no process limit"),
    "a device": ({"HostConfig.Devices": [{"PathOnHost": "/dev/kvm"}]}, "devices"),
    "another's volumes": ({"HostConfig.VolumesFrom": ["abc"]}, "mounts the volumes of"),
    "the docker socket": (
        {"Mounts": [{"Type": "bind", "Source": "/var/run/docker.sock", "RW": True}]},
        "mounts /var/run/docker.sock",
    ),
    "the host's root": ({"Mounts": [{"Type": "bind", "Source": "/", "RW": False}]}, "mounts /"),
    "another host folder": ({"Mounts": [MOUNT]}, "mounts /srv/data at /data, which is not"),
    "a volume": (
        {"Mounts": [{"Type": "volume", "Source": "/v", "Destination": "/data"}]},
        "mounts a volume at /data",
    ),
    "the workspace elsewhere": (
        {"Mounts": [{"Type": "bind", "Source": WORKSPACE, "Destination": "/ws", "RW": True}]},
        f"mounts {WORKSPACE} at /ws",
    ),
    "the workspace read-only": (
        {"Mounts": [{"Type": "bind", "Source": WORKSPACE, "Destination": WORKSPACE, "RW": False}]},
        f"mounts {WORKSPACE} at {WORKSPACE}",
    ),
    "two workspaces": (
        {
            "Mounts": [
                {"Type": "bind", "Source": p, "Destination": p, "RW": True}
                for p in (WORKSPACE, "/home/bob")
            ]
        },
        "more than one workspace",
    ),
    "an unknown kind": ({"Config.Labels": {ROLE: "helper"}}, "an unknown kind of container"),
}


def test_a_hardened_container_passes_the_audit() -> None:
    assert jde_confinement.problems(created()) == []
    joined = created(**{"HostConfig.NetworkMode": "container:abc"})
    assert jde_confinement.problems(joined, network_owner=SANDBOX) == []


@pytest.mark.parametrize("fault", FAULTS)
def test_each_fault_is_caught_at_creation(fault: str) -> None:
    changes, expected = FAULTS[fault]
    found = jde_confinement.problems(created(**copy.deepcopy(changes)))
    assert any(expected in problem for problem in found), found


def test_what_each_kind_may_mount_differs() -> None:
    # the server's files are a kernel's, never a serving container's; a run has none either
    assert jde_confinement.problems(created("serving")) != []
    assert any("kernel.json" in p for p in jde_confinement.problems(created("run")))
    # a kernel's files mounted writable are refused
    rw_files = created()
    rw_files["Mounts"][1]["RW"] = True
    assert any("writable" in p for p in jde_confinement.problems(rw_files))


# -- while it runs: from inside ----------------------------------------------------------------
@pytest.fixture
def jde_unconfined(jde_engine: Engine, jde_base_image: str, jde_tmp: Path) -> Iterator[str]:
    """A running container labelled as a kernel but made without any confinement (a fixture,
    so the creation-time audit lets it through): root, every default capability, privilege gain,
    a host folder at another path, no limits."""
    attrs = jde_engine.create_container(
        jde_base_image,
        command=["sleep", "infinity"],
        labels={**JDE_TEST_LABELS, JDE_FIXTURE_LABEL: "1", ROLE: "kernel"},
        volumes={str(jde_tmp): {"bind": "/data", "mode": "rw"}},
    )
    jde_engine.start_container(attrs["Id"])
    yield attrs["Id"]
    jde_engine.remove_container(attrs["Id"])


@pytest.mark.docker
def test_the_check_from_inside_sees_what_a_container_may_do(
    jde_engine: Engine, jde_unconfined: str, jde_tmp: Path
) -> None:
    # Given a running container without confinement; when it is checked from inside as a kernel
    with pytest.raises(AssertionError) as failed:
        check_inside(
            jde_engine,
            jde_unconfined,
            kind="kernel",
            user=(1000, 1000),
            mounts={str(jde_tmp): "workspace", "/home/jupyter": "tmpfs"},
            pids=1024,
            memory=1024**3,
        )
    # Then what its processes may do, what it mounts and its limits are each named
    message = str(failed.value)
    for expected in (
        "process 1 (sleep) runs as uid ['0', '0', '0', '0']",
        "process 1 (sleep) has capabilities (CapEff",
        "process 1 (sleep) may gain privileges (NoNewPrivs 0)",
        "at /data, which was not intended",
        f"{jde_tmp} is not mounted",
        "/home/jupyter is not mounted",
        "pids limit",
        "asked 1073741824",
    ):
        assert expected in message, (expected, message)
