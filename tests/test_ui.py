"""The panel in a real browser: Playwright (ui-tests/) drives a real JupyterLab on the engine."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import CA_BUNDLE, JDE_PREFIX, REPO

pytestmark = [pytest.mark.docker, pytest.mark.ui]
UI = REPO / "ui-tests"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def lab(
    jde_base_image: str, jde_tmp: Path, jde_open_registry: str
) -> Iterator[tuple[str, str, Path]]:
    """A JupyterLab on a fresh workspace holding hello.txt, sharing through a registry of its own.

    Yields (lab URL, token, workspace).
    """
    workspace = jde_tmp / "workspace"
    workspace.mkdir()
    (workspace / "hello.txt").write_text("hello from the workspace\n")
    if os.getuid() == 0:
        # Kernels never run as root: the workspace belongs to an ordinary user.
        subprocess.run(["chown", "-R", "1000:1000", str(workspace)], check=True)
    port, token = free_port(), secrets.token_hex(16)
    log = (jde_tmp / "lab.log").open("w")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            f"--port={port}",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.root_dir={workspace}",
            f"--IdentityProvider.token={token}",
            "--ServerApp.allow_root=True",
            f"--DockerEnvApp.default_base={jde_base_image}",
            f"--DockerEnvApp.ca_bundle={CA_BUNDLE or ''}",
            f"--DockerEnvApp.registry={jde_open_registry}",
            # A prefix of its own, so this run's "uitest" starts unbuilt whatever ran before.
            f"--DockerEnvApp.image_prefix={JDE_PREFIX}-ui-{secrets.token_hex(4)}",
            "--LabApp.news_url=",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "JUPYTER_PLATFORM_DIRS": "1"},
    )
    url = f"http://127.0.0.1:{port}/lab"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}")
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise AssertionError(
                        f"JupyterLab did not start: {(jde_tmp / 'lab.log').read_text()[-3000:]}"
                    ) from None
                time.sleep(0.3)
        yield url, token, workspace
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def run_playwright(lab: tuple[str, str, Path], log: Path, spec: str) -> None:
    """Run one spec of ui-tests/ against the lab; fail with its output and the server's log."""
    url, token, _workspace = lab
    npx = shutil.which("npx")
    assert npx, "node/npx is needed for the UI tests"
    result = subprocess.run(
        [npx, "playwright", "test", f"tests/{spec}"],
        cwd=UI,
        env={
            **os.environ,
            "JDE_LAB_URL": url,
            "JDE_LAB_TOKEN": token,
            "PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD": "1",
        },
        capture_output=True,
        text=True,
        timeout=900,
    )
    print(result.stdout[-5000:])
    assert result.returncode == 0, (
        result.stdout[-5000:] + result.stderr[-3000:] + log.read_text()[-3000:]
    )


def test_panel_main_path_in_a_real_browser(
    lab: tuple[str, str, Path], jde_tmp: Path, jde_engine: object
) -> None:
    run_playwright(lab, jde_tmp / "lab.log", "panel.spec.ts")
    for shot in (
        "panel-building.png",
        "panel-built.png",
        "panel-lock.png",
        "panel-shared.png",
        "panel-serving.png",
    ):
        assert (UI / "screenshots" / shot).is_file()


def test_a_notebook_runs_with_parameters_from_the_panel_in_a_real_browser(
    lab: tuple[str, str, Path], jde_tmp: Path, jde_engine: object
) -> None:
    run_playwright(lab, jde_tmp / "lab.log", "runs.spec.ts")
    assert (UI / "screenshots" / "panel-runs.png").is_file()


def test_a_notebook_recreates_its_missing_environment_in_a_real_browser(
    lab: tuple[str, str, Path], jde_tmp: Path, jde_engine: object
) -> None:
    run_playwright(lab, jde_tmp / "lab.log", "notebook-env.spec.ts")
    for shot in ("notebook-env-missing.png", "notebook-env-restored.png"):
        assert (UI / "screenshots" / shot).is_file()
