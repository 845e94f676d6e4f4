"""The model server's WSGI application: ``POST /predict``, ``GET /healthz``, ``GET /readyz``.

The handler is a Python file and a function in it (``SERVING_HANDLER=/opt/handler/x.py:predict``).
Each worker imports it and, when it defines ``load(path)``, calls that once with the model's path
(``SERVING_MODEL_PATH``), in the background: ``/healthz`` answers at once, ``/readyz`` says 503
until the model is loaded, and ``/predict`` waits for it (up to ``SERVING_LOAD_WAIT`` seconds,
then 503), so a worker that gunicorn restarts never fails a request. ``/predict`` calls
``FUNCTION(payload)`` with the request's JSON and answers its return value as JSON; a
``(body, status)`` tuple sets the status.

Behind gunicorn's several workers, ``/readyz`` speaks for the container: 200 only once every
worker has loaded the model (each marks itself in ``SERVING_READY_DIR``), so a probe or a client
that got 200 is never sent to a worker still loading.

Input errors are 4xx with a message (no body, bad JSON, too large); a handler that raises is a 500
whose body says only that, with a request id; the traceback goes to the log under that id.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from http import HTTPStatus
from pathlib import Path
from types import ModuleType
from typing import Any

log = logging.getLogger("docker_env_serving")

DEFAULT_MAX_REQUEST_BYTES = 10 * 1024 * 1024
DEFAULT_LOAD_WAIT = 30.0
REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
ROUTES = {"/predict": ("POST",), "/healthz": ("GET", "HEAD"), "/readyz": ("GET", "HEAD")}

StartResponse = Callable[..., Any]


class RequestError(Exception):
    """A request the server cannot take as sent (a 4xx)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class ServingApp:
    """One worker's application: its handler, its model, and its state."""

    def __init__(
        self,
        handler: str,
        model_path: str,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        on_load_error: Callable[[BaseException], None] | None = None,
        load_wait: float = DEFAULT_LOAD_WAIT,
        workers: int = 1,
        ready_dir: str = "",
    ) -> None:
        file, _, function = handler.rpartition(":")
        if not file or not function:
            raise ValueError(f"the handler {handler!r} is not FILE.py:FUNCTION")
        self.handler_file = file
        self.function_name = function
        self.model_path = model_path
        self.max_request_bytes = max_request_bytes
        self.on_load_error = on_load_error
        self.load_wait = load_wait
        self.workers = max(1, workers)
        self.ready_dir = Path(ready_dir) if ready_dir else None
        self.state = "loading"  # then "ready" or "failed"
        self._loaded = threading.Event()  # set when the loading ended, either way
        self._function: Callable[[Any], Any] | None = None
        self._loader: threading.Thread | None = None
        self._start_lock = threading.Lock()

    @classmethod
    def from_environ(
        cls,
        environ: Mapping[str, str] = os.environ,
        on_load_error: Callable[[BaseException], None] | None = None,
    ) -> ServingApp:
        missing = [k for k in ("SERVING_HANDLER", "SERVING_MODEL_PATH") if not environ.get(k)]
        if missing:
            raise RuntimeError(f"{', '.join(missing)} must be set (the serving image sets them)")
        limits = {}
        for name, default in (
            ("SERVING_MAX_REQUEST_BYTES", DEFAULT_MAX_REQUEST_BYTES),
            ("SERVING_LOAD_WAIT", int(DEFAULT_LOAD_WAIT)),
            ("SERVING_WORKERS", 1),
        ):
            value = environ.get(name) or str(default)
            if not value.isdigit():
                raise RuntimeError(f"{name}={value!r} is not a whole number")
            limits[name] = int(value)
        return cls(
            environ["SERVING_HANDLER"],
            environ["SERVING_MODEL_PATH"],
            max_request_bytes=max(1, limits["SERVING_MAX_REQUEST_BYTES"]),
            on_load_error=on_load_error,
            load_wait=limits["SERVING_LOAD_WAIT"],
            workers=limits["SERVING_WORKERS"],
            ready_dir=environ.get("SERVING_READY_DIR", ""),
        )

    # -- loading -------------------------------------------------------------------------
    def start(self) -> None:
        """Import the handler and load the model in the background (once)."""
        with self._start_lock:
            if self._loader is None:
                self._loader = threading.Thread(target=self._load, name="model-loader", daemon=True)
                self._loader.start()

    def wait(self, timeout: float | None = None) -> str:
        """Wait for the loading to end; the state it ended in ("loading": not yet)."""
        self._loaded.wait(timeout)
        return self.state

    def _load(self) -> None:
        started = time.monotonic()
        try:
            module = import_file(self.handler_file)
            function = getattr(module, self.function_name, None)
            if not callable(function):
                raise RuntimeError(f"{self.handler_file} has no function {self.function_name}")
            load = getattr(module, "load", None)
            if callable(load) and load is not function:
                load(self.model_path)
        except BaseException as exc:
            self.state = "failed"
            log.exception(
                "loading the handler %s and the model %s failed",
                self.handler_file,
                self.model_path,
            )
            try:
                if self.on_load_error is not None:
                    self.on_load_error(exc)
            finally:
                self._loaded.set()
            return
        self._function = function
        self.state = "ready"
        if self.ready_dir is not None:
            self.ready_dir.mkdir(parents=True, exist_ok=True)
            (self.ready_dir / str(os.getpid())).touch()
        self._loaded.set()
        log.info(
            "worker %d: model %s loaded in %.2f s",
            os.getpid(),
            self.model_path,
            time.monotonic() - started,
        )

    # -- requests ------------------------------------------------------------------------
    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        method = environ.get("REQUEST_METHOD", "GET")
        methods = ROUTES.get(path)
        if methods is None:
            routes = ", ".join(f"{m[0]} {p}" for p, m in ROUTES.items())
            return reply(start_response, 404, {"error": f"no such route {path}; try {routes}"})
        if method not in methods:
            return reply(
                start_response,
                405,
                {"error": f"{path} takes {' or '.join(methods)}"},
                [("Allow", ", ".join(methods))],
            )
        if path == "/healthz":
            return reply(start_response, 200, {"status": "ok"})
        if path == "/readyz":
            if self.state == "ready" and self._all_workers_ready():
                return reply(start_response, 200, {"status": "ready"})
            state = "loading" if self.state == "ready" else self.state  # others still load
            return reply(start_response, 503, {"status": state}, [("Retry-After", "1")])
        return self._predict(environ, start_response)

    def _all_workers_ready(self) -> bool:
        """Every live worker of the container has loaded the model (marked by pid)."""
        if self.ready_dir is None or self.workers <= 1:
            return True
        live = [p for p in self.ready_dir.iterdir() if Path("/proc", p.name).exists()]
        return len(live) >= self.workers

    def _predict(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        request_id = environ.get("HTTP_X_REQUEST_ID") or ""
        if not REQUEST_ID.match(request_id):
            request_id = uuid.uuid4().hex[:16]
        headers = [("X-Request-ID", request_id)]
        if self.wait(self.load_wait) != "ready" or self._function is None:
            message = "the model is still loading" if self.state == "loading" else "no model"
            return reply(start_response, 503, {"error": message}, [*headers, ("Retry-After", "1")])
        try:
            payload = self._payload(environ)
        except RequestError as exc:
            return reply(start_response, exc.status, {"error": exc.message}, headers)
        try:
            result = self._function(payload)
            status = 200
            if (
                isinstance(result, tuple)
                and len(result) == 2
                and isinstance(result[1], int)
                and 200 <= result[1] <= 599
            ):
                result, status = result
            body = json.dumps(result, default=jsonable).encode()
        except Exception:
            log.exception("request %s: %s(payload) failed", request_id, self.function_name)
            error = {"error": "internal error (logged on the server)", "request_id": request_id}
            return reply(start_response, 500, error, headers)
        return reply_bytes(start_response, status, body, headers)

    def _payload(self, environ: dict[str, Any]) -> Any:
        limit = self.max_request_bytes
        stream = environ["wsgi.input"]
        length = environ.get("CONTENT_LENGTH") or ""
        if length:
            if not length.isdigit():
                raise RequestError(400, "Content-Length is not a number")
            if int(length) > limit:
                raise RequestError(413, f"the request body is larger than {limit} bytes")
            data = stream.read(int(length))
        else:  # chunked, or no length: read no more than the limit
            data = stream.read(limit + 1)
            if len(data) > limit:
                raise RequestError(413, f"the request body is larger than {limit} bytes")
        if not data.strip():
            raise RequestError(
                400, 'the request body is empty: send JSON, e.g. {"features": [1, 2]}'
            )
        try:
            return json.loads(data)
        except UnicodeDecodeError as exc:
            raise RequestError(400, f"the request body is not UTF-8 JSON: {exc.reason}") from exc
        except ValueError as exc:
            raise RequestError(400, f"the request body is not valid JSON: {exc}") from exc
        except RecursionError as exc:
            raise RequestError(400, "the request body is nested too deeply") from exc


def reply(
    start_response: StartResponse,
    status: int,
    data: Any,
    headers: list[tuple[str, str]] | None = None,
) -> list[bytes]:
    return reply_bytes(start_response, status, json.dumps(data).encode(), headers)


def reply_bytes(
    start_response: StartResponse,
    status: int,
    body: bytes,
    headers: list[tuple[str, str]] | None = None,
) -> list[bytes]:
    start_response(
        f"{status} {HTTPStatus(status).phrase}",
        [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            *(headers or []),
        ],
    )
    return [body]


def jsonable(value: Any) -> Any:
    """NumPy arrays and scalars (and anything else with ``tolist``) as JSON; else a TypeError."""
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def import_file(path: str) -> ModuleType:
    """Import a Python file under its own name, so that pickles naming it find it."""
    file = Path(path)
    spec = importlib.util.spec_from_file_location(file.stem, file)
    if spec is None or spec.loader is None:
        raise ImportError(f"{path} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[file.stem] = module
    spec.loader.exec_module(module)
    return module


def create_app() -> ServingApp:
    """The application gunicorn runs in each worker (``docker_env_serving.wsgi:create_app()``);
    its post_worker_init hook starts the loading."""
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            logging.Formatter("[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s")
        )
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
    return ServingApp.from_environ(on_load_error=_stop_server)


def _stop_server(exc: BaseException) -> None:
    # gunicorn's WORKER_BOOT_ERROR: the arbiter stops the whole server instead of restarting the
    # worker, so a model that cannot load stops the container with the traceback in its log.
    os._exit(3)
