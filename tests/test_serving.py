"""Serving images: an environment's runtime, a model and a handler behind an HTTP server.

Unit tests first (which distributions stay, the server application in-process, input checks),
then the real engine: images built with the command line (BuildKit) and through the REST API
(the legacy builder), run with `docker run` and `jupyter docker-env serve`, pushed and removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from wsgiref.util import setup_testing_defaults

import pytest
from packaging.utils import canonicalize_name

from jupyter_docker_env import labels as L
from jupyter_docker_env.engine import Engine, EngineError
from jupyter_docker_env.models import FieldError, ServingOptions
from jupyter_docker_env.serving import dockerfile, slim
from jupyter_docker_env.serving.builder import Handler, Model
from jupyter_docker_env.serving.runtime.wsgi import ServingApp

from .conftest import CA_BUNDLE, JDE_PREFIX, JDE_SESSION, JDE_TEST_LABEL, check_inside
from .test_api import call, check_schema, jp_server_config, wait_operation
from .test_cli import CLI, Cli

__all__ = ["jp_server_config"]  # the server configuration fixture the REST test uses

RUN = uuid.uuid4().hex[:8]  # in every model here, so each run builds its serving images anew
SERVING_PREFIX = f"{JDE_PREFIX}-serving/"
DOCKER = shutil.which("docker") or "docker"  # the CLI, to run the image as a user would
HANDLER = """\
import json
import os
import time
from pathlib import Path

from dateutil.relativedelta import relativedelta  # a runtime package of the environment

MODEL = {}


def load(path):
    MODEL.update(json.loads(Path(path).read_text()))
    time.sleep(MODEL.get("load_seconds", 0))
    gate = os.environ.get("TEST_LOAD_GATE")  # loading ends once a test creates this file
    while gate and not Path(gate).exists():
        time.sleep(0.05)


def predict(payload):
    features = payload["features"]
    score = sum(w * x for w, x in zip(MODEL["weights"], features)) + MODEL["bias"]
    return {"prediction": score, "months": relativedelta(months=+2).months}
"""


# -- which distributions stay ----------------------------------------------------------------
def dist(name: str, *requires: str, venv: bool = True) -> dict[str, Any]:
    return {"name": name, "version": "1.0", "venv": venv, "requires": list(requires)}


INVENTORY = {
    "python": "3.11.2",
    "markers": {
        "python_version": "3.11",
        "python_full_version": "3.11.2",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "os_name": "posix",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
    },
    "distributions": [
        dist("ipykernel", "jupyter-client>=8", "tornado", "pyzmq", "debugpy", "ipython"),
        dist("IPython", "jedi", "pygments", "typing-extensions"),
        dist("typing_extensions"),
        dist("jedi", "parso"),
        dist("parso"),
        dist("pygments"),
        dist("debugpy"),
        dist("jupyter_client", "python-dateutil", "tornado", "pyzmq", "traitlets"),
        dist("tornado"),
        dist("pyzmq"),
        dist("traitlets"),
        dist("python-dateutil", "six>=1.5"),
        dist("six"),
        dist("pip"),
        dist("setuptools"),
        dist(
            "requests",
            "urllib3",
            'PySocks; extra == "socks"',
            'typing-extensions; python_version < "3.8"',
        ),
        dist("urllib3"),
        dist("PySocks"),
        dist("legacy-plugin", "setuptools"),  # uses pkg_resources at run time
        dist("numpy", venv=False),  # from apt, outside the venv
        dist("scipy", "numpy"),
        dist("Cython"),  # installed to build something
    ],
    "apt": [
        {"name": "build-essential", "version": "12.9", "section": "devel", "depends": "gcc"},
        {
            "name": "libpq-dev",
            "version": "15.1",
            "section": "libdevel",
            "depends": "libpq5 (= 15.1)",
        },
        {"name": "libpq5", "version": "15.1", "section": "libs", "depends": "libc6"},
        {"name": "git", "version": "2.39", "section": "vcs", "depends": "libc6, perl | perl-base"},
        {"name": "python3-dev", "version": "3.11", "section": "python", "depends": "python3"},
    ],
}


def names(entries: list[str] | tuple[str, ...]) -> set[str]:
    return {canonicalize_name(e.split("==", 1)[0]) for e in entries}


def test_the_runtime_is_what_the_user_asked_for_and_what_it_requires() -> None:
    # Given an environment with a kernel, installers, a build tool and the user's packages
    inventory = slim.Inventory.from_json(INVENTORY)
    # When its serving share is planned from the user's requirement lines
    plan = slim.plan(
        inventory,
        ["python-dateutil>=2", "requests[socks]", "ipykernel", "scipy", "-r other.txt"],
        apt_requested=["build-essential", "libpq-dev", "git", "python3-dev"],
        server=["gunicorn"],
    )
    # Then the user's packages and their requirements stay, extras and markers honoured
    kept = names(plan.keep)
    assert {"python-dateutil", "six", "requests", "urllib3", "pysocks", "scipy"} <= kept
    # and a package nothing requires stays too (it came from somewhere the lines do not say)
    assert "legacy-plugin" in kept
    # and so does a kernel-only root that a runtime package needs, saying who needs it
    assert "setuptools" in kept
    assert plan.needed_by == {"setuptools": "legacy-plugin"}
    # Then the kernel, what only it requires, the installers and build tools go, even when asked
    assert names(plan.remove) == {
        *("ipykernel", "ipython", "jedi", "parso", "pygments", "debugpy", "jupyter-client"),
        *("tornado", "pyzmq", "traitlets", "pip", "cython"),
        "typing-extensions",  # requests needs it on Python 3.7 only
    }
    # and the venv sees the system's packages because scipy needs numpy from apt
    assert plan.system_site_packages is True
    # and of Debian's packages, compilers and headers go, the libraries of a -dev package stay
    assert plan.apt == ("libpq5=15.1", "git=2.39")


def test_requirement_lines_of_a_requirements_file() -> None:
    text = "# pinned\nnumpy==2.1  # fast\n-r base.txt\n--index-url https://x\n\nscipy\n"
    assert slim.requirement_lines(text) == ["numpy==2.1", "scipy"]


def test_a_plain_kernel_environment_keeps_nothing_but_the_server() -> None:
    kernel_only = {
        **INVENTORY,
        "distributions": [
            d for d in INVENTORY["distributions"] if d["name"] in ("ipykernel", "pip")
        ],
    }
    plan = slim.plan(slim.Inventory.from_json(kernel_only), [], server=["gunicorn"])
    assert plan.keep == ()
    assert names(plan.remove) == {"ipykernel", "pip"}
    assert plan.system_site_packages is False


# -- the server application, in-process ---------------------------------------------------------
def wsgi(app: ServingApp, method: str, path: str, body: bytes = b"", **extra: Any) -> tuple:
    environ: dict[str, Any] = {"REQUEST_METHOD": method, "PATH_INFO": path}
    setup_testing_defaults(environ)
    environ["wsgi.input"] = io.BytesIO(body)
    environ["CONTENT_LENGTH"] = str(len(body)) if body else ""
    environ.update(extra)
    answer: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        answer["status"], answer["headers"] = int(status.split()[0]), dict(headers)

    data = b"".join(app(environ, start_response))
    return answer["status"], json.loads(data), answer["headers"]


@pytest.fixture
def app(tmp_path: Path) -> ServingApp:
    (tmp_path / "model.json").write_text('{"weights": [2, -1], "bias": 0.5}')
    (tmp_path / "linear.py").write_text(
        "import json\nMODEL = {}\n"
        "def load(path):\n    MODEL.update(json.load(open(path)))\n"
        "class Array:\n    def __init__(self, v): self.v = v\n    def tolist(self): return self.v\n"
        "def predict(payload):\n"
        "    if payload == 'teapot':\n        return {'error': 'short and stout'}, 418\n"
        "    x = payload['features']\n"
        "    return {'prediction': Array([sum(w * v for w, v in zip(MODEL['weights'], x))"
        " + MODEL['bias']])}\n"
    )
    return ServingApp(
        f"{tmp_path / 'linear.py'}:predict",
        str(tmp_path / "model.json"),
        max_request_bytes=100,
        load_wait=0.1,
    )


def test_alive_at_once_ready_once_the_model_is_loaded(app: ServingApp) -> None:
    # Given a worker whose model is not loaded yet
    assert wsgi(app, "GET", "/healthz")[:2] == (200, {"status": "ok"})
    assert wsgi(app, "GET", "/readyz")[:2] == (503, {"status": "loading"})
    status, body, headers = wsgi(app, "POST", "/predict", b'{"features": [1, 1]}')
    assert (status, body["error"], headers["Retry-After"]) == (
        503,
        "the model is still loading",
        "1",
    )
    # When it has loaded
    app.start()
    assert app.wait(10) == "ready"
    # Then it is ready and predicts, array-likes answered as lists, a (body, status) as given
    assert wsgi(app, "GET", "/readyz")[:2] == (200, {"status": "ready"})
    assert wsgi(app, "POST", "/predict", b'{"features": [1, 2]}')[:2] == (
        200,
        {"prediction": [0.5]},
    )
    assert wsgi(app, "POST", "/predict", b'"teapot"')[:2] == (418, {"error": "short and stout"})


def test_readyz_speaks_for_every_worker_of_the_container(app: ServingApp, tmp_path: Path) -> None:
    # Given a container of two workers, of which this one has loaded its model
    app.workers, app.ready_dir = 2, tmp_path / "ready"
    app.start()
    assert app.wait(10) == "ready"
    # Then it is not ready while the other worker still loads (a probe may reach either)
    assert wsgi(app, "GET", "/readyz")[:2] == (503, {"status": "loading"})
    # When the other (live) worker has loaded too, Then the container is ready
    (tmp_path / "ready" / str(os.getppid())).touch()
    assert wsgi(app, "GET", "/readyz")[:2] == (200, {"status": "ready"})
    # and a worker that died does not count
    (tmp_path / "ready" / str(os.getppid())).unlink()
    (tmp_path / "ready" / "999999999").touch()
    assert wsgi(app, "GET", "/readyz")[0] == 503


def test_bad_requests_are_4xx_that_say_why(app: ServingApp) -> None:
    app.start()
    app.wait(10)
    status, body, _ = wsgi(app, "POST", "/predict", b"{nope")
    assert status == 400
    assert body["error"].startswith("the request body is not valid JSON: Expecting property name")
    assert wsgi(app, "POST", "/predict", b"\xff\xfe")[0] == 400
    assert wsgi(app, "POST", "/predict", b"  ")[1]["error"].startswith("the request body is empty")
    app.max_request_bytes = 300_000
    deep = wsgi(app, "POST", "/predict", b"[" * 100_000 + b"]" * 100_000)
    assert deep[:2] == (400, {"error": "the request body is nested too deeply"})
    app.max_request_bytes = 100
    # Too large: by its Content-Length, and when chunked (no length) by what arrives
    assert wsgi(app, "POST", "/predict", b"1" * 101)[:2] == (
        413,
        {"error": "the request body is larger than 100 bytes"},
    )
    assert wsgi(app, "POST", "/predict", b"1" * 101, CONTENT_LENGTH="")[0] == 413
    assert wsgi(app, "GET", "/predict")[0] == 405
    assert wsgi(app, "GET", "/predict")[2]["Allow"] == "POST"
    assert "POST /predict" in wsgi(app, "GET", "/")[1]["error"]


def test_a_failing_handler_is_a_500_without_internals_and_a_logged_traceback(
    app: ServingApp, caplog: pytest.LogCaptureFixture
) -> None:
    app.start()
    app.wait(10)
    status, body, headers = wsgi(
        app, "POST", "/predict", b'{"features": "x"}', HTTP_X_REQUEST_ID="req-42"
    )
    assert status == 500
    assert body == {"error": "internal error (logged on the server)", "request_id": "req-42"}
    assert headers["X-Request-ID"] == "req-42"
    record = next(r for r in caplog.records if "req-42" in r.getMessage())
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None
    assert record.exc_info[0] is TypeError


def test_a_model_that_cannot_load_fails_the_worker(tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text(
        "def load(path):\n    open(path)\ndef predict(p):\n    return p\n"
    )
    failures: list[BaseException] = []
    app = ServingApp(
        f"{tmp_path / 'broken.py'}:predict",
        str(tmp_path / "missing"),
        on_load_error=failures.append,
    )
    app.start()
    assert app.wait(10) == "failed"
    assert isinstance(failures[0], FileNotFoundError)
    assert wsgi(app, "GET", "/readyz")[:2] == (503, {"status": "failed"})


# -- what a request names --------------------------------------------------------------------
def test_handler_model_and_options_are_checked_before_anything_is_built(tmp_path: Path) -> None:
    (tmp_path / "serve.py").write_text("def predict(payload):\n    return payload\n")
    (tmp_path / "bad.py").write_text("def predict(payload)\n")
    (tmp_path / "json.py").write_text("def predict(payload):\n    return 1\n")
    (tmp_path / "model.bin").write_bytes(b"weights")
    (tmp_path / "empty").mkdir()
    handler = Handler.parse("serve.py:predict", tmp_path)
    assert (handler.file, handler.text) == (tmp_path / "serve.py", "serve.py:predict")
    (tmp_path / "reexport.py").write_text("from serve import predict as score\n")
    assert Handler.parse("reexport.py:score", tmp_path).function == "score"
    for value, words in (
        ("serve.py", "is not FILE.py:FUNCTION"),
        ("serve.py:nope", "defines no function nope"),
        ("bad.py:predict", "bad.py, line 1"),
        ("json.py:predict", "rename json.py"),
        ("missing.py:predict", "missing.py does not exist"),
        ("model.bin:predict", "model.bin is not a Python file"),
        ("../serve.py:predict", "outside the workspace"),
    ):
        with pytest.raises(FieldError, match=words) as err:
            Handler.parse(value, tmp_path, root=tmp_path)
        assert err.value.field == "handler"
    model = Model.read("model.bin", tmp_path)
    assert model.digest == "sha256:" + hashlib.sha256(b"weights").hexdigest()
    assert model.size == 7
    for value, words in (("nope.bin", "does not exist"), ("empty", "is an empty folder")):
        with pytest.raises(FieldError, match=words):
            Model.read(value, tmp_path)
    with pytest.raises(FieldError, match="outside the workspace"):
        Model.read("/etc/hostname", tmp_path, root=tmp_path)
    for body, field in (({"model": "m"}, "handler"), ({"x": 1}, "x"), ({"handler": 1}, "model")):
        with pytest.raises(FieldError) as err:
            ServingOptions.from_json(body)
        assert err.value.field == field


def test_the_model_is_the_last_layer_and_nothing_runs_through_a_shell() -> None:
    recipe = dockerfile.Recipe(
        env_image="p/e:1",
        base="python:3.12-slim",
        slim=slim.Slim(keep=(), remove=("pip==24",), needed_by={}, system_site_packages=False),
        install_server=True,
        handler_file="serve.py",
        function="predict",
        model_name="model.joblib",
    )
    lines = dockerfile.render(recipe, cache_mounts=False).splitlines()
    layers = [line for line in lines if line.startswith(("COPY", "RUN", "ADD"))]
    assert layers[-1] == "COPY model/ /opt/model/"
    assert lines.index("USER 10001:10001") > lines.index("FROM python:3.12-slim")
    for keyword in ("ENTRYPOINT", "HEALTHCHECK", "CMD"):
        line = next(x for x in lines if x.startswith(keyword))
        assert isinstance(json.loads(line[line.index("[") :]), list)  # exec form: no shell


# -- the real engine ---------------------------------------------------------------------------
docker = pytest.mark.docker


def http(method: str, url: str, body: bytes | None = None) -> tuple[int, Any]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(url, data=body, method=method)
    try:
        with opener.open(request, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def layers(engine: Engine, image: str) -> list[str]:
    return list((engine.inspect_image(image) or {})["RootFS"]["Layers"])


@pytest.fixture(scope="module")
def serving_sweep(jde_engine: Engine) -> Iterator[None]:
    yield
    for image in jde_engine.images(reference=f"{SERVING_PREFIX}*"):
        for tag in image.get("RepoTags") or []:
            jde_engine.remove_image(tag, force=True)
        jde_engine.remove_if_unused(image["Id"])


@pytest.fixture(scope="module")
def demo(jde_base_image: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """An environment with one user package, a model and a handler; CLI with its own config."""
    root = tmp_path_factory.mktemp("serving")
    env = root / "serving-demo"
    env.mkdir()
    (env / "docker-env.toml").write_text(f'base = "{jde_base_image}"\npip = ["python-dateutil"]\n')
    (root / "serve.py").write_text(HANDLER)
    model = root / "model.json"
    model.write_text(json.dumps({"weights": [2, -1], "bias": 0.5, "load_seconds": 2, "run": RUN}))
    return {"cli": Cli(root / "home"), "env": env, "model": model, "handler": root / "serve.py"}


def serve_image(demo: dict[str, Any], *extra: str) -> dict[str, Any]:
    cli = demo["cli"]
    return cli.json(  # type: ignore[no-any-return]
        "serve-image",
        str(demo["env"]),
        "--model",
        str(demo["model"]),
        "--handler",
        f"{demo['handler']}:predict",
        *extra,
    )


@pytest.fixture(scope="module")
def built(demo: dict[str, Any], serving_sweep: None) -> dict[str, Any]:
    return serve_image(demo)


def wait_until(check: Callable[[], bool], what: str, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"not within {seconds} s: {what}"
        time.sleep(0.1)


def docker_run(image: str, *args: str) -> tuple[str, str]:
    """`docker run -d` as a user would, published on loopback; (container id, URL)."""
    label = f"{JDE_TEST_LABEL}={JDE_SESSION}"
    run = [DOCKER, "run", "-d", "--label", label, "-p", "127.0.0.1::8080"]
    container = subprocess.run(
        [*run, *args, image],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    port = subprocess.run(
        [DOCKER, "port", container, "8080/tcp"], check=True, capture_output=True, text=True
    ).stdout.split()[0]
    return container, f"http://{port}"


@docker
def test_a_serving_image_is_the_runtime_without_the_kernel_and_runs_unprivileged(
    built: dict[str, Any], demo: dict[str, Any], jde_engine: Engine
) -> None:
    # Given a serving image built from the environment, a model and a handler
    assert built["built"] is True
    assert built["image"].startswith(f"{SERVING_PREFIX}serving-demo:")
    # Then the kernel, what only it needs and the installers were left out; the user's package
    # and what it requires were kept
    removed = names(built["removed"])
    assert {"ipykernel", "ipython", "jedi", "debugpy", "pyzmq", "tornado", "pip", "setuptools"} <= (
        removed
    )
    assert not {"python-dateutil", "six"} & removed
    # and it is smaller than the environment's image
    assert built["size"] < built["env_image"]["size"]
    # and its labels record the environment, its spec hash and lock, and the model's digest
    shown = demo["cli"].json("show", str(demo["env"]))
    image = jde_engine.inspect_image(built["image"])
    assert image is not None
    labels = image["Config"]["Labels"]
    assert labels[L.SERVING_ENV] == "serving-demo"
    assert labels[L.SERVING_SPEC_HASH] == shown["spec_hash"]
    assert json.loads(labels[L.SERVING_LOCK]) == shown["lock"]
    digest = "sha256:" + hashlib.sha256(demo["model"].read_bytes()).hexdigest()
    assert labels[L.SERVING_MODEL_DIGEST] == built["model"]["digest"] == digest
    # and it runs as an unprivileged user, its server and health check without a shell
    config = image["Config"]
    assert config["User"] == "10001:10001"
    assert config["Healthcheck"]["Test"][0] == "CMD"  # not CMD-SHELL
    assert config["Entrypoint"][0] == "/opt/venv/bin/gunicorn"
    python = "/opt/venv/bin/python"
    for module in ("ipykernel", "IPython", "pip"):
        with pytest.raises(EngineError, match=f"No module named '{module}'"):
            jde_engine.run_output(built["image"], [python, "-c", f"import {module}"])


@docker
def test_docker_run_serves_predictions_and_answers_bad_requests_clearly(
    built: dict[str, Any], jde_engine: Engine
) -> None:
    # Given the serving image started with `docker run` (a small request limit for the test),
    # its model loading until the test lets it finish
    gate = "/tmp/jde-test-loaded"
    container, url = docker_run(
        built["image"], "-e", "SERVING_MAX_REQUEST_BYTES=2000", "-e", f"TEST_LOAD_GATE={gate}"
    )
    try:
        # Then it is alive at once, and not ready while the model loads
        def answers(path: str) -> int | None:
            with contextlib.suppress(OSError):  # not listening yet
                return http("GET", f"{url}/{path}")[0]
            return None

        wait_until(lambda: answers("healthz") == 200, "the server to answer")
        assert answers("readyz") == 503
        # and ready once the model has loaded
        subprocess.run([DOCKER, "exec", container, "touch", gate], check=True)
        wait_until(lambda: answers("readyz") == 200, "the server to be ready")
        assert answers("healthz") == 200
        # and its server runs as the image's unprivileged user
        uid = subprocess.run(
            [DOCKER, "exec", container, "python", "-c", "import os; print(os.getuid())"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        assert uid.strip() == "10001"
        # When it is asked for a prediction, Then it answers the handler's result
        assert http("POST", f"{url}/predict", b'{"features": [3, 1]}') == (
            200,
            {"prediction": 5.5, "months": 2},
        )
        # and bad JSON, an oversized body and a failing handler get clear answers
        status, body = http("POST", f"{url}/predict", b"{nope")
        assert status == 400
        assert "not valid JSON" in body["error"]
        assert http("POST", f"{url}/predict", b"[" + b"1," * 1500 + b"1]")[0] == 413
        status, body = http("POST", f"{url}/predict", b'{"features": "oops"}')
        assert status == 500
        assert set(body) == {"error", "request_id"}
        assert "Traceback" not in json.dumps(body)
        log = jde_engine.container_logs(container, tail=200)
        assert f"request {body['request_id']}: predict(payload) failed" in log
        assert "Traceback (most recent call last)" in log
    finally:
        jde_engine.remove_container(container)


@docker
def test_a_new_model_rebuilds_only_the_last_layer(
    built: dict[str, Any], demo: dict[str, Any], jde_engine: Engine
) -> None:
    # Given the same request again: nothing is built
    same = serve_image(demo)
    assert (same["built"], same["id"]) == (False, built["id"])
    # When only the model changes
    model = json.loads(demo["model"].read_text())
    demo["model"].write_text(json.dumps({**model, "bias": 1.5}))
    changed = serve_image(demo)
    # Then a new image differs from the old one in its last layer only
    assert changed["built"] is True
    before, after = layers(jde_engine, built["id"]), layers(jde_engine, changed["id"])
    assert len(before) == len(after)
    assert before[:-1] == after[:-1]
    assert before[-1] != after[-1]
    demo["model"].write_text(json.dumps(model))


@docker
def test_serve_publishes_on_loopback_and_push_list_rm_take_serving_images(
    built: dict[str, Any], demo: dict[str, Any], jde_engine: Engine, jde_open_registry: str
) -> None:
    cli = demo["cli"]
    ref = built["image"]

    def serving() -> list[dict[str, Any]]:
        """This test's serving containers (another session's use other images)."""
        found = jde_engine.containers({L.ROLE: "serving", L.SERVING_ENV: "serving-demo"})
        return [c for c in found if c.get("ImageID") == built["id"]]

    # When it is served in the background, Then it prints a loopback URL that answers
    detached = cli("serve", ref, "--port", "0", "--detach")
    url = detached.stdout.strip()
    assert url.startswith("http://127.0.0.1:")
    (container,) = serving()
    bindings = jde_engine.inspect_container(container["Id"])["HostConfig"]["PortBindings"]  # type: ignore[index]
    assert [b["HostIp"] for b in bindings["8080/tcp"]] == ["127.0.0.1"]
    # and the container is confined: its user, a read-only root with only /tmp writable, no
    # mount of the host, a process limit
    check_inside(
        jde_engine,
        container["Id"],
        kind="serving",
        user=(10001, 10001),
        mounts={"/tmp": "tmpfs"},
        pids=1024,
        read_only=True,
    )
    assert http("POST", f"{url}/predict", b'{"features": [1, 1]}')[1]["prediction"] == 1.5
    jde_engine.remove_container(container["Id"])

    # When it is served in the foreground, Then Ctrl-C stops it and removes its container
    proc = subprocess.Popen(
        [CLI, "serve", ref, "--port", "0"],
        env=cli.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert http("GET", f"{url}/readyz")[0] == 200
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 130
    finally:
        if proc.poll() is None:
            proc.kill()  # a failed step above: the container stays, remove it below
            for leftover in serving():
                jde_engine.remove_container(leftover["Id"])
    assert serving() == []

    # list --serving shows it with its size next to the environment's image size
    listed = {row["id"]: row for row in cli.json("list", "--serving")}
    assert listed[built["id"]]["size"] == built["size"]
    assert listed[built["id"]]["env_image"] == built["env_image"]

    # push takes a serving image: to the registry as ENV-serving, by hash and as latest
    pushed = cli.json("push", ref, "--registry", jde_open_registry)
    remote = f"{jde_open_registry}/serving-demo-serving"
    assert pushed["pushed"] == [f"{remote}:{ref.rpartition(':')[2]}", f"{remote}:latest"]
    assert jde_engine.registry_digest(pushed["pushed"][0]) == pushed["digest"]

    # and a serving image named for a registry is pushed as it is named, no --registry needed
    named = f"{jde_open_registry}/scoring:{RUN}"
    assert serve_image(demo, "--tag", named)["built"] is False  # the same image, one more name
    assert cli.json("push", named)["pushed"] == [named]

    # rm takes a serving image too (one of its own: the module's image stays for other tests)
    model = demo["model"].with_name("model-to-remove.json")
    model.write_text(json.dumps({"weights": [1], "bias": 0, "run": RUN}))
    other = serve_image({**demo, "model": model})
    assert other["built"] is True
    assert other["id"] != built["id"]
    assert "removed" in cli("rm", other["image"]).stdout
    assert other["id"] not in {row["id"] for row in cli.json("list", "--serving")}
    assert built["id"] in {row["id"] for row in cli.json("list", "--serving")}
    missing = cli("rm", other["image"], ok=False)
    assert missing.returncode == 1
    assert "is no serving image" in missing.stderr
    assert "Traceback" not in missing.stderr


@docker
def test_the_environments_debian_packages_stay_but_not_their_headers(
    demo: dict[str, Any], jde_base_image: str, jde_engine: Engine, serving_sweep: None
) -> None:
    # Given an environment with a Debian tool and a -dev package (headers, and the library)
    env = demo["env"].parent / "serving-apt"
    env.mkdir(exist_ok=True)
    (env / "docker-env.toml").write_text(
        f'base = "{jde_base_image}"\napt = ["tini", "libexpat1-dev"]\n'
    )
    # When its serving image is built
    built = serve_image({**demo, "env": env})
    # Then the tool and the -dev package's library are there at their locked versions, the
    # headers are not
    check = (
        "command -v tini && dpkg-query -W -f='${Status}' libexpat1 "
        "&& ! dpkg-query -W libexpat1-dev && ! test -e /usr/include/expat.h"
    )
    assert "install ok installed" in jde_engine.run_output(built["image"], ["sh", "-c", check])
    assert built["size"] < built["env_image"]["size"]


# -- the REST API -------------------------------------------------------------------------------
@docker
@pytest.mark.docker_env_config({"builder": "legacy", "ca_bundle": CA_BUNDLE or ""})
async def test_rest_builds_lists_and_deletes_serving_images_of_workspace_models(
    jp_fetch: Any, jp_root_dir: Path, jde_base_image: str, serving_sweep: None
) -> None:
    # Given a built environment, and a training run's output and a handler in the workspace
    spec = {"name": "servingapi", "base": jde_base_image, "pip": ["python-dateutil"]}
    await call(jp_fetch, "envs", "POST", spec, expect=201)
    (jp_root_dir / "runs" / "r1" / "models").mkdir(parents=True)
    model = jp_root_dir / "runs" / "r1" / "models" / "model.json"
    model.write_text(json.dumps({"weights": [1, 1], "bias": 0, "run": RUN}))
    (jp_root_dir / "serve.py").write_text(HANDLER)
    body = {"model": "runs/r1/models/model.json", "handler": "serve.py:predict"}
    # A serving image of an environment that is not built yet is refused, saying what to do
    err = await call(jp_fetch, "envs/servingapi/serving", "POST", body, expect=409)
    assert "build it first" in err["message"]
    op = await call(jp_fetch, "envs/servingapi/builds", "POST", {}, expect=202)
    assert (await wait_operation(jp_fetch, op["id"]))["state"] == "succeeded"
    # Bad requests are 400s naming the field; an unknown environment is a 404
    for bad, field in (
        ({**body, "model": "../outside.json"}, "model"),
        ({**body, "handler": "serve.py:nope"}, "handler"),
        ({**body, "tag": "Not A Tag"}, "tag"),
        ({**body, "colour": "red"}, "colour"),
    ):
        err = await call(jp_fetch, "envs/servingapi/serving", "POST", bad, expect=400)
        assert err["field"] == field
    await call(jp_fetch, "envs/nope/serving", "POST", body, expect=404)

    # When a serving image is built, Then it is an operation followed like a build
    op = await call(jp_fetch, "envs/servingapi/serving", "POST", body, expect=202)
    assert op["kind"] == "serving-build"
    done = await wait_operation(jp_fetch, op["id"])
    assert done["state"] == "succeeded", done["log"][-20:]
    assert done["built"] is True
    assert any("Leaving out" in line for line in done["log"])
    # and it is listed with its size next to the environment's image size
    listed = await call(jp_fetch, "serving", params={"env": "servingapi"})
    (image,) = listed["images"]
    assert image["image"] == done["image"]
    env = await call(jp_fetch, "envs/servingapi")
    assert image["env_image"] == {"id": env["image"]["id"], "size": env["image"]["size"]}
    assert 0 < image["size"] < image["env_image"]["size"]
    assert image["model"]["path"] == "/opt/model/model.json"
    one = json.loads((await jp_fetch("jupyter-docker-env/api", "serving", image["id"][7:19])).body)
    check_schema("/serving/{id}", "get", 200, one)
    assert one == image
    # and pushing without a registry says what to set
    err = await call(jp_fetch, f"serving/{image['id'][7:19]}/push", "POST", expect=400)
    check_schema("/serving/{id}/push", "post", 400, err)
    assert err["field"] == "registry"
    # When it is deleted, Then it is gone
    resp = await jp_fetch(
        "jupyter-docker-env/api", "serving", image["id"][7:19], method="DELETE", raise_error=False
    )
    assert resp.code == 204
    assert (await call(jp_fetch, "serving", params={"env": "servingapi"}))["images"] == []
    resp = await jp_fetch("jupyter-docker-env/api", "serving", image["id"][7:19], raise_error=False)
    assert resp.code == 404
    check_schema("/serving/{id}", "get", 404, json.loads(resp.body))
    await call(jp_fetch, "envs/servingapi", "DELETE", expect=204)
