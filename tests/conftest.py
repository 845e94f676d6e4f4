"""Shared fixtures. Everything that needs the engine uses the real one (see `make docker`)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest

from jupyter_docker_env.config import ca_bundle_from_env
from jupyter_docker_env.engine import Engine
from jupyter_docker_env.labels import MANAGED as LABEL_MANAGED
from jupyter_docker_env.labels import label

REPO = Path(__file__).resolve().parent.parent
pytest_plugins = ["pytest_jupyter.jupyter_server"]

# Every container the extension creates, in this process and in every Python process the tests
# start, is checked for confinement where it is created (tests/audit/jde_confinement.py).
AUDIT = REPO / "tests" / "audit"
sys.path.insert(0, str(AUDIT))
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(AUDIT), os.environ.get("PYTHONPATH")]))
import jde_confinement  # noqa: E402

jde_confinement.install(Engine)
JDE_FIXTURE_LABEL = jde_confinement.FIXTURE
# The one check, from inside, of a running container of each kind (see jde_confinement).
check_inside = jde_confinement.check_inside

# The image prefix of every test environment. Test runs side by side on one engine (e.g. in
# two checkouts) set their own, so neither sweeps the other's images.
JDE_PREFIX = os.environ.get("JDE_TEST_PREFIX", "jde-test")
# Every test resource carries this label with this session's id, so the session sweeps what it
# made and nothing else.
JDE_TEST_LABEL = label("test")
JDE_SESSION = uuid.uuid4().hex[:12]
JDE_TEST_LABELS = {JDE_TEST_LABEL: JDE_SESSION}
CA_BUNDLE = ca_bundle_from_env() or None


#: In CI (`.ci/run` sets CI=true) `make test` must have installed and started everything, so
#: nothing a test needs may be missing: no skip can hide a broken engine start there.
JDE_IN_CI = os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def jde_cannot(message: str) -> NoReturn:
    """What this machine lacks for a test: a skip on a developer's machine, a failure in CI."""
    if JDE_IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def _docker_up() -> str:
    """Start the engine, registry and base image (idempotent); return the base reference."""
    if ref := os.environ.get("JDE_BASE_IMAGE"):
        return ref
    out = subprocess.run(
        ["bash", str(REPO / "scripts" / "docker-up.sh")],
        check=False,
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        jde_cannot(f"no Docker engine here (`make docker` failed):\n{out.stderr.strip()[-2000:]}")
    return out.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def jde_base_image() -> str:
    ref = _docker_up()
    os.environ["JDE_BASE_IMAGE"] = ref
    return ref


@pytest.fixture(scope="session")
def jde_registry(jde_base_image: str) -> str:
    """host:port of the loopback registry that serves the base image."""
    return jde_base_image.split("/", 1)[0]


@pytest.fixture(scope="session")
def jde_engine(jde_base_image: str) -> Iterator[Engine]:
    engine = Engine()
    yield engine
    for c in engine.containers(JDE_TEST_LABELS):
        engine.remove_container(c["Id"])
    # Each run builds new content hashes; keep only each test environment's latest image, whose
    # layers serve the next run from the cache.
    for image in engine.images({LABEL_MANAGED: "true"}):
        for ref in image.get("RepoTags") or []:
            per_run = ref.startswith(f"{JDE_PREFIX}-ui-")
            if per_run or (ref.startswith(f"{JDE_PREFIX}/") and not ref.endswith(":latest")):
                engine.remove_image(ref, force=True)
    engine.close()


@pytest.fixture
def jde_tmp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A scratch folder that a non-root kernel can read (pytest's tmp dirs are 0700)."""
    path = Path(tempfile.mkdtemp(prefix="jde-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Engine tests are slow: run the quick unit tests first so a failure shows early.
    items.sort(key=lambda it: 1 if it.get_closest_marker("docker") else 0)


def jde_build_image(engine: Engine, dockerfile: str, tag: str, files: dict[str, Path]) -> str:
    """Build a test image from Dockerfile text (and files copied into the context); tag it."""
    with tempfile.TemporaryDirectory(prefix="jde-test-image-") as ctx:
        for name, source in files.items():
            shutil.copy(source, Path(ctx, name))
        Path(ctx, "Dockerfile").write_text(
            dockerfile + f"\nLABEL {JDE_TEST_LABEL}=1 {LABEL_MANAGED}=true\n"
        )
        log: list[str] = []
        image_id = None
        for event in engine.build(ctx, str(Path(ctx, "Dockerfile")), "legacy"):
            if event.kind == "error":
                pytest.fail(f"building {tag} failed: {event.text}\n" + "\n".join(log))
            if event.kind == "image":
                image_id = event.text
            log.append(event.text)
    assert image_id, log
    repo, _, name = tag.rpartition(":")
    engine.tag(image_id, repo, name)
    return tag


__all__ = [
    "CA_BUNDLE",
    "JDE_FIXTURE_LABEL",
    "JDE_PREFIX",
    "JDE_SESSION",
    "JDE_TEST_LABEL",
    "JDE_TEST_LABELS",
    "check_inside",
]


# -- kernel image (appended for the provisioner tests) -------------------------------------------
JDE_KERNEL_DOCKERFILE = """\
FROM {base}
COPY ca-certificates.crt /tmp/jde-ca.crt
RUN PIP_CERT=/tmp/jde-ca.crt python3 -m venv --system-site-packages /opt/venv \\
 && PIP_CERT=/tmp/jde-ca.crt /opt/venv/bin/pip install --no-cache-dir ipykernel \\
 && rm /tmp/jde-ca.crt
ENV PATH=/opt/venv/bin:$PATH VIRTUAL_ENV=/opt/venv
"""


@pytest.fixture(scope="session")
def jde_kernel_image(jde_base_image: str, jde_engine: Engine) -> str:
    """A tiny image with ipykernel in /opt/venv on PATH, as the real builder makes them.

    Built once per session; the engine's layer cache makes later sessions near instant.
    """
    ca_bundle = Path(CA_BUNDLE or "/etc/ssl/certs/ca-certificates.crt")
    return jde_build_image(
        jde_engine,
        JDE_KERNEL_DOCKERFILE.format(base=jde_base_image),
        f"{JDE_PREFIX}/kernel:latest",
        {"ca-certificates.crt": ca_bundle},
    )


# -- loopback registries (appended for the registry and CLI tests) -------------------------------
# docker-registry reads only bcrypt htpasswd entries. A fixed hash of the test password (cost 4,
# the minimum, so each authenticated request stays cheap) keeps the tests free of htpasswd and
# bcrypt tools.
JDE_REGISTRY_USER = "jde-tester"
JDE_REGISTRY_PASSWORD = "jde-test-password"
_JDE_REGISTRY_HTPASSWD = (
    f"{JDE_REGISTRY_USER}:$2b$04$e6s169bF1B/RJcqe8ZPy0eEFj9m2W.kWJXYdSB3E4HsArO7Stj7nG\n"
)
JDE_REGISTRY_NAMESPACE = "jde-test"


def jde_free_port() -> int:
    """A loopback TCP port nothing listens on (right now)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _registry_answers(host: str) -> bool:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://{host}/v2/", timeout=1):
            return True
    except urllib.error.HTTPError as exc:
        return exc.code == 401  # up, and asking for credentials
    except OSError:
        return False


def _serve_registry(engine: Engine, htpasswd: bool) -> Iterator[str]:
    """Debian's docker-registry on a free loopback port with its own storage.

    Yields the `registry` setting (127.0.0.1:PORT/jde-test). Afterwards the registry stops, its
    storage goes, and the local tags that point at it are removed.
    """
    import time

    binary = shutil.which("docker-registry")
    if binary is None:
        jde_cannot("Debian's docker-registry is not installed (`make docker` installs it)")
    root = Path(tempfile.mkdtemp(prefix="jde-test-registry-"))
    host = f"127.0.0.1:{jde_free_port()}"
    auth = ""
    if htpasswd:
        (root / "htpasswd").write_text(_JDE_REGISTRY_HTPASSWD)
        auth = f"auth:\n  htpasswd: {{realm: jde-test, path: {root / 'htpasswd'}}}\n"
    (root / "config.yml").write_text(
        "version: 0.1\nlog: {level: error}\n"
        f"storage:\n  filesystem: {{rootdirectory: {root / 'data'}}}\n  delete: {{enabled: true}}\n"
        f"http:\n  addr: {host}\n  secret: jde-test\n{auth}"
    )
    log = (root / "registry.log").open("wb")
    proc = subprocess.Popen(
        [binary, "serve", str(root / "config.yml")], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 15
        while not _registry_answers(host):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"docker-registry did not start: {(root / 'registry.log').read_text()}")
            time.sleep(0.1)
        yield f"{host}/{JDE_REGISTRY_NAMESPACE}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()
        for image in engine.images({LABEL_MANAGED: "true"}):
            for tag in image.get("RepoTags") or []:
                if tag.startswith(f"{host}/"):
                    engine.remove_image(tag)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def jde_open_registry(jde_engine: Engine) -> Iterator[str]:
    """A registry without auth, as the `registry` setting: 127.0.0.1:PORT/jde-test."""
    yield from _serve_registry(jde_engine, htpasswd=False)


@pytest.fixture(scope="session")
def jde_auth_registry(jde_engine: Engine) -> Iterator[str]:
    """A registry with basic auth (JDE_REGISTRY_USER / JDE_REGISTRY_PASSWORD), as a setting."""
    yield from _serve_registry(jde_engine, htpasswd=True)


# -- an engine that can go away (appended for the kernel tests) ---------------------------------
class EngineProxy:
    """A Docker socket that forwards to the real engine until :meth:`stop`: what the server sees
    of an engine that goes down, without stopping the engine other tests share."""

    def __init__(self, path: Path) -> None:
        import socket
        import threading

        host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        assert host.startswith("unix://"), "the engine proxy forwards to a local socket"
        self.target = host.removeprefix("unix://")
        self.path = path
        self.url = f"unix://{path}"
        self._socket = socket.socket(socket.AF_UNIX)
        self._socket.bind(str(path))
        self._socket.listen(16)
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket
        import threading

        while True:
            try:
                client, _ = self._socket.accept()
            except OSError:
                return  # stopped
            engine = socket.socket(socket.AF_UNIX)
            engine.connect(self.target)
            with self._lock:
                self._open += [client, engine]
            for src, dst in ((client, engine), (engine, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: Any, dst: Any) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(2)

    def stop(self) -> None:
        """The engine stops answering: no new connections, open ones are cut."""
        with contextlib.suppress(OSError):
            self._socket.close()
        self.path.unlink(missing_ok=True)
        with self._lock:
            for s in self._open:
                with contextlib.suppress(OSError):
                    s.close()
            self._open.clear()


@pytest.fixture
def jde_engine_proxy() -> Iterator[EngineProxy]:
    """A proxy of the engine's socket, in a folder of its own (never in a kernel's workspace)."""
    folder = Path(tempfile.mkdtemp(prefix="jde-test-engine-"))
    proxy = EngineProxy(folder / "docker.sock")
    yield proxy
    proxy.stop()
    shutil.rmtree(folder, ignore_errors=True)


def jde_kernel_spec_json(image: str, env_name: str, /, **config: Any) -> dict[str, Any]:
    """A kernel.json as the server extension writes it (empty argv), test-labelled; ``config``
    adds to (or replaces) its provisioner config."""
    return {
        "argv": [],
        "display_name": f"{env_name} (test env)",
        "language": "python",
        "metadata": {
            "kernel_provisioner": {
                "provisioner_name": "docker-env-provisioner",
                "config": {
                    "image": image,
                    "env_name": env_name,
                    "extra_labels": {JDE_TEST_LABEL: JDE_SESSION},
                    **config,
                },
            }
        },
    }
