"""Safety faults put into the code one at a time: the suite must catch (kill) every one.

Each fault names a file, an exact snippet of it, what replaces the snippet, and the tests that
must fail once it is in. For each fault in turn this script writes the faulty file, runs only
those tests (so the whole list takes minutes, not the whole suite's time), puts the file back,
and says whether the tests caught it. At the end it prints the kill rate and exits non-zero when
a fault survived. A snippet that is no longer in its file (the code moved on) fails the whole
run before anything is changed, so the list cannot rot silently: update the fault.

    make mutants                              # all faults (with a baseline run first)
    .venv/bin/python scripts/mutants.py --list
    .venv/bin/python scripts/mutants.py --only hash --no-baseline

Add a fault when you add safety code: the smallest change that would undo the protection, and
the tests that prove it. Tests run against the real engine (JDE_BASE_IMAGE, as `make test`).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PKG = "jupyter_docker_env"
TIMEOUT = 900  # seconds for one fault's tests; more means they hang: caught, but say so


@dataclass(frozen=True)
class Fault:
    name: str
    file: str  # relative to the package
    original: str
    mutated: str
    tests: tuple[str, ...]


def fault(name: str, file: str, original: str, mutated: str, *tests: str) -> Fault:
    return Fault(name, file, original, mutated, tests)


# Tests that several faults share.
CONTRACT = "tests/test_contract.py"
KERNEL = (
    "tests/test_provisioner.py::test_the_container_is_labelled_limited_and_keeps_the_key_private"
)
NOTEBOOK = (
    "tests/test_provisioner.py::"
    "test_a_notebook_uses_workspace_files_by_relative_path_and_owns_what_it_writes"
)
AUDIT = "tests/test_confinement.py::test_a_hardened_container_passes_the_audit"
PUBLISHED = "tests/test_provisioner.py::test_kernel_ports_are_never_bound_on_other_host_interfaces"
ONE_CLAIM = (
    "tests/test_provisioner.py::"
    "test_a_claimed_container_serves_one_kernel_and_is_never_handed_out_again"
)
SERVE = (
    "tests/test_serving.py::test_serve_publishes_on_loopback_and_push_list_rm_take_serving_images"
)
LOCK = "tests/test_lock.py::test_the_lock_names_everything_the_kernel_can_import"
HARDENING = "tests/test_hardening.py"
BROKER_POLICY = "tests/test_broker_policy.py"
HOLDER = "containers/__init__.py"  # hardening(): the confinement of every container


def unauthorized(method: str) -> tuple[str, str]:
    """``@authorized`` taken off the handler method whose signature is ``method``."""
    return (
        f"    @web.authenticated\n    @authorized\n    async def {method}",
        f"    @web.authenticated\n    async def {method}",
    )


FAULTS: tuple[Fault, ...] = (
    # -- the five holes issue 17 found -------------------------------------------------------------
    fault(
        "kernel containers keep their capabilities (no cap_drop)",
        HOLDER,
        '    if uid != 0:\n        options["cap_drop"] = ["ALL"]\n',
        "",
        AUDIT,
        KERNEL,
    ),
    fault(
        "kernel containers may gain privileges (no no-new-privileges)",
        HOLDER,
        '"security_opt": ["no-new-privileges:true"],',
        '"security_opt": [],',
        AUDIT,
        KERNEL,
    ),
    fault(
        "PUT envs/{name} without @authorized",
        "server/handlers/environments.py",
        *unauthorized("put(self, name: str)"),
        CONTRACT,
    ),
    fault(
        "POST envs/{name}/builds|push|pull without @authorized",
        "server/handlers/environments.py",
        *unauthorized("post(self, name: str, action: str)"),
        CONTRACT,
    ),
    fault(
        "DELETE operations/{id} without @authorized",
        "server/handlers/environments.py",
        *unauthorized("delete(self, operation_id: str)"),
        CONTRACT,
    ),
    fault(
        "POST envs/{name}/kernels without @authorized",
        "server/handlers/environments.py",
        *unauthorized("post(self, name: str) -> None:\n        if not self.authorizer"),
        CONTRACT,
    ),
    fault(
        "the spec hash ignores the pip list",
        "environments/spec.py",
        '    for key in ("name", *RUN_KEYS):',
        '    for key in ("name", "pip", *RUN_KEYS):',
        "tests/test_hash.py",
    ),
    fault(
        "wait() leaves the kernel's container",
        "kernels/provisioner.py",
        "            await asyncio.sleep(0.05)\n        await self._remove_container()\n",
        "            await asyncio.sleep(0.05)\n",
        "tests/test_provisioner.py::test_wait_alone_collects_the_container_of_a_kernel_that_ended",
    ),
    fault(
        "cleanup() leaves the kernel's container",
        "kernels/provisioner.py",
        "    async def cleanup(self, restart: bool = False) -> None:\n"
        "        await self._remove_container()\n",
        "    async def cleanup(self, restart: bool = False) -> None:\n",
        "tests/test_provisioner.py::"
        "test_cleanup_alone_removes_the_container_of_a_kernel_never_waited_for",
    ),
    # -- kernels -----------------------------------------------------------------------------------
    fault(
        "kernel containers run as root",
        HOLDER,
        '"user": f"{uid}:{gid}",',
        '"user": "0:0",',
        AUDIT,
        KERNEL,
    ),
    fault(
        "a workspace of root's makes a root kernel without the admin's consent",
        "containers/placement.py",
        "    if uid == 0 and not allow_root:",
        "    if uid == 0 and False:",
        "tests/test_provisioner.py::test_a_kernel_never_runs_as_root_unless_an_admin_allows_it",
    ),
    fault(
        "the server's key leaks into the kernel's environment",
        "kernels/provisioner.py",
        '        out["TINI_KILL_PROCESS_GROUP"] = "1"\n        return out\n',
        '        out["TINI_KILL_PROCESS_GROUP"] = "1"\n'
        '        out["KERNEL_KEY"] = str(self.connection_info.get("key", ""))\n'
        "        return out\n",
        KERNEL,
    ),
    fault(
        "the connection file is readable by every user of the container",
        "kernels/provisioner.py",
        "ContainerFile(CONNECTION_FILE, connection_file, 0o400)",
        "ContainerFile(CONNECTION_FILE, connection_file, 0o444)",
        KERNEL,
    ),
    fault(
        "the server's variables enter the kernel (no allow-list)",
        "kernels/provisioner.py",
        "        out = allowed_env(\n"
        '            {k: v for k, v in env.items() if not k.startswith("KERNEL_")}, '
        "self.env_allowlist\n        )\n",
        '        out = {k: v for k, v in env.items() if not k.startswith("KERNEL_")}\n',
        "tests/test_provisioner.py::test_only_allow_listed_variables_enter_the_container",
    ),
    fault(
        "the workspace is mounted read-only",
        HOLDER,
        '"bind": request.workspace_mount or request.workspace,\n                    "mode": "rw",',
        '"bind": request.workspace_mount or request.workspace,\n                    "mode": "ro",',
        KERNEL,
        NOTEBOOK,
    ),
    fault(
        "the workspace is mounted at another path",
        HOLDER,
        '"bind": request.workspace_mount or request.workspace,',
        '"bind": request.workspace_mount or "/workspace",',
        KERNEL,
        NOTEBOOK,
    ),
    fault(
        "HOME is no fresh folder of the kernel's user",
        HOLDER,
        '"tmpfs": {request.home: f"exec,uid={uid},gid={gid},mode=0700"},',
        '"tmpfs": {},',
        KERNEL,
    ),
    fault(
        "no process limit",
        HOLDER,
        '    if request.pids_limit:\n        options["pids_limit"] = request.pids_limit\n',
        "",
        AUDIT,
        KERNEL,
    ),
    fault(
        "the memory a kernel asks for is not its limit",
        HOLDER,
        '        options["mem_limit"] = options["memswap_limit"] = request.mem_limit\n',
        "        pass\n",
        KERNEL,
    ),
    fault(
        "published kernel ports on every host interface",
        "containers/local.py",
        'create["ports"] = {f"{p}/tcp": ("127.0.0.1", p) for p in request.ports}',
        'create["ports"] = {f"{p}/tcp": ("0.0.0.0", p) for p in request.ports}',
        PUBLISHED,
    ),
    fault(
        "the network sandbox keeps its capabilities",
        "containers/local.py",
        '            read_only=True,\n            cap_drop=["ALL"],\n',
        "            read_only=True,\n",
        KERNEL,
    ),
    fault(
        "no orphan sweep when the server starts",
        "server/app.py",
        "        if self.sweep_on_start:",
        "        if False:",
        "tests/test_api.py::test_server_start_sweeps_kernel_containers_a_crash_left_behind",
    ),
    fault(
        "a sweep removes nothing",
        "containers/local.py",
        "        for container in found:\n",
        "        for container in found[:0]:\n",
        "tests/test_provisioner.py::"
        "test_a_crashed_server_leaves_containers_and_files_that_its_restart_sweeps",
    ),
    # -- warm pools --------------------------------------------------------------------------------
    fault(
        "a claimed container stays in its pool",
        "containers/pool.py",
        "            warm = pool.ready.popleft()\n",
        "            warm = pool.ready[0]\n            pool.ready.rotate(-1)\n",
        ONE_CLAIM,
    ),
    fault(
        "a claimed launcher keeps its claim pipe open",
        "containers/pool.py",
        '    with open(pipe, "rb") as fifo:  # blocks until the server opens the other end\n'
        "        data = fifo.read()\n",
        '    fifo = open(pipe, "rb")  # blocks until the server opens the other end\n'
        "    data = fifo.read()\n",
        ONE_CLAIM,
    ),
    fault(
        "a warm container serves a start in another workspace",
        "containers/pool.py",
        '    for per_claim in ("name", "working_dir", "warm"):',
        '    for per_claim in ("name", "working_dir", "warm", "workspace"):',
        "tests/test_warm_pools.py::test_a_warm_container_serves_only_starts_it_was_made_for",
    ),
    fault(
        "a claim is written through a link in place of the pipe",
        "containers/pool.py",
        "_CLAIM_OPEN = os.O_WRONLY | os.O_NONBLOCK | os.O_NOFOLLOW",
        "_CLAIM_OPEN = os.O_WRONLY | os.O_NONBLOCK",
        "tests/test_warm_pools.py::"
        "test_a_claim_is_never_written_through_a_link_put_in_place_of_the_pipe",
    ),
    # -- authorization beyond @authorized ----------------------------------------------------------
    fault(
        "a kernel start needs no execute permission",
        "server/handlers/environments.py",
        'if not self.authorizer.is_authorized(self, self.current_user, "execute", "kernels"):\n'
        '            raise ApiError(403, "you may not start kernels on this server")',
        'if False:\n            raise ApiError(403, "you may not start kernels on this server")',
        CONTRACT,
    ),
    fault(
        "a run needs no execute permission",
        "server/handlers/runs.py",
        'if not self.authorizer.is_authorized(self, self.current_user, "execute", "kernels"):',
        "if False:",
        CONTRACT,
    ),
    fault(
        "DELETE runs/{id} without @authorized",
        "server/handlers/runs.py",
        *unauthorized("delete(self, run_id: str)"),
        CONTRACT,
    ),
    fault(
        "POST serving/{id}/push without @authorized",
        "server/handlers/serving.py",
        *unauthorized("post(self, image_id: str)"),
        CONTRACT,
    ),
    fault(
        "reading a notebook's record needs no read permission on contents",
        "server/handlers/notebooks.py",
        'if not self.authorizer.is_authorized(self, self.current_user, "read", "contents"):',
        "if False:",
        CONTRACT,
    ),
    # -- images, locks, logs -----------------------------------------------------------------------
    fault(
        "an empty lock",
        "environments/lock.py",
        "        pip=tuple(pip),\n",
        "        pip=(),\n",
        LOCK,
    ),
    fault(
        "a build gives up :latest before it succeeded",
        "environments/images.py",
        "        image_id = self._run_build(plan, options, builder, op, spec)\n",
        "        self.engine.remove_image(self.latest_ref(plan.spec.name))\n"
        "        image_id = self._run_build(plan, options, builder, op, spec)\n",
        "tests/test_builds.py::test_spec_builds_and_the_image_matches_its_lock",
    ),
    fault(
        "an operation's log ignores the offset asked for",
        "operations.py",
        "        log = self.log[offset:]\n",
        "        log = self.log\n",
        "tests/test_api.py::test_build_followed_by_a_second_client_and_kernel_appears",
    ),
    fault(
        "a run's log ignores the offset asked for",
        "runs/store.py",
        "                f.seek(offset)\n",
        "                f.seek(0)\n",
        "tests/test_runs.py::test_the_log_reads_whole_lines_from_an_offset",
    ),
    fault(
        "the inspect container (the lock's) has a network",
        "engine.py",
        "            network_disabled=True,\n            read_only=True,\n",
        "            read_only=True,\n",
        LOCK,
    ),
    fault(
        "the inspect container (the lock's) runs as root",
        "engine.py",
        '            user="65534:65534",\n            network_disabled=True,\n',
        '            user="0:0",\n            network_disabled=True,\n',
        LOCK,
    ),
    # -- files of environment folders (environments/files.py) --------------------------------------
    fault(
        "reads follow a link",
        "environments/files.py",
        "_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC",
        "_READ = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC",
        f"{HARDENING}::test_reads_never_follow_a_link_or_hang_on_a_fifo",
    ),
    fault(
        "folders are reached through links",
        "environments/files.py",
        '_DIR = getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC',
        '_DIR = getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY | os.O_CLOEXEC',
        f"{HARDENING}::test_reads_never_follow_a_link_or_hang_on_a_fifo",
    ),
    fault(
        "as root the server reads what the folder's owner could not",
        "environments/files.py",
        "    if owner.st_uid == 0 or st.st_uid == owner.st_uid:\n        return True\n",
        "    return True\n",
        f"{HARDENING}::test_as_root_the_server_reads_only_what_the_owner_could",
    ),
    fault(
        "files written as root stay root's",
        "environments/files.py",
        "                if _as_root():\n"
        "                    os.fchown(out, owner.st_uid, owner.st_gid)\n",
        "",
        f"{HARDENING}::test_writes_belong_to_the_folder_owner_and_replace_links",
    ),
    # -- specs and restores ------------------------------------------------------------------------
    fault(
        "control characters pass the spec checks",
        "environments/spec.py",
        '_FORBIDDEN = ("Cc", "Cs", "Zl", "Zp")',
        '_FORBIDDEN = ("Cs", "Zl", "Zp")',
        f"{HARDENING}::test_no_value_can_start_a_dockerfile_instruction_or_an_option",
    ),
    fault(
        "a restore skips the base allow-list",
        "notebooks/restore.py",
        "    check_base_allowed(spec, list(settings.allowed_bases))\n",
        "",
        "tests/test_notebooks.py::test_recreating_checks_the_record_like_any_spec_and_more",
    ),
    fault(
        "a restore skips a recorded Dockerfile's FROM check",
        "notebooks/restore.py",
        "    if not allowed:\n        return\n    stages: set[str] = set()\n",
        "    if allowed:\n        return\n    stages: set[str] = set()\n",
        "tests/test_notebooks.py::test_recreating_checks_the_record_like_any_spec_and_more",
    ),
    # -- serving and runs --------------------------------------------------------------------------
    fault(
        "the serving container runs as root",
        "serving/manager.py",
        "            uid=dockerfile.UID,\n            gid=dockerfile.UID,\n",
        "            uid=0,\n            gid=0,\n",
        SERVE,
    ),
    fault(
        "the serving image's user is root",
        "serving/dockerfile.py",
        '        f"USER {UID}:{UID}\\n",',
        '        "USER root\\n",',
        "tests/test_serving.py::"
        "test_a_serving_image_is_the_runtime_without_the_kernel_and_runs_unprivileged",
    ),
    fault(
        "the serving container's root file system is writable",
        "serving/manager.py",
        "            read_only=True,\n            ports=",
        "            read_only=False,\n            ports=",
        SERVE,
    ),
    fault(
        "the serving container is published on every host interface",
        "serving/manager.py",
        'ports={f"{dockerfile.PORT}/tcp": ("127.0.0.1", port or None)},',
        'ports={f"{dockerfile.PORT}/tcp": ("0.0.0.0", port or None)},',
        SERVE,
    ),
    fault(
        "runs run as root",
        "runs/manager.py",
        "            uid=uid,\n            gid=gid,\n            instance_id=self.instance_id,\n",
        "            uid=0,\n            gid=0,\n            instance_id=self.instance_id,\n",
        "tests/test_runs.py::test_a_script_run_writes_its_model_into_the_workspace",
    ),
    # -- the launch broker (a shared hub: the only holder of the Docker socket) ------------------
    fault(
        "broker: a uid of 0 in the administrator's user mapping is accepted",
        "broker/policy.py",
        'if "0" in text and not text.strip("0+- \\t"):',
        "if False:",
        BROKER_POLICY,
    ),
    fault(
        "broker: a user may start another user's images",
        "broker/policy.py",
        "if in_namespace(value, policy.namespace(who)) or in_namespace(value, policy.shared):",
        "if True:",
        BROKER_POLICY,
        "tests/test_broker.py::test_bob_cannot_run_alices_environment",
    ),
    fault(
        "broker: any base image may be built on (no allow-list)",
        "broker/policy.py",
        "return ref == self.default_base or base_allowed(ref, self.allowed_bases)",
        "return True",
        BROKER_POLICY,
    ),
    fault(
        "broker: a raw Docker key such as privileged is passed over, not refused",
        "broker/policy.py",
        "            if key in FORBIDDEN:\n                raise denied(",
        "            if key in ():\n                raise denied(",
        BROKER_POLICY,
    ),
    fault(
        "broker: more memory than the user's limit is granted",
        "broker/policy.py",
        "if memory > limits.memory:",
        "if False:",
        BROKER_POLICY,
    ),
    fault(
        "broker: every user's kernels share one network",
        "broker/policy.py",
        'return f"{self.network_prefix}-{user_key(who.name)}"',
        'return f"{self.network_prefix}-everyone"',
        BROKER_POLICY,
        "tests/test_broker.py::test_a_kernel_gets_its_ports_on_the_users_network",
    ),
    fault(
        "broker: a user reaches another user's containers by id",
        "broker/service.py",
        "or (labels[L.HUB_USER] != who.name and not self.policy.is_admin(who))",
        "or False",
        "tests/test_broker.py::test_no_operation_lets_one_user_reach_anothers_builds_images_or_containers",
    ),
    fault(
        "broker: a token that is no hub user's (a service's) is taken as a user",
        "broker/identity.py",
        'if whoami.get("kind") != "user" or not isinstance(whoami.get("name"), str):',
        'if not isinstance(whoami.get("name"), str):',
        "tests/test_broker.py::test_callers_are_identified_by_their_hub_token",
    ),
)


class RotError(Exception):
    """A fault's snippet is not (exactly once) in its file."""


def check(faults: tuple[Fault, ...]) -> None:
    """Every snippet is in its file exactly once, and changes it; RotError naming those not."""
    rotten = []
    for f in faults:
        text = (REPO / PKG / f.file).read_text()
        count = text.count(f.original)
        if count != 1 or f.original == f.mutated:
            rotten.append(f"  {f.name}: {PKG}/{f.file} holds its snippet {count} times")
        rotten += [f"  {f.name}: no test {t}" for t in f.tests if not _exists(t)]
    if rotten:
        raise RotError(
            "These faults no longer match the code (if a file was left mutated by an interrupted "
            "run, `git checkout` it); update them in scripts/mutants.py:\n" + "\n".join(rotten)
        )


def _exists(test: str) -> bool:
    """The test file exists, and the test function it names."""
    path, _, name = test.partition("::")
    if not (REPO / path).is_file():
        return False
    text = (REPO / path).read_text()
    return not name or f"def {name}(" in text


@contextlib.contextmanager
def applied(f: Fault) -> Iterator[None]:
    path = REPO / PKG / f.file
    original = path.read_text()
    path.write_text(original.replace(f.original, f.mutated, 1))
    _forget_bytecode(path)
    try:
        yield
    finally:
        path.write_text(original)
        _forget_bytecode(path)


def _forget_bytecode(path: Path) -> None:
    """Python trusts a cached module whose source has the same size and second: never here."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(importlib.util.cache_from_source(str(path)))


def run_tests(tests: tuple[str, ...]) -> tuple[str, float, str]:
    """("passed" | "failed" | "timeout" | "error", seconds, output tail)."""
    start = time.monotonic()
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    proc = subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        out, _ = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        return "timeout", time.monotonic() - start, out[-3000:]
    outcome = {0: "passed", 1: "failed"}.get(proc.returncode, "error")
    return outcome, time.monotonic() - start, out[-3000:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", action="store_true", help="list the faults and their tests")
    parser.add_argument("--only", default="", help="run only faults whose name holds this text")
    parser.add_argument(
        "--no-baseline", action="store_true", help="skip the run of the tests without any fault"
    )
    args = parser.parse_args(argv)
    faults = tuple(f for f in FAULTS if args.only.lower() in f.name.lower())
    check(faults)
    if args.list:
        for f in faults:
            print(f"{f.name}\n    {PKG}/{f.file}\n    " + "\n    ".join(f.tests))
        return 0
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # restores the file, as Ctrl-C
    if not args.no_baseline:
        tests = tuple(dict.fromkeys(t for f in faults for t in f.tests))
        print(f"baseline: {len(tests)} tests without any fault ...", flush=True)
        outcome, seconds, out = run_tests(tests)
        if outcome != "passed":
            print(out)
            print(f"baseline {outcome} ({seconds:.0f} s): fix the tests before counting kills")
            return 2
        print(f"baseline passed ({seconds:.0f} s)", flush=True)
    width = max(len(f.name) for f in faults)
    results: list[tuple[Fault, str]] = []
    for f in faults:
        with applied(f):
            outcome, seconds, out = run_tests(f.tests)
        verdict = {"failed": "killed", "timeout": "killed (timed out)", "passed": "SURVIVED"}.get(
            outcome, "ERROR"
        )
        results.append((f, verdict))
        print(f"{f.name:<{width}}  {verdict:<18} {seconds:6.1f} s", flush=True)
        if verdict in ("SURVIVED", "ERROR"):
            print("    " + out.strip().replace("\n", "\n    ")[-1500:], flush=True)
    killed = sum(v.startswith("killed") for _, v in results)
    print(f"\nkilled {killed} of {len(results)} faults ({100 * killed / len(results):.0f} %)")
    for f, verdict in results:
        if not verdict.startswith("killed"):
            print(f"  {verdict}: {f.name} ({PKG}/{f.file})")
    return 0 if killed == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
