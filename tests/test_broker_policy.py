"""The launch broker's decisions (pure functions, no engine): what it accepts, what it refuses and
why, and thousands of generated requests of which none is accepted outside the policy."""

from __future__ import annotations

import base64
import re
import string
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from jupyter_docker_env import labels as L
from jupyter_docker_env.broker.policy import (
    MAX_ID,
    ConfigError,
    Identity,
    Limits,
    Policy,
    Refused,
    base_allowed,
    check_environment,
    container_request,
    decide_build,
    decide_container,
    dockerfile_images,
    parse_id,
    parse_user_spec,
    user_key,
)
from jupyter_docker_env.containers import ContainerFile, ContainerRequest, hardening
from jupyter_docker_env.containers.broker import request_body
from jupyter_docker_env.environments.dockerfile import render
from jupyter_docker_env.models import EnvSpec

ALICE = Identity("alice", groups=("students",))
BOB = Identity("bob")
ROOT_ADMIN = Identity("carol", admin=True)
POLICY = Policy(
    image_prefix="jde",
    allowed_bases=("python:3.12-slim", "127.0.0.1:5000/docker-env/", "debian"),
    default_base="python:3.12-slim",
    limits=Limits(cpus=2, memory=2 * 1024**3, gpus=0, pids=256, kernels=2),
    group_limits={"gpu": {"gpus": 1, "memory": "16g"}, "big": {"memory": "8g", "cpus": 4}},
    users={"dave": "1001:1001"},
)


def kernel_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "role": "kernel",
        "image": "jde/u-alice/demo:latest",
        "command": ["python", "-m", "ipykernel_launcher", "-f", "/run/jde/kernel.json"],
        "working_dir": "/home/jovyan/work/analysis",
        "environment": {"LANG": "C.UTF-8"},
        "labels": {L.KERNEL_ID: "k1", L.ENV: "demo"},
        "home": "/home/jupyter",
        "ports": [20001, 20002, 20003, 20004, 20005],
        "files": [{"path": "/run/jde/kernel.json", "data": base64.b64encode(b"{}").decode()}],
        "instance": "srv-0123456789abcdef",
        "resources": {"memory": "1g", "cpus": 1},
    }
    body.update(overrides)
    return body


def refusal(body: Any, who: Identity = ALICE, policy: Policy = POLICY) -> Refused:
    with pytest.raises(Refused) as caught:
        decide_container(body, who, policy)
    return caught.value


# -- identity: uids the broker parses itself -------------------------------------------------
@pytest.mark.parametrize("value", [0, "0", "00", "+0", " 0", "0 ", "-0", "000", "\t0"])
def test_uid_zero_in_any_spelling_is_root_and_refused(value: Any) -> None:
    with pytest.raises(ConfigError, match="root"):
        parse_id(value, "c.DockerEnvBroker.users['alice']")


@pytest.mark.parametrize(
    "value",
    [
        "",
        "+1000",
        " 1000",
        "1000 ",
        "01000",
        "0x3e8",
        "1e3",
        "\u0661\u0660\u0660\u0660",
        "1_000",
        -1,
        1.0,
    ],
)
def test_uids_are_plain_decimal_numbers(value: Any) -> None:
    with pytest.raises(ConfigError):
        parse_id(value, "uid")


def test_uids_are_range_checked() -> None:
    assert parse_id("1000", "uid") == 1000
    assert parse_id(MAX_ID, "uid") == MAX_ID
    with pytest.raises(ConfigError, match="beyond"):
        parse_id(str(MAX_ID + 1), "uid")
    assert parse_user_spec("1000:100", "u") == (1000, 100)
    assert parse_user_spec(1001, "u") == (1001, 1001)
    with pytest.raises(ConfigError, match="root"):
        parse_user_spec("1000:0", "u")


def test_a_mapping_to_root_stops_the_broker_at_start() -> None:
    # Given an administrator who maps a user to uid "00" by mistake
    policy = Policy(users={"eve": "00:100"})
    # Then the broker refuses to start, naming the setting
    with pytest.raises(ConfigError, match=r"users\['eve'\].*root"):
        policy.check()


@pytest.mark.parametrize("uid", ["0", "00", "+0", " 0"])
def test_a_request_that_names_a_uid_is_refused_with_the_reason(uid: str) -> None:
    for key in ("uid", "user", "gid"):
        err = refusal(kernel_body(**{key: uid}))
        assert err.status == 403
        assert "broker's mapping of your hub user" in err.message


def test_the_container_user_comes_from_the_broker_mapping() -> None:
    intent = decide_container(kernel_body(image="jde/u-dave/demo:1"), Identity("dave"), POLICY)
    request = container_request(intent, Identity("dave"), POLICY, "n")
    assert (request.uid, request.gid) == (1001, 1001)
    request = container_request(decide_container(kernel_body(), ALICE, POLICY), ALICE, POLICY, "n")
    assert (request.uid, request.gid) == (1000, 100)


@pytest.mark.parametrize("name", ["alice", "Alice.B@x", "a-b", "é", "user_1", "名前", "a b"])
def test_user_keys_escape_like_dockerspawner(name: str) -> None:
    # the workspace volume and the user's network are named as DockerSpawner names them
    from dockerspawner import DockerSpawner

    assert user_key(name) == DockerSpawner._escape(name)


# -- images ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("ref", "allowed"),
    [
        ("python:3.12-slim", True),
        ("python:3.12-slim-evil", False),
        ("python:3.13-slim", False),
        ("python", False),
        ("127.0.0.1:5000/docker-env/python:3", True),
        ("127.0.0.1:5000/docker-env/deep/er:1", True),
        ("127.0.0.1:5000/docker-env-evil/python:3", False),
        ("127.0.0.1:5000/docker-env", False),
        ("debian:bookworm", True),
        ("debian@sha256:" + "a" * 64, True),
        ("debian-evil:1", False),
        ("library/debian:1", False),
        ("evil/python:3.12-slim", False),
        ("PYTHON:3.12-slim", False),
        ("127.0.0.1:5000/docker-env/../evil:1", False),
    ],
)
def test_the_base_allow_list_takes_exact_refs_repositories_and_prefixes(
    ref: str, allowed: bool
) -> None:
    assert base_allowed(ref, POLICY.allowed_bases) is allowed


def test_a_spec_on_a_base_outside_the_allow_list_is_refused_saying_what_is_allowed() -> None:
    spec = EnvSpec(name="x", kind="spec", base="evil/miner:latest")
    with pytest.raises(Refused) as caught:
        check_environment(spec, None, ALICE, POLICY)
    assert caught.value.status == 403
    assert "'evil/miner:latest' is not allowed on this hub" in caught.value.message
    assert "python:3.12-slim" in caught.value.message


def test_dockerfile_environments_are_off_unless_allowed() -> None:
    spec = EnvSpec(name="x", kind="dockerfile")
    with pytest.raises(Refused, match="Dockerfile environments are turned off"):
        check_environment(spec, "FROM python:3.12-slim\n", ALICE, POLICY)
    open_policy = Policy(**{**POLICY.__dict__, "dockerfile_groups": frozenset({"students"})})
    check_environment(spec, "FROM python:3.12-slim\n", ALICE, open_policy)
    with pytest.raises(Refused, match="not allowed"):
        check_environment(
            spec, "FROM python:3.12-slim\nCOPY --from=evil:1 / /\n", ALICE, open_policy
        )


def test_dockerfiles_may_not_use_the_build_caches_other_users_builds_use() -> None:
    spec = EnvSpec(name="x", kind="dockerfile")
    allowed = Policy(**{**POLICY.__dict__, "allow_dockerfile": True})
    for mount in ("--mount=type=cache,target=/root/.cache/pip", "--mount=target=/x,type=cache"):
        with pytest.raises(Refused, match="cache mounts"):
            check_environment(spec, f"FROM debian:12\nRUN {mount} true\n", ALICE, allowed)


def test_each_users_builds_get_their_own_download_caches() -> None:
    spec = EnvSpec(name="x", kind="spec", base="debian:12", pip=("six",), apt=("git",))
    alices = render(spec, Path("."), cache_id=POLICY.cache_id(POLICY.namespace(ALICE)))
    bobs = render(spec, Path("."), cache_id=POLICY.cache_id(POLICY.namespace(BOB)))
    assert "id=docker-env-u-alice-pip," in alices
    assert "id=docker-env-u-alice-apt-lists," in alices
    assert "id=docker-env-u-bob-pip," in bobs
    long = POLICY.cache_id(POLICY.namespace(Identity("x" * 80)))
    assert len(long) <= 63
    assert render(spec, Path("."), cache_id=long)


@pytest.mark.parametrize(
    ("text", "images"),
    [
        ("FROM python:3.12-slim\n", ["python:3.12-slim"]),
        ("FROM --platform=linux/amd64 debian AS b\nFROM b\n", ["debian"]),
        ("FROM a:1 AS build\nFROM b:2\nCOPY --from=build /x /x\n", ["a:1", "b:2"]),
        ("FROM a:1\nCOPY --from=c:3 /x /x\n", ["a:1", "c:3"]),
        ("FROM a:1\nRUN --mount=type=bind,from=d:4,target=/d true\n", ["a:1", "d:4"]),
        ("# syntax=docker/dockerfile:1\nFROM a:1\n", ["docker/dockerfile:1", "a:1"]),
        ("FROM a:1\nRUN echo \\\n  hi\n# FROM hidden:1\n", ["a:1"]),
        ("from a:1\ncopy --from=0 /x /x\n", ["a:1"]),
    ],
)
def test_every_image_a_dockerfile_pulls_is_found(text: str, images: list[str]) -> None:
    assert [ref for _, ref in dockerfile_images(text)] == images


@pytest.mark.parametrize(
    "text", ["ARG B=x\nFROM ${B}\n", "FROM a:1\nCOPY --from=$X / /\n", "# escape=`\nFROM a:1\n"]
)
def test_a_dockerfile_whose_images_cannot_be_checked_is_refused(text: str) -> None:
    with pytest.raises(Refused):
        dockerfile_images(text)


def test_kernels_run_only_images_of_the_users_namespace_or_shared_ones() -> None:
    assert decide_container(kernel_body(), ALICE, POLICY).image == "jde/u-alice/demo:latest"
    assert decide_container(kernel_body(image="jde/shared/x:1"), ALICE, POLICY)
    for image in ("jde/u-bob/demo:latest", "python:3.12-slim", "jde/u-alice", "jde/u-alicex/d:1"):
        assert refusal(kernel_body(image=image)).status in (400, 404), image
    # an admin may run anyone's
    assert decide_container(kernel_body(), ROOT_ADMIN, POLICY)


# -- containers ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("privileged", True, "never starts privileged"),
        ("mounts", [{"source": "/", "target": "/host"}], "only your workspace is mounted"),
        ("volumes", {"/var/run/docker.sock": {}}, "only your workspace is mounted"),
        ("binds", ["/:/host"], "only your workspace is mounted"),
        ("cap_add", ["SYS_ADMIN"], "every capability is dropped"),
        ("network_mode", "host", "your own network"),
        ("devices", ["/dev/mem"], "devices are not passed in"),
        ("HostConfig", {"Privileged": True}, "not Docker API bodies"),
    ],
)
def test_raw_docker_options_are_refused_with_the_reason(key: str, value: Any, words: str) -> None:
    err = refusal(kernel_body(**{key: value}))
    assert err.status == 403
    assert words in err.message
    assert err.field == key


def test_resources_beyond_the_users_limits_are_refused_saying_the_limit() -> None:
    err = refusal(kernel_body(resources={"memory": "64g"}))
    assert err.status == 403
    assert err.message == "resources.memory: 64 GiB is more than your limit of 2 GiB"
    err = refusal(kernel_body(resources={"gpus": 1}))
    assert "1 GPUs is more than your limit of 0" in err.message
    assert "ask for a number" in refusal(kernel_body(resources={"gpus": "all"})).message
    assert (
        "3 CPUs is more than your limit of 2" in refusal(kernel_body(resources={"cpus": 3})).message
    )


def test_group_limits_take_the_most_generous_and_users_override() -> None:
    both = Identity("x", groups=("big", "gpu"))
    limits = POLICY.limits_for(both)
    assert (limits.memory, limits.cpus, limits.gpus) == (16 * 1024**3, 4.0, 1)
    policy = Policy(**{**POLICY.__dict__, "user_limits": {"x": {"memory": "1g"}}})
    assert policy.limits_for(both).memory == 1024**3
    intent = decide_container(kernel_body(image="jde/u-x/d:1", resources={"gpus": 1}), both, POLICY)
    assert intent.gpus == 1


def test_an_unlimited_request_gets_the_users_limits() -> None:
    intent = decide_container(kernel_body(resources={}), ALICE, POLICY)
    assert (intent.memory, intent.nano_cpus, intent.pids) == (2 * 1024**3, 2 * 10**9, 256)


def test_paths_stay_where_they_belong() -> None:
    outside = decide_container(kernel_body(working_dir="/etc"), ALICE, POLICY)
    assert outside.working_dir == "/home/jovyan/work"
    sneaky = decide_container(kernel_body(working_dir="/home/jovyan/work/../.."), ALICE, POLICY)
    assert sneaky.working_dir == "/home/jovyan/work"
    assert refusal(kernel_body(home="/etc")).field == "home"
    assert refusal(kernel_body(home="/home/jovyan/work/x")).field == "home"
    file = {"path": "/etc/passwd", "data": ""}
    assert refusal(kernel_body(files=[file])).field == "files[0].path"
    assert refusal(kernel_body(files=[{**file, "path": "/run/x", "mode": 0o4755}])).field == (
        "files[0].mode"
    )


def test_labels_the_broker_sets_cannot_be_sent() -> None:
    for key in (L.HUB_USER, L.MANAGED, L.INSTANCE, L.ROLE, L.SERVER):
        assert refusal(kernel_body(labels={key: "x"})).status == 403


def test_the_accepted_container_is_confined_to_the_users_workspace_and_network() -> None:
    intent = decide_container(kernel_body(), ALICE, POLICY)
    request = container_request(intent, ALICE, POLICY, "jde-kernel-alice-1", server="c0ffee")
    options = hardening(request)
    assert options["volumes"] == {
        "jupyterhub-user-alice": {"bind": "/home/jovyan/work", "mode": "rw"}
    }
    assert options["cap_drop"] == ["ALL"]
    assert options["privileged"] is False
    assert options["security_opt"] == ["no-new-privileges:true"]
    assert options["mem_limit"] == 1024**3
    assert options["pids_limit"] == 256
    assert request.network == "jupyter-docker-env-user-alice"
    assert request.labels[L.HUB_USER] == "alice"
    assert request.labels[L.SERVER] == "c0ffee"
    assert request.instance_id == "hub-alice.srv-0123456789abcdef"


def test_what_a_single_user_server_sends_is_what_the_broker_accepts() -> None:
    # Given a kernel's request as the provisioner describes it for the broker back end
    request = ContainerRequest(
        role="kernel",
        name="jupyter-kernel-1",
        image="jde/u-alice/demo:latest",
        command=("python", "-m", "ipykernel_launcher", "-f", "/run/jupyter-docker-env/kernel.json"),
        workspace="/home/jovyan/work",
        working_dir="/home/jovyan/work/analysis",
        uid=0,  # never sent: the broker decides
        gid=0,
        instance_id="srv-0123456789abcdef",
        environment={"HOME": "/home/jupyter", "LANG": "C.UTF-8"},
        labels={L.KERNEL_ID: "k", L.ENV: "demo"},
        nano_cpus=15 * 10**8,
        mem_limit=512 * 1024**2,
        pids_limit=128,
        ports=(20001, 20002, 20003, 20004, 20005),
        files=(ContainerFile("/run/jupyter-docker-env/kernel.json", b"{}", 0o400),),
    )
    body = request_body(request)
    assert "uid" not in body
    assert "workspace" not in body
    # When the broker decides, then it keeps what was asked and adds the rest itself
    intent = decide_container(body, ALICE, POLICY)
    mine = container_request(intent, ALICE, POLICY, "n")
    assert (mine.uid, mine.gid) == (1000, 100)
    assert (mine.mem_limit, mine.nano_cpus, mine.pids_limit) == (512 * 1024**2, 15 * 10**8, 128)
    assert mine.files == request.files
    assert mine.working_dir == request.working_dir
    assert mine.ports == request.ports
    gpus = request_body(
        ContainerRequest(**{**request.__dict__, "device_requests": ({"count": -1},)})
    )
    with pytest.raises(Refused, match="ask for a number of GPUs"):
        decide_container(gpus, ALICE, POLICY)


def test_builds_name_their_environment_and_send_text_files_only() -> None:
    intent = decide_build(
        {"name": "demo", "files": {"docker-env.toml": 'pip = ["six"]\n'}}, ALICE, POLICY
    )
    assert intent.namespace == "jde/u-alice"
    assert intent.files == {"docker-env.toml": b'pip = ["six"]\n'}
    for files in ({"../x": "a"}, {"/etc/passwd": "a"}, {".git/config": "a"}, {"a": 1}, {}):
        with pytest.raises(Refused):
            decide_build({"name": "demo", "files": files}, ALICE, POLICY)
    for name in ("a/../../../tmp/x", "demo/..", "demo\n", "Demo", "a" * 64, "-x", "demo x"):
        with pytest.raises(Refused, match="name"):
            decide_build({"name": name, "files": {"requirements.txt": ""}}, ALICE, POLICY)
    for path in ("requirements.txt\n", "a/b\n"):
        with pytest.raises(Refused, match="files"):
            decide_build({"name": "demo", "files": {path: ""}}, ALICE, POLICY)
    with pytest.raises(Refused, match="only hub administrators"):
        decide_build({"name": "d", "files": {"a": ""}, "shared": True}, ALICE, POLICY)
    assert decide_build({"name": "d", "files": {"a": ""}, "shared": True}, ROOT_ADMIN, POLICY)


# -- fuzz ------------------------------------------------------------------------------------
HOSTILE: list[Any] = [
    None,
    True,
    0,
    -1,
    2**64,
    1e309,
    float("nan"),
    "",
    "0",
    "00",
    "+0",
    " 0",
    "../../etc",
    "/",
    "/var/run/docker.sock",
    "\0",
    "a" * 10000,
    "/home/jovyan/work\n",
    "srv-1\n",
    "jde/u-alice/demo:latest\n",
    [],
    {},
    [None],
    {"Privileged": True},
    "all",
    "64g",
    "-1",
    "1e3",
]
json_leaf = st.one_of(
    st.sampled_from(HOSTILE),
    st.integers(),
    st.floats(allow_nan=True),
    st.text(max_size=40),
    st.booleans(),
)
json_value = st.recursive(
    json_leaf,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = [*kernel_body().keys(), "privileged", "uid", "mounts", "user", "network"]
RESOURCE_FIELDS = ["cpus", "memory", "gpus", "pids", "shm"]


@st.composite
def container_bodies(draw: st.DrawFn) -> Any:
    """Valid bodies with a few fields replaced, dropped or added; sometimes anything at all."""
    if draw(st.integers(0, 9)) == 0:
        return draw(json_value)
    body = kernel_body(
        image=draw(
            st.sampled_from(
                [
                    "jde/u-alice/demo:latest",
                    "jde/shared/x:1",
                    "jde/u-bob/demo:1",
                    "python:3.12-slim",
                ]
            )
        )
    )
    for _ in range(draw(st.integers(0, 3))):
        key = draw(st.sampled_from(FIELDS))
        action = draw(st.integers(0, 2))
        if action == 0:
            body.pop(key, None)
        elif key == "resources":
            body[key] = draw(
                st.dictionaries(
                    st.sampled_from(RESOURCE_FIELDS),
                    json_value | st.text(alphabet=string.digits + "kmgtKMGT.+- ", max_size=6),
                    max_size=4,
                )
            )
        else:
            body[key] = draw(json_value)
    return body


def attempt(decide: Any, *args: Any) -> Any:
    """The decision, or the refusal (counted in hypothesis' statistics either way)."""
    try:
        result = decide(*args)
    except Refused as exc:
        event(f"refused {exc.status}")
        return exc
    event("accepted")
    return result


def assert_within_policy(body: Any, who: Identity) -> None:
    """Either a refusal that says why, or a container that satisfies every rule."""
    intent = attempt(decide_container, body, who, POLICY)
    if isinstance(intent, Refused):
        assert intent.status in (400, 403, 404)
        assert intent.message
        return
    limits = POLICY.limits_for(who)
    request = container_request(intent, who, POLICY, "n")
    options = hardening(request)
    assert request.uid >= 1
    assert request.gid >= 1
    assert options["user"] == f"{request.uid}:{request.gid}"
    assert options["cap_drop"] == ["ALL"]
    assert options["privileged"] is False
    assert options["security_opt"] == ["no-new-privileges:true"]
    assert list(options["volumes"]) == [POLICY.workspace(who)]
    assert options["volumes"][POLICY.workspace(who)]["bind"] == POLICY.workspace_path
    assert 0 < options["mem_limit"] <= limits.memory
    assert 0 < options["nano_cpus"] <= limits.cpus * 1e9
    assert 0 < options["pids_limit"] <= limits.pids
    assert sum(r["count"] for r in options.get("device_requests", [])) <= limits.gpus
    assert request.network == POLICY.network(who)
    assert request.image.startswith((POLICY.namespace(who) + "/", POLICY.shared + "/"))
    assert request.working_dir.startswith(POLICY.workspace_path)
    assert "\n" not in request.working_dir
    assert "\n" not in request.instance_id
    assert all("\n" not in k for k in request.labels)
    assert not request.labels.keys() & {L.MANAGED, L.INSTANCE, L.ROLE, L.USER} - {L.HUB_USER}
    assert request.labels[L.HUB_USER] == who.name
    assert all(f.path.startswith(("/run/", "/tmp/")) and f.mode <= 0o777 for f in request.files)
    assert "privileged" not in body
    assert "uid" not in body
    assert "mounts" not in body


@settings(max_examples=3000, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(body=container_bodies(), who=st.sampled_from([ALICE, BOB, Identity("x", groups=("gpu",))]))
def test_fuzzed_container_requests_are_refused_or_within_policy(body: Any, who: Identity) -> None:
    assert_within_policy(body, who)


PATHS = st.sampled_from(
    [
        "docker-env.toml",
        "requirements.txt",
        "sub/dir/f.txt",
        "../x",
        ".git/config",
        "/etc/x",
        "a//b",
        "a/./b",
        ".dockerignore",
        "x\\y",
        "a/../../b",
        "Dockerfile",
        "é.txt",
    ]
)


@st.composite
def build_bodies(draw: st.DrawFn) -> Any:
    """Valid build bodies with a few fields replaced, dropped or added; sometimes anything."""
    if draw(st.integers(0, 9)) == 0:
        return draw(json_value)
    body: dict[str, Any] = {
        "name": "demo",
        "files": {"docker-env.toml": 'pip = ["six"]\n', "requirements.txt": "six\n"},
        "options": {"no_cache": False},
    }
    for _ in range(draw(st.integers(0, 2))):
        key = draw(st.sampled_from(["name", "files", "options", "shared", "pull", "uid"]))
        if draw(st.booleans()):
            body.pop(key, None)
        elif key == "files":
            body[key] = draw(st.dictionaries(PATHS | st.text(max_size=20), st.text(), max_size=3))
        elif key == "options":
            options = st.sampled_from(["no_cache", "from_lock", "pull", "x"])
            body[key] = draw(st.dictionaries(options, json_value, max_size=2))
        elif key == "name":
            names = ["a.b-c_1", "Demo", "-x", "", "a/../../x", "demo\n", "demo/x", "a" * 70]
            body[key] = draw(st.sampled_from(names) | json_value)
        else:
            body[key] = draw(json_value)
    return body


@settings(max_examples=1500, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(body=build_bodies())
def test_fuzzed_build_requests_are_refused_or_within_policy(body: Any) -> None:
    intent = attempt(decide_build, body, ALICE, POLICY)
    if isinstance(intent, Refused):
        assert intent.status in (400, 403)
        assert intent.message
        return
    assert intent.namespace == "jde/u-alice"
    assert re.fullmatch(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*", intent.name)
    for path in intent.files:
        assert "\n" not in path
        assert not path.startswith("/")
        assert ".." not in path.split("/")
    assert sum(len(d) for d in intent.files.values()) <= POLICY.max_context_bytes
