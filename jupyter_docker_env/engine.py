"""The one place that talks to the Docker engine.

Every call here blocks (the Docker SDK is synchronous). Code running on the server's event loop
awaits them through :meth:`Engine.run`, which hands them to one small thread pool, so a slow
engine never freezes the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import json
import os
import tarfile
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import docker
import docker.errors
from docker.types import DeviceRequest

T = TypeVar("T")

LABEL_PREFIX = "org.jupyter.docker-env"
LABEL_MANAGED = f"{LABEL_PREFIX}.managed"


def label(name: str) -> str:
    return f"{LABEL_PREFIX}.{name}"


class EngineError(Exception):
    """The engine refused or failed; the message says what to do."""


class EngineUnavailable(EngineError):
    """No Docker engine answers."""


class ImageNotFound(EngineError):
    pass


class RegistryError(EngineError):
    pass


@dataclass(frozen=True)
class EngineInfo:
    available: bool
    host: str | None
    version: str | None = None
    api_version: str | None = None
    reason: str | None = None
    runtimes: tuple[str, ...] = ()

    @property
    def gpu_runtime(self) -> bool:
        return "nvidia" in self.runtimes


def _unavailable_reason(host: str | None, exc: Exception) -> str:
    where = host or "the default socket (DOCKER_HOST unset)"
    return (
        f"No Docker engine answers at {where}: {exc}. Start Docker (on this project's dev "
        "machines: `make docker`), or point DOCKER_HOST / c.DockerEnvApp.docker_host at a "
        "running engine, then retry."
    )


class Engine:
    """A Docker engine reached through the Docker SDK, with an executor for async callers."""

    def __init__(self, host: str | None = None, timeout: int = 120, workers: int = 4) -> None:
        self.host = host or None
        self._timeout = timeout
        self._client: docker.DockerClient | None = None
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="docker-env")

    # -- plumbing ------------------------------------------------------------------------
    @property
    def client(self) -> docker.DockerClient:
        with self._lock:
            if self._client is None:
                try:
                    if self.host:
                        self._client = docker.DockerClient(
                            base_url=self.host, timeout=self._timeout
                        )
                    else:
                        self._client = docker.from_env(timeout=self._timeout)
                except docker.errors.DockerException as exc:
                    raise EngineUnavailable(_unavailable_reason(self.host, exc)) from exc
            return self._client

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking engine call off the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except docker.errors.APIError:
            raise  # the engine answered: callers map its refusals
        except (docker.errors.DockerException, OSError) as exc:  # socket missing, refused, …
            raise EngineUnavailable(_unavailable_reason(self.host, exc)) from exc

    # -- engine ----------------------------------------------------------------------------
    def info(self) -> EngineInfo:
        try:
            version = self._call(self.client.version)
            info = self._call(self.client.info)
        except EngineUnavailable as exc:
            return EngineInfo(available=False, host=self.host, reason=str(exc))
        except docker.errors.DockerException as exc:
            return EngineInfo(
                available=False, host=self.host, reason=_unavailable_reason(self.host, exc)
            )
        return EngineInfo(
            available=True,
            host=self.host or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock",
            version=version.get("Version"),
            api_version=version.get("ApiVersion"),
            runtimes=tuple(sorted((info.get("Runtimes") or {}).keys())),
        )

    # -- images ----------------------------------------------------------------------------
    def inspect_image(self, ref: str) -> dict[str, Any] | None:
        try:
            return self._call(self.client.api.inspect_image, ref)  # type: ignore[no-any-return]
        except docker.errors.ImageNotFound:
            return None
        except docker.errors.NotFound:
            return None

    def images(self, labels: dict[str, str | None]) -> list[dict[str, Any]]:
        filters = [k if v is None else f"{k}={v}" for k, v in labels.items()]
        # Untagged images (e.g. of a deleted environment, still used by a container) do not count.
        summaries = self._call(
            self.client.api.images, filters={"label": filters, "dangling": False}
        )
        return list(summaries)

    def remove_image(self, ref: str, force: bool = False) -> None:
        with contextlib.suppress(docker.errors.ImageNotFound):
            self._call(self.client.api.remove_image, ref, force=force, noprune=False)

    def remove_image_tags(self, summary: dict[str, Any]) -> None:
        """Untag an image, and remove it unless a container still uses it (it goes later)."""
        for ref in summary.get("RepoTags") or []:
            if ref != "<none>:<none>":
                self.remove_image(ref, force=True)
        try:
            self.remove_image(summary["Id"])
        except docker.errors.APIError as exc:
            if exc.status_code != 409:
                raise

    def tag(self, image: str, repository: str, tag: str) -> None:
        self._call(self.client.api.tag, image, repository, tag, force=True)

    def pull(self, ref: str, auth: dict[str, str] | None = None) -> Iterator[dict[str, Any]]:
        """Pull, yielding the engine's progress messages; raise RegistryError on failure."""
        return self._transfer(self.client.api.pull, ref, auth)

    def push(self, ref: str, auth: dict[str, str] | None = None) -> Iterator[dict[str, Any]]:
        """Push, yielding the engine's progress messages; raise RegistryError on failure."""
        return self._transfer(self.client.api.push, ref, auth)

    def _transfer(
        self, op: Callable[..., Any], ref: str, auth: dict[str, str] | None
    ) -> Iterator[dict[str, Any]]:
        repo, _, tag = _split_tag(ref)
        try:
            stream = self._call(
                op, repo, tag=tag or "latest", stream=True, decode=True, auth_config=auth
            )
            yield from _raise_on_error(stream, RegistryError)
        except docker.errors.APIError as exc:
            raise RegistryError(str(exc.explanation or exc)) from exc

    def registry_digest(self, ref: str, auth: dict[str, str] | None = None) -> str | None:
        """The registry's manifest digest of ``ref``, or None when the registry lacks it."""
        try:
            data = self._call(self.client.api.inspect_distribution, ref, auth_config=auth)
        except docker.errors.NotFound:
            return None
        except docker.errors.APIError as exc:
            text = str(exc.explanation or exc)
            if "manifest unknown" in text or "not found" in text.lower():
                return None
            raise RegistryError(text) from exc
        return str(data["Descriptor"]["digest"])

    def build(
        self,
        path: str,
        tag: str | None,
        labels: dict[str, str],
        nocache: bool = False,
        buildargs: dict[str, str] | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Build with the engine's (legacy) builder, yielding its decoded JSON messages."""
        return self._call(  # type: ignore[no-any-return]
            self.client.api.build,
            path=path,
            tag=tag,
            labels=labels,
            nocache=nocache,
            rm=True,
            forcerm=True,
            decode=True,
            buildargs=buildargs or None,
        )

    def add_labels(self, image: str, labels: dict[str, str], tag: str) -> str:
        """A new image that is ``image`` plus labels (metadata only: no new layer)."""
        dockerfile = f"FROM {image}\n" + "".join(
            f"LABEL {k}={json.dumps(v)}\n" for k, v in labels.items()
        )
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            data = dockerfile.encode()
            info = tarfile.TarInfo("Dockerfile")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        buf.seek(0)
        image_id = None
        for msg in self._call(
            self.client.api.build,
            fileobj=buf,
            custom_context=True,
            tag=tag,
            rm=True,
            decode=True,
        ):
            if "error" in msg:
                raise EngineError(msg["error"])
            if "aux" in msg and "ID" in msg["aux"]:
                image_id = msg["aux"]["ID"]
        if image_id is None:
            image_id = self.client.api.inspect_image(tag)["Id"]
        return str(image_id)

    def run_output(self, image: str, command: list[str], timeout: int = 120) -> str:
        """Run ``command`` in a throwaway container of ``image`` and return its stdout."""
        container = self._call(
            self.client.containers.create,
            image,
            command,
            labels={LABEL_MANAGED: "true"},
            network_disabled=True,
            entrypoint=[],
        )
        try:
            container.start()
            result = container.wait(timeout=timeout)
            out = container.logs(stdout=True, stderr=False).decode(errors="replace")
            if result.get("StatusCode", 1) != 0:
                err = container.logs(stdout=False, stderr=True).decode(errors="replace")
                raise EngineError(f"`{' '.join(command)}` failed in {image}: {err.strip()}")
            return str(out)
        finally:
            container.remove(force=True)

    # -- containers ------------------------------------------------------------------------
    def create_container(self, image: str, **kwargs: Any) -> dict[str, Any]:
        """Create a container; ``device_requests`` may be given as plain dicts."""
        requests = kwargs.pop("device_requests", None)
        if requests:
            kwargs["device_requests"] = [DeviceRequest(**r) for r in requests]
        container = self._call(self.client.containers.create, image, **kwargs)
        return container.attrs  # type: ignore[no-any-return]

    def start_container(self, container_id: str) -> None:
        self._call(self.client.api.start, container_id)

    def inspect_container(self, container_id: str) -> dict[str, Any] | None:
        try:
            return self._call(self.client.api.inspect_container, container_id)  # type: ignore[no-any-return]
        except docker.errors.NotFound:
            return None

    def kill_container(self, container_id: str, signal: str | int = "SIGKILL") -> None:
        try:
            self._call(self.client.api.kill, container_id, signal=signal)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            if "is not running" not in str(exc):
                raise

    def wait_container(self, container_id: str, timeout: float | None = None) -> int | None:
        try:
            result = self._call(self.client.api.wait, container_id, timeout=timeout)
        except docker.errors.NotFound:
            return None
        return int(result.get("StatusCode", -1))

    def remove_container(self, container_id: str) -> None:
        try:
            self._call(self.client.api.remove_container, container_id, force=True, v=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            if "already in progress" not in str(exc):
                raise

    def containers(self, labels: dict[str, str | None]) -> list[dict[str, Any]]:
        filters = [k if v is None else f"{k}={v}" for k, v in labels.items()]
        return list(self._call(self.client.api.containers, all=True, filters={"label": filters}))

    # -- kernels (used by the provisioner) -----------------------------------------------
    def system_info(self) -> dict[str, Any]:
        """The engine's raw ``docker info`` (OS, security options, runtimes)."""
        return self._call(self.client.api.info)  # type: ignore[no-any-return]

    def put_archive(self, container_id: str, path: str, data: bytes) -> None:
        """Unpack a tar archive into a (created or running) container; owners come from it."""
        self._call(self.client.api.put_archive, container_id, path, data)

    def container_logs(self, container_id: str, tail: int = 20) -> str:
        try:
            out = self._call(self.client.api.logs, container_id, tail=tail)
        except docker.errors.NotFound:
            return ""
        return bytes(out).decode(errors="replace")


def context_names(folder: str, patterns: list[str]) -> set[str]:
    """The files a `docker build` of ``folder`` sends, given its .dockerignore patterns."""
    from docker.utils.build import exclude_paths

    return set(exclude_paths(folder, patterns, dockerfile="Dockerfile"))


def _split_tag(ref: str) -> tuple[str, str, str]:
    """Split ``host:port/repo:tag`` into (repo, ':', tag); digests are kept whole."""
    if "@" in ref:
        return ref, "", ""
    head, sep, tail = ref.rpartition(":")
    if sep and "/" not in tail:
        return head, sep, tail
    return ref, "", ""


def _raise_on_error(
    stream: Iterator[dict[str, Any]], error: type[EngineError]
) -> Iterator[dict[str, Any]]:
    for msg in stream:
        if "error" in msg:
            raise error(str(msg.get("error")))
        yield msg


# Re-exported so that callers never import docker themselves.
APIError = docker.errors.APIError
NotFound = docker.errors.NotFound


_engines: dict[str | None, Engine] = {}
_engines_lock = threading.Lock()


def shared_engine(host: str | None = None) -> Engine:
    """One Engine (one client, one thread pool) per Docker host for the whole process."""
    with _engines_lock:
        if host not in _engines:
            _engines[host] = Engine(host)
        return _engines[host]
