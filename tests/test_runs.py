"""Training runs against the real engine: the command line as a user runs it, the REST API
through a real server, and a server killed with -9 while runs run.

Every run's container carries this session's test label (through the kernels' extra_labels,
which runs follow) and is swept with the session; every environment here shares one spec, so its
image is built once and reused.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import pickle
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nbformat
import papermill
import pytest
from papermill.translators import PythonTranslator

from jupyter_docker_env.engine import Engine
from jupyter_docker_env.labels import RUN_ID
from jupyter_docker_env.models import FieldError, RunRequest
from jupyter_docker_env.runs import executor
from jupyter_docker_env.runs.store import RunStore

from .conftest import (
    CA_BUNDLE,
    JDE_PREFIX,
    JDE_SESSION,
    JDE_TEST_LABEL,
    check_inside,
    jde_free_port,
)
from .test_api import API, check_schema

CLI = str(Path(sys.executable).parent / "jupyter-docker-env")
ENV = "environments/runs-env"
FINAL = ("succeeded", "failed", "cancelled", "timed_out")
RUN_KEYS = {"id", "env", "state", "exit_code", "started", "finished", "output", "log", "attempt"}
docker = pytest.mark.docker


def settings(base_image: str) -> str:
    """jupyter_server_config.py for the CLI and the servers started here."""
    return (
        f"c.DockerEnvApp.image_prefix = {JDE_PREFIX!r}\n"
        f"c.DockerEnvApp.default_base = {base_image!r}\n"
        f"c.DockerEnvApp.ca_bundle = {CA_BUNDLE or ''!r}\n"
        f"c.DockerEnvProvisioner.extra_labels = {{{JDE_TEST_LABEL!r}: {JDE_SESSION!r}}}\n"
        "c.RunManager.stop_timeout = 3\n"
        "c.RunManager.retry_delay = 0.2\n"
        "c.RunManager.poll_interval = 0.2\n"
    )


def write_notebook(path: Path, *cells: tuple[str, str], tags: dict[int, list[str]]) -> None:
    """A notebook of (kind, source) cells; ``tags`` by cell index."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    for i, (kind, source) in enumerate(cells):
        cell = (
            nbformat.v4.new_code_cell(source)
            if kind == "code"
            else nbformat.v4.new_markdown_cell(source)
        )
        if i in tags:
            cell.metadata["tags"] = tags[i]
        nb.cells.append(cell)
    nbformat.write(nb, path)


def own(path: Path) -> None:
    """Give the workspace to an ordinary user: runs never run as root. (A file that a server
    replaces meanwhile is skipped: its new one is the server's to own.)"""
    if os.geteuid() != 0:
        return
    for folder, dirs, files in os.walk(path):
        for name in [folder, *(os.path.join(folder, n) for n in dirs + files)]:
            with contextlib.suppress(FileNotFoundError):
                os.chown(name, 1000, 1000, follow_symlinks=False)


@pytest.fixture
def jde_workspace(jde_tmp: Path, jde_base_image: str) -> Path:
    """A workspace with the test environment (the base image and ipykernel) and a config."""
    ws = jde_tmp / "ws"
    (ws / ENV).mkdir(parents=True)
    (ws / ENV / "docker-env.toml").write_text(f'name = "runs-env"\nbase = "{jde_base_image}"\n')
    config = jde_tmp / "home" / "jupyter-config"
    config.mkdir(parents=True)
    (config / "jupyter_server_config.py").write_text(settings(jde_base_image))
    return ws


Cli = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def jde_cli(jde_workspace: Path, jde_tmp: Path, jde_engine: Engine) -> Cli:
    """Run `jupyter-docker-env ARGS` in the workspace, as a user does (ok=False: may fail)."""
    home = jde_tmp / "home"
    env = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(home / "jupyter-config"),
        "JUPYTER_DATA_DIR": str(home / "jupyter-data"),
        "JUPYTER_RUNTIME_DIR": str(home / "jupyter-runtime"),
    }

    def run(
        *args: str, ok: bool = True, cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        own(jde_workspace)
        proc = subprocess.run(
            [CLI, *args],
            cwd=cwd or jde_workspace,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if ok:
            assert proc.returncode == 0, f"`{' '.join(args)}` failed:\n{proc.stdout}\n{proc.stderr}"
        return proc

    return run


def as_json(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    data = json.loads(proc.stdout)
    assert data.keys() >= RUN_KEYS, data
    return data  # type: ignore[no-any-return]


def wait_for(predicate: Callable[[], Any], timeout: float = 60, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what or predicate}")


def containers_of(engine: Engine, run_id: str) -> list[dict[str, Any]]:
    return engine.containers({RUN_ID: run_id})


# -- records, parameters and logs (no engine) --------------------------------------------------
def test_a_run_request_names_the_field_at_fault() -> None:
    for body, field in (
        ({"command": ["x"]}, "env"),
        ({"env": "e"}, "command"),
        ({"env": "e", "command": ["x"], "notebook": "a.ipynb"}, "notebook"),
        ({"env": "e", "notebook": "a.txt"}, "notebook"),
        ({"env": "e", "command": "python x.py"}, "command"),
        ({"env": "e", "command": ["x"], "parameters": {"a": 1}}, "parameters"),
        ({"env": "e", "notebook": "a.ipynb", "parameters": {"not valid": 1}}, "parameters"),
        ({"env": "e", "notebook": "a.ipynb", "output": "b.txt"}, "output"),
        ({"env": "e", "command": ["x"], "timeout": -1}, "timeout"),
        ({"env": "e", "command": ["x"], "retries": 1.5}, "retries"),
        ({"env": "e", "command": ["x"], "memory": "lots"}, "memory"),
        ({"env": "e", "command": ["x"], "cpus": 0}, "cpus"),
        ({"env": "e", "command": ["x"], "colour": "red"}, "colour"),
    ):
        with pytest.raises(FieldError) as err:
            RunRequest.from_json(body)
        assert err.value.field == field, body
    request = RunRequest.from_json(
        {"env": "e", "notebook": "a.ipynb", "parameters": {"a": 1}, "memory": "1g", "retries": 2}
    )
    assert (request.kind, request.memory, request.retries) == ("notebook", "1g", 2)


def test_parameters_are_written_as_papermill_writes_them() -> None:
    values = {
        "text": 'say "hi"\n\tnow',
        "count": 3,
        "rate": 0.25,
        "big": 1e300,
        "flag": True,
        "nothing": None,
        "nan": float("nan"),
        "inf": float("-inf"),
        "items": [1, "two", [3.5, None]],
        "mapping": {"a": 1, "b": {"c": False}},
        "unicode": "café ☕",
    }
    for value in values.values():
        assert executor.py_value(value) == PythonTranslator.translate(value), value
    assert executor.parameters_source(values) == PythonTranslator.codify(values)


def test_command_line_parameters_follow_papermill() -> None:
    from papermill.cli import _resolve_type

    from jupyter_docker_env.cli.runs import parameter_value

    for text in ("True", "False", "None", "3", "-3", "0.5", "1e3", "abc", "3abc", "", "nan"):
        assert parameter_value(text) == _resolve_type(text) or text == "nan", text


def test_parameters_come_in_papermills_order(tmp_path: Path) -> None:
    from jupyter_docker_env.cli.runs import parameters_for

    (tmp_path / "params.yaml").write_text("a: x\nb: 1\nwhen: 2024-01-02\n")
    args = argparse.Namespace(
        parameters_file=[str(tmp_path / "params.yaml")],
        parameters_yaml=["b: 2\nc: [1, 2]"],
        parameter=[["c", "3"], ["e", "None"]],
        parameter_raw=[["d", "4"]],
    )
    expected = {"a": "x", "b": 2, "when": "2024-01-02", "c": 3, "e": None, "d": "4"}
    assert parameters_for(args) == expected
    args.parameters_yaml = ["- not a mapping"]
    with pytest.raises(FieldError) as err:
        parameters_for(args)
    assert err.value.field == "parameters"


def test_the_log_reads_whole_lines_from_an_offset(tmp_path: Path) -> None:
    store = RunStore(tmp_path, ".docker-env/runs")
    store.root.mkdir(parents=True)
    (store.root / "0123456789ab").mkdir()
    log = store.log_path("0123456789ab")
    log.write_bytes(b"one\n\x1b[31mred\x1b[0m\nprogress 10%\rprogress 90%\rprogress 100%\npart")
    lines, offset = store.read_log("0123456789ab", 0, final=False)
    assert lines == ["one", "red", "progress 100%"]
    assert store.read_log("0123456789ab", offset, final=False) == ([], offset)
    with log.open("ab") as f:
        f.write(b"ial line\n")
    lines, end = store.read_log("0123456789ab", offset, final=False)
    assert lines == ["partial line"]
    assert store.read_log("0123456789ab", end, final=True) == ([], end)


def test_one_process_records_how_a_run_ended(tmp_path: Path) -> None:
    store = RunStore(tmp_path, ".docker-env/runs")
    (store.root / "0123456789ab").mkdir(parents=True)
    alive = {"host:1": True, "host:2": True}
    # the first to ask records it; another waits while the first lives
    assert store.claim("0123456789ab", "host:1", alive.__getitem__)
    assert store.claim("0123456789ab", "host:1", alive.__getitem__)
    assert not store.claim("0123456789ab", "host:2", alive.__getitem__)
    # and takes over when it died on the way
    alive["host:1"] = False
    assert store.claim("0123456789ab", "host:2", alive.__getitem__)
    store.release("0123456789ab")
    assert store.claim("0123456789ab", "host:1", alive.__getitem__)


# -- the command line against the engine -------------------------------------------------------
TRAIN = """\
import os, pickle, sys
os.makedirs("models", exist_ok=True)
with open("models/model.pkl", "wb") as f:
    pickle.dump({"weights": [0.5, 1.5], "epochs": int(sys.argv[2])}, f)
print("trained as uid", os.getuid(), "in", os.getcwd())
"""


@docker
def test_a_script_run_writes_its_model_into_the_workspace(
    jde_cli: Cli, jde_workspace: Path, jde_engine: Engine
) -> None:
    (jde_workspace / "train.py").write_text(TRAIN)
    # When the user runs the script in an environment from the command line
    run = as_json(jde_cli("run", ENV, "--json", "--", "python", "train.py", "--epochs", "3"))
    # Then it succeeds and the model is in the jde_workspace, the user's file
    assert (run["state"], run["exit_code"], run["attempt"]) == ("succeeded", 0, 1)
    model = jde_workspace / "models" / "model.pkl"
    assert pickle.loads(model.read_bytes()) == {"weights": [0.5, 1.5], "epochs": 3}
    if os.geteuid() == 0:
        assert model.stat().st_uid == 1000
    log = Path(run["log"]).read_text()
    assert f"trained as uid {1000 if os.geteuid() == 0 else os.getuid()} in {jde_workspace}" in log
    assert run["finished"] >= run["started"] > 0
    # And the run is listed, its container gone, its record kept in the hidden runs folder
    listed = json.loads(jde_cli("runs", "--json").stdout)
    assert [r["id"] for r in listed] == [run["id"]]
    assert containers_of(jde_engine, run["id"]) == []
    assert (jde_workspace / ".docker-env" / "runs" / run["id"] / "run.json").is_file()
    shown = as_json(jde_cli("runs", "show", run["id"][:6], "--json"))
    assert shown["id"] == run["id"]
    assert shown["image"].startswith(f"{JDE_PREFIX}/runs-env:")
    assert "python train.py --epochs 3" in jde_cli("runs").stdout


@docker
def test_a_command_starts_in_the_folder_it_was_started_from(
    jde_cli: Cli, jde_workspace: Path
) -> None:
    (jde_workspace / "sub").mkdir()
    proc = jde_cli(
        "run",
        "../" + ENV,
        "--",
        "python",
        "-c",
        "import os; print(os.getcwd())",
        cwd=jde_workspace / "sub",
    )
    assert f"{jde_workspace / 'sub'}\n" in proc.stdout
    # the run belongs to the jde_workspace above (it holds the environments), not to the subfolder
    assert len(json.loads(jde_cli("runs", "--json").stdout)) == 1


NOTEBOOK_CELLS = (
    ("markdown", "# Training"),
    ("code", "alpha = 0.1\nname = 'nobody'\nflag = False"),
    ("code", "print('hello', name, alpha)\nimport sys\nprint('to stderr', file=sys.stderr)"),
    ("code", "alpha * 2"),
    ("code", "from IPython.display import HTML, display\ndisplay(HTML(f'<b>{name}</b>'))"),
)
PARAMETERS = {"alpha": 0.5, "name": "Ada", "flag": True}


def comparable(nb: dict[str, Any]) -> dict[str, Any]:
    """A notebook less what differs between any two executions: ids, times, paths, versions."""
    nb = json.loads(json.dumps(nb))
    for cell in nb["cells"]:
        cell.pop("id", None)
        meta = cell["metadata"]
        for key in ("papermill", "execution"):
            if key in meta:
                meta[key] = {k: v for k, v in meta[key].items() if "time" not in k and "." not in k}
                meta[key].pop("duration", None)
        outputs: list[dict[str, Any]] = []
        for out in cell.get("outputs", []):
            out.pop("metadata", None) if out.get("output_type") == "stream" else None
            if (
                out.get("output_type") == "stream"
                and outputs
                and outputs[-1].get("output_type") == "stream"
                and outputs[-1]["name"] == out["name"]
            ):
                outputs[-1]["text"] = "".join(outputs[-1]["text"]) + "".join(out["text"])
            else:
                outputs.append(out)
        if "outputs" in cell:
            cell["outputs"] = outputs
    pm = nb["metadata"]["papermill"]
    for key in ("start_time", "end_time", "duration", "output_path", "version", "input_path"):
        pm.pop(key)
    nb["metadata"].get("language_info", {}).pop("version", None)
    return nb


@docker
def test_a_notebook_run_injects_its_parameters_as_papermill_does(
    jde_cli: Cli, jde_workspace: Path, jde_tmp: Path
) -> None:
    write_notebook(jde_workspace / "train.ipynb", *NOTEBOOK_CELLS, tags={1: ["parameters"]})
    # When the notebook runs with parameters
    params = [arg for name, v in PARAMETERS.items() for arg in ("-p", name, str(v))]
    run = as_json(jde_cli("run", ENV, "train.ipynb", *params, "--json"))
    assert run["state"] == "succeeded"
    assert run["output"] == str(jde_workspace / "runs" / f"train-{run['id']}.ipynb")
    out = nbformat.read(run["output"], as_version=4)
    # Then the parameters are in a cell after the parameters cell, and the outputs are there
    assert out.cells[2].metadata.tags == ["injected-parameters"]
    assert out.cells[2].source == '# Parameters\nalpha = 0.5\nname = "Ada"\nflag = True\n'
    assert out.metadata.papermill.parameters == PARAMETERS
    assert "".join(o.text for o in out.cells[3].outputs if o.name == "stdout") == "hello Ada 0.5\n"
    assert out.cells[4].outputs[0].data["text/plain"] == "1.0"
    assert out.cells[5].outputs[0].data["text/html"] == "<b>Ada</b>"
    assert all(c.metadata.papermill.status == "completed" for c in out.cells)
    # And it is what papermill itself makes of the same notebook and parameters
    expected = jde_tmp / "papermill.ipynb"
    papermill.execute_notebook(
        str(jde_workspace / "train.ipynb"),
        str(expected),
        parameters=PARAMETERS,
        kernel_name="python3",
        progress_bar=False,
        cwd=str(jde_workspace),
    )
    assert comparable(out) == comparable(nbformat.read(expected, as_version=4))
    # And the log shows the cells' output as they ran
    log = Path(run["log"]).read_text()
    assert "Executing cell 4 of 5" in log
    assert "hello Ada 0.5" in log


@docker
def test_a_failing_notebook_reports_the_traceback_and_keeps_the_notebook(
    jde_cli: Cli, jde_workspace: Path, jde_tmp: Path
) -> None:
    cells = (
        *NOTEBOOK_CELLS,
        ("code", "raise ValueError('boom for ' + name)"),
        ("code", "print('never runs')"),
    )
    write_notebook(jde_workspace / "fails.ipynb", *cells, tags={1: ["parameters"]})
    proc = jde_cli(
        "run", ENV, "fails.ipynb", "-p", "name", "Ada", "--output", "out/f.ipynb", ok=False
    )
    assert proc.returncode == 1
    assert "ValueError: boom for Ada" in proc.stdout
    assert 'Exception encountered at "In [6]"' in proc.stdout
    assert "ValueError: boom for Ada (notebook cell In [6])" in proc.stderr
    out = nbformat.read(jde_workspace / "out" / "f.ipynb", as_version=4)
    expected = jde_tmp / "papermill.ipynb"
    with pytest.raises(papermill.PapermillExecutionError):
        papermill.execute_notebook(
            str(jde_workspace / "fails.ipynb"),
            str(expected),
            parameters={"name": "Ada"},
            kernel_name="python3",
            progress_bar=False,
            cwd=str(jde_workspace),
        )
    assert comparable(out) == comparable(nbformat.read(expected, as_version=4))
    assert out.cells[0].metadata.tags == ["papermill-error-cell-tag"]
    assert out.cells[-1].outputs == []


@docker
def test_a_failing_script_reports_its_exit_code_and_traceback(
    jde_cli: Cli, jde_workspace: Path
) -> None:
    (jde_workspace / "bad.py").write_text("print('loading')\nraise RuntimeError('no data here')\n")
    proc = jde_cli("run", ENV, "--json", "--", "python", "bad.py", ok=False)
    assert proc.returncode == 1
    run = as_json(proc)
    assert (run["state"], run["exit_code"], run["reason"]) == ("failed", 1, "exit code 1")
    log = Path(run["log"]).read_text()
    assert "Traceback (most recent call last)" in log
    assert "RuntimeError: no data here" in log
    proc = jde_cli("run", ENV, "--", "sh", "-c", "exit 7", ok=False)
    assert proc.returncode == 7
    proc = jde_cli("run", ENV, "--", "no-such-program", ok=False)
    assert proc.returncode == 127
    assert "command not found: no-such-program" in proc.stdout


@docker
def test_cancel_stops_the_run_and_keeps_its_partial_log_and_notebook(
    jde_cli: Cli, jde_workspace: Path, jde_engine: Engine
) -> None:
    write_notebook(
        jde_workspace / "long.ipynb",
        ("code", "print('first cell done')"),
        (
            "code",
            "import time\nfor i in range(600):\n"
            "    print('tick', i, flush=True)\n    time.sleep(0.2)",
        ),
        ("code", "print('never')"),
        tags={},
    )
    run_id = jde_cli("run", ENV, "long.ipynb", "--detach").stdout.strip()
    log = jde_workspace / ".docker-env" / "runs" / run_id / "run.log"
    wait_for(lambda: "tick 3" in log.read_text(), what="the notebook to tick")
    # (its container is confined: the workspace and HOME its only mounts, the process limit)
    (container,) = containers_of(jde_engine, run_id)
    owner = os.stat(jde_workspace)
    check_inside(
        jde_engine,
        container["Id"],
        kind="run",
        user=(owner.st_uid, owner.st_gid),
        mounts={str(jde_workspace): "workspace", "/home/jupyter": "tmpfs"},
        pids=1024,
    )
    # When the user cancels it
    proc = jde_cli("runs", "cancel", run_id)
    assert "cancelled" in proc.stdout
    # Then it is cancelled, its container is gone, and what it computed is kept
    run = as_json(jde_cli("runs", "show", run_id, "--json"))
    assert run["state"] == "cancelled"
    assert containers_of(jde_engine, run_id) == []
    assert "tick 3" in log.read_text()
    out = nbformat.read(run["output"], as_version=4)
    assert out.cells[0].outputs[0].text == "first cell done\n"
    assert "tick 3" in "".join(o.get("text", "") for o in out.cells[1].outputs)
    assert out.cells[2].outputs == []
    jde_cli("runs", "rm", run_id)
    assert not log.parent.exists()
    assert Path(run["output"]).is_file()  # the executed notebook is the user's, it stays


@docker
def test_a_run_past_its_time_limit_is_timed_out(jde_cli: Cli) -> None:
    start = time.monotonic()
    code = "import time; print('sleeping', flush=True); time.sleep(120)"
    proc = jde_cli("run", ENV, "--timeout", "2", "--json", "--", "python", "-c", code, ok=False)
    assert time.monotonic() - start < 60
    assert proc.returncode == 124
    run = as_json(proc)
    assert run["state"] == "timed_out"
    assert "time limit of 2 s" in run["reason"]
    assert "sleeping" in Path(run["log"]).read_text()


FLAKY = """\
import os, sys
os.makedirs("tries", exist_ok=True)
n = len(os.listdir("tries")) + 1
open(f"tries/{n}", "w").close()
print("attempt", n)
sys.exit(0 if n >= int(sys.argv[1]) else 3)
"""


@docker
def test_failed_attempts_are_retried_and_counted(jde_cli: Cli, jde_workspace: Path) -> None:
    (jde_workspace / "flaky.py").write_text(FLAKY)
    run = as_json(jde_cli("run", ENV, "--retries", "3", "--json", "--", "python", "flaky.py", "3"))
    assert (run["state"], run["attempt"], run["exit_code"]) == ("succeeded", 3, 0)
    log = Path(run["log"]).read_text()
    assert "Attempt 1 failed (exit code 3); retrying" in log
    # A run that never succeeds fails after its last attempt
    (jde_workspace / "tries").rename(jde_workspace / "tries-before")
    proc = jde_cli(
        "run", ENV, "--retries", "1", "--json", "--", "python", "flaky.py", "9", ok=False
    )
    run = as_json(proc)
    assert (run["state"], run["attempt"], run["exit_code"]) == ("failed", 2, 3)


@docker
def test_a_run_out_of_memory_says_so(jde_cli: Cli) -> None:
    hog = "x = []\nwhile True:\n    x.append(bytearray(16 * 1024 * 1024))"
    proc = jde_cli("run", ENV, "--memory", "96m", "--json", "--", "python", "-c", hog, ok=False)
    run = as_json(proc)
    assert (run["state"], run["oom_killed"], run["memory"]) == ("failed", True, "96m")
    assert "out of memory (limit 96m)" in run["reason"]
    assert proc.returncode == 137


@docker
def test_a_run_asking_for_gpus_on_an_engine_without_them_says_what_to_install(
    jde_cli: Cli,
) -> None:
    proc = jde_cli("run", ENV, "--gpus", "all", "--json", "--", "true", ok=False)
    run = as_json(proc)
    assert (run["state"], run["exit_code"]) == ("failed", None)
    assert "NVIDIA Container Toolkit" in run["reason"]
    assert proc.returncode == 1


@docker
def test_a_run_of_an_unbuilt_environment_builds_it_first(jde_cli: Cli, jde_workspace: Path) -> None:
    fresh = jde_workspace / "environments" / "fresh"
    fresh.mkdir()
    # this session's own spec: nothing was built for it before
    spec = (jde_workspace / ENV / "docker-env.toml").read_text()
    (fresh / "docker-env.toml").write_text(
        spec.replace("runs-env", "runs-fresh") + f'env = {{ JDE_RUN = "{uuid.uuid4().hex}" }}\n'
    )
    proc = jde_cli("run", "environments/fresh", "--", "sh", "-c", 'echo "built with $JDE_RUN"')
    # (not built yet, or changed since an earlier session built it)
    assert re.search(
        r"Environment runs-fresh (is not built yet|changed since its last build): "
        r"building it first",
        proc.stdout,
    )
    assert "[build] Done:" in proc.stdout
    assert "built with " in proc.stdout


@docker
def test_a_snapshot_run_brings_its_code_and_hands_back_what_it_wrote(
    jde_cli: Cli, jde_workspace: Path, jde_engine: Engine
) -> None:
    project = jde_workspace / "project"
    (project / "data").mkdir(parents=True)
    (project / "train.py").write_text(
        "import os\n"
        "print('outside visible:', os.path.exists('../secret.txt'))\n"
        "print('code here:', sorted(os.listdir('.')))\n"
        "os.makedirs('models', exist_ok=True)\n"
        "open('models/m.bin', 'w').write('weights')\n"
    )
    (project / "data" / "big.bin").write_bytes(b"\0" * 1000)  # not code: stays out
    (jde_workspace / "secret.txt").write_text("not for the run")
    run = as_json(
        jde_cli("run", "../" + ENV, "--snapshot", "--json", "--", "python", "train.py", cwd=project)
    )
    assert run["state"] == "succeeded"
    log = Path(run["log"]).read_text()
    assert "outside visible: False" in log  # the jde_workspace is not mounted
    assert (project / "models" / "m.bin").read_text() == "weights"  # handed back
    assert jde_engine.inspect_image(run["image"]) is not None
    assert run["image"].startswith(f"{JDE_PREFIX}/runs-env-run:")
    # the code is in the image; data is not
    assert "code here: ['train.py']" in log
    # the same code again reuses the run image
    again = as_json(
        jde_cli("run", "../" + ENV, "--snapshot", "--json", "--", "python", "train.py", cwd=project)
    )
    assert again["image"] == run["image"]
    assert "(unchanged code: reused)" in Path(again["log"]).read_text()


# -- the REST API ------------------------------------------------------------------------------
@pytest.fixture
def jp_server_config(jp_root_dir: Path, jde_base_image: str) -> dict[str, Any]:
    env_dir = jp_root_dir / ENV
    env_dir.mkdir(parents=True)
    (env_dir / "docker-env.toml").write_text(f'name = "runs-env"\nbase = "{jde_base_image}"\n')
    own(jp_root_dir)
    return {
        "ServerApp": {"jpserver_extensions": {"jupyter_docker_env": True}},
        "DockerEnvApp": {
            "image_prefix": JDE_PREFIX,
            "default_base": jde_base_image,
            "ca_bundle": CA_BUNDLE or "",
        },
        "DockerEnvProvisioner": {"extra_labels": {JDE_TEST_LABEL: JDE_SESSION}},
        "RunManager": {"stop_timeout": 3, "poll_interval": 0.2},
    }


async def api(
    jp_fetch: Any, path: str, method: str = "GET", body: Any = None, expect: int = 200, **kw: Any
) -> Any:
    """Call the runs API; assert the status and the schema in openapi.yaml."""
    args: dict[str, Any] = {"method": method, "raise_error": False, **kw}
    if body is not None or method == "POST":
        args["body"] = json.dumps(body) if body is not None else ""
    resp = await jp_fetch(API, *path.split("/"), **args)
    assert resp.code == expect, resp.body
    data = json.loads(resp.body) if resp.body else None
    parts = path.split("/")
    template = "/runs" + ("/{id}" if len(parts) > 1 else "") + "".join(f"/{p}" for p in parts[2:])
    if data is not None:
        check_schema(template, method.lower(), expect, data)
    return data


async def until_ended(jp_fetch: Any, run_id: str) -> tuple[dict[str, Any], list[str]]:
    """Follow the log from offsets, as the panel does, until the run ends."""
    lines: list[str] = []
    offset = 0
    for _ in range(1500):
        page = await api(jp_fetch, f"runs/{run_id}/log", params={"offset": str(offset)})
        lines += page["log"]
        offset = page["log_offset"]
        if page["state"] in FINAL and not page["log"]:
            return await api(jp_fetch, f"runs/{run_id}"), lines
        await asyncio.sleep(0.2)
    raise AssertionError(f"run {run_id} did not end")


@docker
async def test_runs_through_the_rest_api(
    jp_fetch: Any, jp_root_dir: Path, jde_engine: Engine
) -> None:
    (jp_root_dir / "src").mkdir()
    (jp_root_dir / "src" / "hello.py").write_text("import os\nprint('hello from', os.getcwd())\n")
    own(jp_root_dir)
    # Create: queued at once, its URL in Location
    resp = await jp_fetch(
        API,
        "runs",
        method="POST",
        body=json.dumps({"env": "runs-env", "command": ["python", "hello.py"], "cwd": "src"}),
    )
    assert resp.code == 201
    run = json.loads(resp.body)
    check_schema("/runs", "post", 201, run)
    assert run["state"] in ("queued", "running")
    assert resp.headers["Location"].endswith(f"/{API}/runs/{run['id']}")
    # Follow it from offsets until it ends
    run, lines = await until_ended(jp_fetch, run["id"])
    assert run["state"] == "succeeded"
    assert f"hello from {jp_root_dir / 'src'}" in lines
    assert any(line.startswith("[docker-env] Run succeeded") for line in lines)
    listed = await api(jp_fetch, "runs")
    assert [r["id"] for r in listed["runs"]] == [run["id"]]
    # Cancel a long one; it cannot be deleted while it runs
    slow = await api(
        jp_fetch,
        "runs",
        "POST",
        {"env": "runs-env", "command": ["sleep", "300"], "timeout": 600},
        expect=201,
    )
    for _ in range(300):
        if (await api(jp_fetch, f"runs/{slow['id']}"))["state"] == "running":
            break
        await asyncio.sleep(0.1)
    await api(jp_fetch, f"runs/{slow['id']}", "DELETE", expect=409)
    cancelled = await api(jp_fetch, f"runs/{slow['id']}/cancel", "POST", expect=202)
    assert cancelled["id"] == slow["id"]
    slow, _ = await until_ended(jp_fetch, slow["id"])
    assert slow["state"] == "cancelled"
    await api(jp_fetch, f"runs/{slow['id']}/cancel", "POST", expect=409)
    assert containers_of(jde_engine, slow["id"]) == []
    # Delete
    await api(jp_fetch, f"runs/{slow['id']}", "DELETE", expect=204)
    await api(jp_fetch, f"runs/{slow['id']}", expect=404)
    await api(jp_fetch, "runs/0123456789ab/log", expect=404)


@docker
async def test_bad_run_requests_are_400s_naming_the_field(jp_fetch: Any, jp_root_dir: Path) -> None:
    for body, field in (
        ({"env": "runs-env"}, "command"),
        ({"env": "nope", "command": ["true"]}, "env"),
        ({"env": "runs-env", "notebook": "../../etc/x.ipynb"}, "notebook"),
        ({"env": "runs-env", "notebook": "missing.ipynb"}, "notebook"),
        ({"env": "runs-env", "command": ["true"], "cwd": "../.."}, "cwd"),
        ({"env": "runs-env", "command": ["true"], "gpus": "0; rm -rf"}, "gpus"),
    ):
        err = await api(jp_fetch, "runs", "POST", body, expect=400)
        assert err["field"] == field, body
    await api(jp_fetch, "runs/0123456789ab/log", params={"offset": "x"}, expect=400)


# -- runs outlive the server -------------------------------------------------------------------
class Server:
    """`jupyter server` as a subprocess on a workspace (started again on the same port)."""

    def __init__(self, workspace: Path, home: Path) -> None:
        self.workspace, self.home = workspace, home
        self.port, self.token = jde_free_port(), secrets.token_hex(16)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = home / "server.log"

    def start(self) -> None:
        env = {**os.environ, "JUPYTER_CONFIG_DIR": str(self.home / "jupyter-config")}
        env["JUPYTER_RUNTIME_DIR"] = str(self.home / "runtime")
        with self.log.open("a") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "jupyter_server",
                    "--no-browser",
                    f"--port={self.port}",
                    "--ServerApp.ip=127.0.0.1",
                    f"--ServerApp.root_dir={self.workspace}",
                    f"--IdentityProvider.token={self.token}",
                    "--ServerApp.allow_root=True",
                    "--ServerApp.port_retries=0",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        wait_for(self.up, 60, f"the server to start: {self.log.read_text()[-2000:]}")

    def up(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"the server exited: {self.log.read_text()[-3000:]}")
        try:
            self.call("GET", "status")
        except (OSError, urllib.error.HTTPError):
            return False
        return True

    def call(self, method: str, path: str, body: Any = None) -> Any:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/{API}/{path}",
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"token {self.token}"},
        )
        with urllib.request.urlopen(request, timeout=30) as resp:
            return json.loads(resp.read() or b"null")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def gated(name: str, then: str) -> str:
    """Python code that says "NAME begins", waits until the workspace has a file NAME.go (the
    test creates it), then runs ``then``."""
    return (
        f"import os, time; print({name!r}, 'begins', flush=True)\n"
        f"while not os.path.exists('{name}.go'): time.sleep(0.05)\n{then}"
    )


@pytest.fixture
def jde_server(jde_workspace: Path, jde_tmp: Path, jde_engine: Engine) -> Iterator[Server]:
    srv = Server(jde_workspace, jde_tmp / "home")
    yield srv
    srv.stop()


@docker
def test_runs_survive_a_server_killed_with_sigkill(
    jde_server: Server, jde_workspace: Path, jde_engine: Engine
) -> None:
    own(jde_workspace)
    jde_server.start()
    # Given two runs that each end once the test lets them (it creates their file): one while
    # no server runs, the other after the next one started
    short = gated("short", "print('short ends')")
    long = gated("long", "open('long.txt', 'w').write('done'); print('long ends')")
    runs = [
        jde_server.call("POST", "runs", {"env": "runs-env", "command": ["python", "-c", code]})
        for code in (short, long)
    ]

    def both_running() -> bool:
        states = [jde_server.call("GET", f"runs/{r['id']}")["state"] for r in runs]
        return states == ["running", "running"]

    wait_for(both_running, 300, "both runs to start")
    # When the server is killed with -9
    jde_server.kill()
    # Then the runs go on without it; the short one ends while no server runs
    short_container, long_container = (containers_of(jde_engine, r["id"])[0]["Id"] for r in runs)
    (jde_workspace / "short.go").touch()
    wait_for(
        lambda: not (jde_engine.inspect_container(short_container) or {})["State"]["Running"],
        30,
        "the short run to end",
    )
    assert (jde_engine.inspect_container(long_container) or {})["State"]["Running"]
    # And the restarted server shows how each ended, with its whole log
    jde_server.start()

    def ended(run_id: str) -> dict[str, Any] | None:
        run: dict[str, Any] = jde_server.call("GET", f"runs/{run_id}")
        return run if run["state"] in FINAL else None

    first = wait_for(lambda: ended(runs[0]["id"]), 30, "the short run's record")
    assert (first["state"], first["exit_code"]) == ("succeeded", 0)
    log = jde_server.call("GET", f"runs/{runs[0]['id']}/log")["log"]
    assert "short begins" in log
    assert "short ends" in log
    assert jde_server.call("GET", f"runs/{runs[1]['id']}")["state"] == "running"
    (jde_workspace / "long.go").touch()
    second = wait_for(lambda: ended(runs[1]["id"]), 60, "the long run to end")
    assert second["state"] == "succeeded"
    assert (jde_workspace / "long.txt").read_text() == "done"
    assert "long ends" in jde_server.call("GET", f"runs/{runs[1]['id']}/log")["log"]
    assert all(not containers_of(jde_engine, r["id"]) for r in runs)


@docker
def test_a_run_followed_by_the_cli_and_a_server_ends_once(
    jde_server: Server, jde_cli: Cli, jde_workspace: Path
) -> None:
    own(jde_workspace)
    jde_server.start()
    code = gated("work", "print('done')")  # ends once the server has seen it run
    done: list[subprocess.CompletedProcess[str]] = []
    thread = threading.Thread(
        target=lambda: done.append(jde_cli("run", ENV, "--json", "--", "python", "-c", code))
    )
    thread.start()
    # the server finds the run the command line follows, and follows it too
    listed = wait_for(
        lambda: [r for r in jde_server.call("GET", "runs")["runs"] if r["state"] == "running"],
        120,
        "the server to list the running run",
    )
    (jde_workspace / "work.go").touch()
    thread.join(120)
    run = as_json(done[0])
    assert (run["id"], run["state"]) == (listed[0]["id"], "succeeded")
    ended = wait_for(lambda: jde_server.call("GET", f"runs/{run['id']}")["state"] in FINAL, 30)
    assert ended
    log = Path(run["log"]).read_text()
    assert log.count("[docker-env] Run succeeded") == 1, log
