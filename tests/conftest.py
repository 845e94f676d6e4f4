"""Shared fixtures. Everything that needs the engine uses the real one (see `make docker`)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from jupyter_docker_env.engine import LABEL_MANAGED, Engine, label

REPO = Path(__file__).resolve().parent.parent
pytest_plugins = ["pytest_jupyter.jupyter_server"]

# Every test resource carries this label value, so the session can sweep what it made.
JDE_TEST_LABEL = label("test")
CA_BUNDLE = next(
    (v for k in ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE") if (v := os.environ.get(k))),
    None,
)


def _docker_up() -> str:
    """Start the engine, registry and base image (idempotent); return the base reference."""
    if ref := os.environ.get("JDE_BASE_IMAGE"):
        return ref
    out = subprocess.run(
        ["bash", str(REPO / "scripts" / "docker-up.sh")],
        check=False, capture_output=True, text=True,
    )
    if out.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"`make docker` failed in CI:\n{out.stderr}")
        pytest.skip(f"no Docker engine here (`make docker` failed: {out.stderr.strip()[-300:]})")
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
    for c in engine.containers({JDE_TEST_LABEL: None}):
        engine.remove_container(c["Id"])
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


__all__ = ["CA_BUNDLE", "JDE_TEST_LABEL", "LABEL_MANAGED"]


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
    tag = "jde-test/kernel:latest"
    with tempfile.TemporaryDirectory(prefix="jde-kernel-image-") as ctx:
        ca_bundle = CA_BUNDLE or "/etc/ssl/certs/ca-certificates.crt"
        shutil.copy(ca_bundle, Path(ctx, "ca-certificates.crt"))
        Path(ctx, "Dockerfile").write_text(JDE_KERNEL_DOCKERFILE.format(base=jde_base_image))
        log: list[str] = []
        for msg in jde_engine.build(ctx, tag, labels={JDE_TEST_LABEL: "1", LABEL_MANAGED: "true"}):
            if "error" in msg:
                pytest.fail(f"building the kernel image failed: {msg['error']}\n{''.join(log)}")
            log.append(str(msg.get("stream", "")))
    return tag
