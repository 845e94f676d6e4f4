"""The one place that talks to the Docker engine.

Every call here blocks (the Docker SDK is synchronous). Code running on the server's event loop
awaits short calls (inspect, poll, kill) through :meth:`Engine.run`, which hands them to the
engine's own small thread pool; long work (builds, pushes, pulls, listings) runs on the executors
of the services that own it, so a build never delays a kernel's poll.

Builds go through BuildKit where the engine offers it and a Docker CLI that can drive it is
installed (docker-py itself only speaks the legacy builder), with cache mounts for pip and apt;
otherwise through the legacy builder. Both yield the same :class:`BuildEvent` stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal, TypeVar

import docker
import docker.errors
from docker.types import DeviceRequest

from .labels import MANAGED, ROLE, label_instruction
from .models import EngineStatus

T = TypeVar("T")
Builder = Literal["buildkit", "legacy"]
BuilderSetting = Literal["auto", "buildkit", "legacy"]


class EngineError(Exception):
    """The engine refused or failed; the message says what to do."""


class EngineUnavailable(EngineError):
    """No Docker engine answers."""


class ImageNotFound(EngineError):
    pass


class RegistryError(EngineError):
    pass


@dataclass(frozen=True)
class BuildEvent:
    """One thing a build reported, the same for both builders.

    ``kind`` is "step" (``step``/``total``/``text`` is the instruction), "line" (output of
    ``step``; 0: of no step), "error" (``text`` is the engine's reason, ``step`` the failing one,
    0 when it failed outside a step; every line of that step came before) or "image" (``text``
    is the built image's id).
    """

    kind: Literal["step", "line", "error", "image"]
    text: str
    step: int = 0
    total: int = 0


def _unavailable_reason(host: str | None, exc: Exception) -> str:
    if host:
        where = host
    elif env_host := os.environ.get("DOCKER_HOST"):
        where = f"{env_host} (DOCKER_HOST)"
    else:
        where = "the default socket /var/run/docker.sock (DOCKER_HOST unset)"
    return (
        f"No Docker engine answers at {where}: {exc}. Start Docker (on this project's dev "
        "machines: `make docker`), or point DOCKER_HOST / c.DockerEnvApp.docker_host at a "
        "running engine, then retry."
    )


class Engine:
    """A Docker engine reached through the Docker SDK, with an executor for async callers."""

    def __init__(
        self,
        host: str | None = None,
        timeout: int = 120,
        workers: int = 4,
        builder: BuilderSetting | str = "auto",
        docker_cli: str = "",
    ) -> None:
        self.host = host or None
        self._timeout = timeout
        self._client: docker.DockerClient | None = None
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="docker-env")
        self._builder_setting = builder
        self._docker_cli = docker_cli
        self._buildkit_cli: str | Literal[False] | None = False  # False: not looked up yet

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
    def info(self) -> EngineStatus:
        try:
            version = self._call(self.client.version)
            info = self._call(self.client.info)
        except EngineUnavailable as exc:
            return EngineStatus(available=False, host=self.host, reason=str(exc))
        except docker.errors.DockerException as exc:
            return EngineStatus(
                available=False, host=self.host, reason=_unavailable_reason(self.host, exc)
            )
        return EngineStatus(
            available=True,
            host=self.host or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock",
            version=version.get("Version"),
            api_version=version.get("ApiVersion"),
            runtimes=tuple(sorted((info.get("Runtimes") or {}).keys())),
            builder=self.builder(),
        )

    # -- builders --------------------------------------------------------------------------
    def builder(self) -> Builder:
        """The builder that builds here: "buildkit" when both the engine and a Docker CLI can,
        unless configured otherwise; "legacy" else."""
        if self._builder_setting == "legacy":
            return "legacy"
        cli = self.buildkit_cli()
        if cli is None and self._builder_setting == "buildkit":
            raise EngineError(
                "c.DockerEnvApp.builder is 'buildkit' but no Docker CLI here can build with "
                "BuildKit against this engine (a client before 23.0, or one with the buildx "
                "plugin, and an engine of API 1.39 or later). Install one, set "
                "c.DockerEnvApp.docker_cli to its path, or set the builder to 'auto'."
            )
        return "buildkit" if cli else "legacy"

    def buildkit_cli(self) -> str | None:
        """A Docker CLI that drives this engine's BuildKit, or None. Looked up once."""
        if self._buildkit_cli is False:
            self._buildkit_cli = self._find_buildkit_cli()
        return self._buildkit_cli

    def _find_buildkit_cli(self) -> str | None:
        try:
            api = str(self._call(self.client.version).get("ApiVersion", "0"))
        except (EngineError, docker.errors.DockerException):
            return None
        if tuple(int(p) for p in api.split(".")[:2]) < (1, 39):
            return None
        candidates = [self._docker_cli] if self._docker_cli else []
        candidates += [shutil.which("docker") or "", "/usr/bin/docker"]
        for cli in dict.fromkeys(c for c in candidates if c and os.access(c, os.X_OK)):
            # Docker 23+ builds through the buildx plugin; older clients have BuildKit built in.
            if self._cli_ok(cli, "buildx", "version"):
                return cli
            version = self._cli_output(cli, "version", "--format", "{{.Client.Version}}")
            if version and version.split(".")[0].isdigit() and int(version.split(".")[0]) < 23:
                return cli
        return None

    def _cli_env(self) -> dict[str, str]:
        env = {**os.environ, "DOCKER_BUILDKIT": "1"}
        if self.host:
            env["DOCKER_HOST"] = self.host
        return env

    def _cli_ok(self, cli: str, *args: str) -> bool:
        return self._cli_output(cli, *args) is not None

    def _cli_output(self, cli: str, *args: str) -> str | None:
        try:
            out = subprocess.run(
                [cli, *args],
                env=self._cli_env(),
                capture_output=True,
                text=True,
                timeout=20,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    # -- images ----------------------------------------------------------------------------
    def inspect_image(self, ref: str) -> dict[str, Any] | None:
        try:
            return self._call(self.client.api.inspect_image, ref)  # type: ignore[no-any-return]
        except docker.errors.ImageNotFound:
            return None
        except docker.errors.NotFound:
            return None

    def images(
        self,
        labels: dict[str, str | None] | None = None,
        reference: str | None = None,
        dangling: bool = False,
    ) -> list[dict[str, Any]]:
        """Image summaries with these labels (a None value: any) and repository reference
        (``repo`` or ``repo:tag``, globs allowed); untagged ones only when ``dangling``."""
        filters: dict[str, Any] = {"dangling": dangling}
        if labels:
            filters["label"] = [k if v is None else f"{k}={v}" for k, v in labels.items()]
        if reference:
            filters["reference"] = reference
        return list(self._call(self.client.api.images, filters=filters))

    def remove_image(self, ref: str, force: bool = False) -> None:
        with contextlib.suppress(docker.errors.ImageNotFound):
            self._call(self.client.api.remove_image, ref, force=force, noprune=False)

    def remove_image_tags(self, summary: dict[str, Any], repository: str) -> None:
        """Remove ``repository``'s tags of an image. The image goes with its last tag, unless
        another repository still names it or a container still uses it (it goes later)."""
        for ref in summary.get("RepoTags") or []:
            if ref.rpartition(":")[0] == repository:
                self.remove_image(ref, force=True)
        self.remove_if_unused(summary["Id"])

    def remove_if_unused(self, image_id: str) -> None:
        """Remove an image that no tag names and no container uses; keep it otherwise."""
        data = self.inspect_image(image_id)
        if data is None or data.get("RepoTags"):
            return
        try:
            self.remove_image(image_id)
        except docker.errors.APIError as exc:
            if exc.status_code != 409:  # in use, or the parent of another image
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
                op,
                repo,
                # a digest (repo@sha256:…) is its own tag: docker-py reads it from the name
                tag=tag or (None if "@" in ref else "latest"),
                stream=True,
                decode=True,
                auth_config=auth,
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
        context: str,
        dockerfile: str,
        builder: Builder,
        labels: dict[str, str] | None = None,
        nocache: bool = False,
        buildargs: dict[str, str] | None = None,
    ) -> Iterator[BuildEvent]:
        """Build ``dockerfile`` (an absolute path, inside the context or not) with ``builder``.

        Yields the build's events, the same for both builders; the last is the "image" or an
        "error". Closing the iterator stops the build. BuildKit takes ``labels`` as metadata; the
        legacy builder would turn each into a build step, so callers put them in the Dockerfile.
        """
        if builder == "buildkit":
            return self._build_buildkit(context, dockerfile, labels or {}, nocache, buildargs)
        if labels:
            raise ValueError("the legacy builder takes labels in the Dockerfile (one LABEL line)")
        return self._build_legacy(context, dockerfile, nocache, buildargs)

    def _build_legacy(
        self, context: str, dockerfile: str, nocache: bool, buildargs: dict[str, str] | None
    ) -> Iterator[BuildEvent]:
        archive = _context_archive(context, dockerfile)
        stream = self._call(
            self.client.api.build,
            fileobj=archive,
            custom_context=True,
            dockerfile="Dockerfile",
            nocache=nocache,
            rm=True,
            forcerm=True,
            decode=True,
            buildargs=buildargs or None,
        )
        step, total = 0, 0
        partial = ""  # the engine sends output in chunks that may end inside a line

        def lines(text: str) -> Iterator[BuildEvent]:
            nonlocal step, total
            # The legacy builder colours what a step writes to stderr, write by write.
            for line in _ANSI.sub("", text).splitlines():
                if m := _LEGACY_STEP.match(line):
                    step, total = int(m[1]), int(m[2])
                    yield BuildEvent("step", m[3], step, total)
                elif line.strip():
                    yield BuildEvent("line", line.strip(), step, total)

        error = None  # reported once the stream ends: a step's last output may come after it
        try:
            for msg in stream:
                if "stream" in msg:
                    complete, _, partial = (partial + str(msg["stream"])).rpartition("\n")
                    yield from lines(complete)
                    continue
                yield from lines(partial)
                partial = ""
                if "error" in msg:
                    error = error or BuildEvent("error", str(msg["error"]).strip(), step, total)
                elif "aux" in msg and "ID" in msg["aux"]:
                    yield BuildEvent("image", str(msg["aux"]["ID"]))
                elif "status" in msg and not msg.get("progressDetail"):
                    # pulling the base image: one line per layer state, not per chunk
                    status = str(msg["status"])
                    line = f"{msg['id']}: {status}" if msg.get("id") else status
                    yield BuildEvent("line", line, step, total)
            yield from lines(partial)
            if error is not None:
                yield error
        except docker.errors.DockerException as exc:
            raise EngineUnavailable(_unavailable_reason(self.host, exc)) from exc
        finally:
            with contextlib.suppress(Exception):
                stream.close()
            archive.close()

    def _build_buildkit(
        self,
        context: str,
        dockerfile: str,
        labels: dict[str, str],
        nocache: bool,
        buildargs: dict[str, str] | None,
    ) -> Iterator[BuildEvent]:
        cli = self.buildkit_cli()
        if cli is None:
            raise EngineError("no Docker CLI here can build with BuildKit")
        with tempfile.TemporaryDirectory(prefix="docker-env-iid-") as tmp:
            iidfile = Path(tmp) / "iid"
            cmd = [cli, "build", "--progress=plain", "--iidfile", str(iidfile), "-f", dockerfile]
            if nocache:
                cmd.append("--no-cache")
            for key, value in labels.items():
                cmd += ["--label", f"{key}={value}"]
            for key, value in (buildargs or {}).items():
                cmd += ["--build-arg", f"{key}={value}"]
            cmd.append(context)
            proc = subprocess.Popen(
                cmd,
                env=self._cli_env(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                errors="replace",
            )
            assert proc.stdout is not None
            parser = _BuildKitProgress()
            try:
                # Read to the end even after a step failed: its last lines may come later.
                for raw in proc.stdout:
                    yield from parser.feed(raw.rstrip("\n"))
                code = proc.wait()
                if parser.error is not None:
                    yield parser.error
                elif code != 0 or not iidfile.is_file():
                    reason = parser.summary or f"docker build exited with code {code}"
                    if "Cannot connect to the Docker daemon" in reason:
                        raise EngineUnavailable(_unavailable_reason(self.host, Exception(reason)))
                    yield BuildEvent("error", reason, *parser.failed)
                else:
                    yield BuildEvent("image", iidfile.read_text().strip())
            finally:
                if proc.poll() is None:
                    proc.kill()  # the consumer stopped listening: cancelled
                proc.wait()
                proc.stdout.close()

    def add_labels(self, image: str, labels: dict[str, str], tag: str) -> str:
        """A new image that is ``image`` plus labels (metadata only: no new layer)."""
        dockerfile = f"FROM {image}\n{label_instruction(labels)}"
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
        """Run ``command`` in a throwaway, confined container of ``image``; return its stdout.

        It runs as nobody, without network, capabilities or a writable root: reading what an
        image holds (its lock) needs none of them.
        """
        attrs = self.create_container(
            image,
            command=command,
            entrypoint=[],
            labels={MANAGED: "true", ROLE: "inspect"},
            user="65534:65534",
            network_disabled=True,
            read_only=True,
            tmpfs={"/tmp": "size=64m"},
            cap_drop=["ALL"],
            security_opt=["no-new-privileges:true"],
            pids_limit=64,
            mem_limit=512 * 1024**2,
        )
        container_id = str(attrs["Id"])
        try:
            self.start_container(container_id)
            result = self._call(self.client.api.wait, container_id, timeout=timeout)
            logs = self.client.api.logs
            out = self._call(logs, container_id, stdout=True, stderr=False)
            if result.get("StatusCode", 1) != 0:
                err = bytes(self._call(logs, container_id, stdout=False, stderr=True))
                reason = err.decode(errors="replace").strip()
                raise EngineError(f"`{' '.join(command)}` failed in {image}: {reason}")
            return bytes(out).decode(errors="replace")
        finally:
            self.remove_container(container_id)

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

    # -- networks and volumes (used by the launch broker) ------------------------------------
    def inspect_network(self, name: str) -> dict[str, Any] | None:
        try:
            return self._call(self.client.api.inspect_network, name)  # type: ignore[no-any-return]
        except docker.errors.NotFound:
            return None

    def remove_volume(self, name: str) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            self._call(self.client.api.remove_volume, name, force=True)

    def inspect_volume(self, name: str) -> dict[str, Any] | None:
        try:
            return self._call(self.client.api.inspect_volume, name)  # type: ignore[no-any-return]
        except docker.errors.NotFound:
            return None

    # -- kernels (used by the provisioner) -----------------------------------------------
    def api_version(self) -> str:
        return str(self._call(self.client.version).get("ApiVersion", ""))

    def system_info(self) -> dict[str, Any]:
        """The engine's raw ``docker info`` (OS, security options, runtimes)."""
        return self._call(self.client.api.info)  # type: ignore[no-any-return]

    def put_archive(self, container_id: str, path: str, data: bytes) -> None:
        """Unpack a tar archive into a (created or running) container; owners come from it."""
        self._call(self.client.api.put_archive, container_id, path, data)

    def container_changes(self, container_id: str) -> list[str]:
        """Paths added or changed in the container's own file system (``docker diff``)."""
        try:
            changes = self._call(self.client.api.diff, container_id) or []
        except docker.errors.NotFound:
            return []
        return [str(c["Path"]) for c in changes if c.get("Kind") in (0, 1)]

    def copy_from_container(self, container_id: str, path: str, into: IO[bytes]) -> None:
        """Write a tar of ``path`` in the container (running or exited) into ``into``."""
        stream, _ = self._call(self.client.api.get_archive, container_id, path)
        for chunk in stream:
            into.write(chunk)

    def rename_container(self, container_id: str, name: str) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            self._call(self.client.api.rename, container_id, name)

    def container_memory(self, container_id: str) -> int | None:
        """Bytes of memory the container uses now, as `docker stats` counts them (its page
        cache left out); None when it is gone."""
        try:
            try:
                stats = self._call(self.client.api.stats, container_id, stream=False, one_shot=True)
            except docker.errors.InvalidVersion:  # engines before API 1.41 sample for ~2 s
                stats = self._call(self.client.api.stats, container_id, stream=False)
        except docker.errors.NotFound:
            return None
        memory = stats.get("memory_stats") or {}
        if "usage" not in memory:
            return None
        detail = memory.get("stats") or {}
        # cgroup v1 counts the page cache as "cache", v2 as "inactive_file"
        cache = detail.get("inactive_file", detail.get("cache", 0))
        return max(int(memory["usage"]) - int(cache), 0)

    def follow_logs(self, container_id: str) -> Iterator[str]:
        """The container's output line by line as it comes, until the container stops."""
        try:
            stream = self._call(self.client.api.logs, container_id, stream=True, follow=True)
        except docker.errors.NotFound:
            return
        pending = b""
        try:
            for chunk in stream:
                *lines, pending = (pending + chunk).split(b"\n")
                for line in lines:
                    yield line.decode(errors="replace")
        finally:
            with contextlib.suppress(Exception):
                stream.close()
        if pending:
            yield pending.decode(errors="replace")

    def container_logs(self, container_id: str, tail: int = 20) -> str:
        try:
            out = self._call(self.client.api.logs, container_id, tail=tail)
        except docker.errors.NotFound:
            return ""
        return bytes(out).decode(errors="replace")

    def connect_network(self, network: str, container_id: str) -> None:
        self._call(self.client.api.connect_container_to_network, container_id, network)

    # -- networks --------------------------------------------------------------------------
    def networks(self, labels: Mapping[str, str | None]) -> list[dict[str, Any]]:
        return list(self._call(self.client.api.networks, filters=_label_filter(labels)))

    def create_network(self, name: str, **kwargs: Any) -> str:
        """Create a network (``driver``, ``attachable``, ``labels``, ``options``); its id."""
        return str(self._call(self.client.api.create_network, name, **kwargs)["Id"])

    def in_swarm(self, network_id: str) -> bool:
        """Is this network in the Swarm's store? (A removed overlay lingers in listings while
        its last endpoints go.)"""
        try:
            self._call(self.client.api.inspect_network, network_id, scope="swarm")
        except docker.errors.NotFound:
            return False
        return True

    def remove_network(self, network_id: str) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            self._call(self.client.api.remove_network, network_id)

    # -- swarm (the engine must be a manager) -----------------------------------------------
    def create_service(self, spec: dict[str, Any]) -> str:
        """Create a service from its API spec (Name, Labels, TaskTemplate, Mode, …); its id.

        Registry credentials of the Docker config go with it, so nodes can pull.
        """
        args = {k: spec[k] for k in ("Labels", "Mode", "EndpointSpec") if k in spec}
        created = self._call(
            self.client.api.create_service,
            spec["TaskTemplate"],
            name=spec.get("Name"),
            labels=args.get("Labels"),
            mode=args.get("Mode"),
            endpoint_spec=args.get("EndpointSpec"),
        )
        return str(created["ID"])

    def scale_service(self, service_id: str, replicas: int) -> None:
        """Set a replicated service's replicas (0 stops its tasks, keeping the service)."""
        current = self.inspect_service(service_id)
        if current is None:
            return
        with contextlib.suppress(docker.errors.NotFound):
            self._call(
                self.client.api.update_service,
                service_id,
                current["Version"]["Index"],
                mode={"Replicated": {"Replicas": replicas}},
                fetch_current_spec=True,
            )

    def inspect_service(self, service_id: str) -> dict[str, Any] | None:
        try:
            return self._call(self.client.api.inspect_service, service_id)  # type: ignore[no-any-return]
        except docker.errors.NotFound:
            return None

    def services(self, labels: Mapping[str, str | None]) -> list[dict[str, Any]]:
        return list(self._call(self.client.api.services, filters=_label_filter(labels)))

    def remove_service(self, service_id: str) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            self._call(self.client.api.remove_service, service_id)

    def tasks(self, service_id: str) -> list[dict[str, Any]]:
        """The service's tasks, newest first (none once the service is gone)."""
        try:
            found = self._call(self.client.api.tasks, filters={"service": service_id})
        except docker.errors.NotFound:
            return []
        return sorted(found, key=lambda t: t.get("CreatedAt", ""), reverse=True)

    def service_logs(self, service_id: str, tail: int = 20) -> str:
        """The tasks' output, gathered from their nodes by the manager."""
        try:
            frames = self._call(
                self.client.api.service_logs,
                service_id,
                stdout=True,
                stderr=True,
                tail=tail,
                is_tty=False,
            )
            return b"".join(frames).decode(errors="replace")
        except docker.errors.NotFound:
            return ""

    def nodes(self) -> list[dict[str, Any]]:
        return list(self._call(self.client.api.nodes))

    def create_secret(self, name: str, data: bytes, labels: dict[str, str]) -> str:
        return str(self._call(self.client.api.create_secret, name, data, labels=labels)["ID"])

    def secrets(self, labels: Mapping[str, str | None]) -> list[dict[str, Any]]:
        return list(self._call(self.client.api.secrets, filters=_label_filter(labels)))

    def remove_secret(self, secret_id: str) -> None:
        try:
            self._call(self.client.api.remove_secret, secret_id)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            if "in use" not in str(exc):  # its service is still going away: swept later
                raise


def _label_filter(labels: Mapping[str, str | None]) -> dict[str, list[str]]:
    """A ``filters`` argument for objects with these labels (a None value: any)."""
    return {"label": [k if v is None else f"{k}={v}" for k, v in labels.items()]}


_LEGACY_STEP = re.compile(r"^Step (\d+)/(\d+) : (.*)$")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class _BuildKitProgress:
    """Turns ``docker build --progress=plain`` output into :class:`BuildEvent`s.

    Its lines are ``#N [k/T] INSTRUCTION`` when vertex N starts step k of T (``#N [internal]
    …`` for the builder's own work), ``#N 1.23 text`` for output, ``#N CACHED``, ``#N DONE 0.4s``
    and ``#N ERROR: reason``; after a failure, a summary names the failing step (`` > [k/T]
    INSTRUCTION:``) and ends with the reason. The first failure is kept in ``error`` for the
    end of the output, so that every line of the failing step comes before it.

    When another build runs the same step at the same time, BuildKit runs it once for both and
    may show this one no more than its failure: the summary then names the step.
    """

    _VERTEX = re.compile(r"^#(\d+) (.*)$")
    _STEP = re.compile(r"^\[(?:[^\]]*? )?(\d+)/(\d+)\] (.*)$")
    _FAILED = re.compile(r"^ > \[(?:[^\]]*? )?(\d+)/(\d+)\] (.*):$")
    _OUTPUT = re.compile(r"^\d+\.\d+ (.*)$")
    _STATUS = re.compile(r"^(?:\d+\.\d+ |CACHED$|DONE |ERROR|CANCELED|sha256:)")

    def __init__(self) -> None:
        self.summary = ""
        self.error: BuildEvent | None = None
        self.failed: tuple[int, int] = (0, 0)  # the step the summary names
        self._names: dict[str, str] = {}  # vertex → what it does
        self._steps: dict[str, tuple[int, int]] = {}  # vertex → (step, total)
        self._shown: set[int] = set()

    def feed(self, line: str) -> Iterator[BuildEvent]:
        m = self._VERTEX.match(line)
        if not m:
            yield from self._summary(line)
            return
        vertex, rest = m[1], m[2]
        if vertex not in self._names and not self._STATUS.match(rest):
            self._names[vertex] = rest
            if found := self._STEP.match(rest):
                self._steps[vertex] = (int(found[1]), int(found[2]))
                yield from self._step(int(found[1]), int(found[2]), found[3])
            return
        if vertex not in self._steps and self.failed[0]:
            self._steps[vertex] = self.failed  # the failing step's last lines, in the summary
        step, total = self._steps.get(vertex, (0, 0))
        if out := self._OUTPUT.match(rest):
            if out[1].strip():
                yield BuildEvent("line", out[1].strip(), step, total)
        elif rest == "CACHED":
            if step:
                yield BuildEvent("line", "---> Using cache", step, total)
        elif rest.startswith("ERROR:") and self.error is None:
            reason = rest[len("ERROR:") :].strip()
            if not step and vertex in self._names:  # the builder's own work, e.g. the base
                reason = f"{self._names[vertex]}: {reason}"
            self.error = BuildEvent("error", reason, step, total)

    def _step(self, step: int, total: int, instruction: str) -> Iterator[BuildEvent]:
        if step not in self._shown:
            self._shown.add(step)
            yield BuildEvent("step", instruction, step, total)

    def _summary(self, line: str) -> Iterator[BuildEvent]:
        if found := self._FAILED.match(line):
            self.failed = (int(found[1]), int(found[2]))
            yield from self._step(*self.failed, found[3])
            if self.error is not None and not self.error.step:
                self.error = BuildEvent("error", self.error.text, *self.failed)
        elif line.startswith(("error:", "ERROR:")):
            self.summary = line.split(":", 1)[1].strip()
        elif line.startswith(("failed to solve", "executor failed")):
            self.summary = line


def context_names(folder: str, patterns: list[str] | None = None) -> set[str]:
    """The files a `docker build` of ``folder`` sends, given its .dockerignore patterns (read
    from the folder when not given)."""
    from docker.utils.build import exclude_paths

    if patterns is None:
        ignore = Path(folder, ".dockerignore")
        lines = ignore.read_text().splitlines() if ignore.is_file() else []
        patterns = [p.strip() for p in lines if p.strip() and not p.strip().startswith("#")]
    return set(exclude_paths(folder, patterns, dockerfile="Dockerfile"))


def _context_archive(context: str, dockerfile: str) -> IO[bytes]:
    """The build context as a tar with ``dockerfile`` in it as its Dockerfile.

    docker-py would add a Dockerfile from outside the context under a random name and rewrite
    .dockerignore to exclude it: a new .dockerignore in every build, so a COPY of it (or of the
    whole folder) never came from the layer cache.
    """
    from docker.utils.build import create_archive

    files = sorted(context_names(context) - {"Dockerfile"})
    extra = [("Dockerfile", Path(dockerfile).read_text())]
    return create_archive(root=context, files=files, extra_files=extra)  # type: ignore[no-any-return]


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


_engines: dict[tuple[str | None, str, str], Engine] = {}
_engines_lock = threading.Lock()


def shared_engine(
    host: str | None = None,
    builder: BuilderSetting | str = "auto",
    docker_cli: str = "",
) -> Engine:
    """One Engine (one client, one thread pool) per Docker host for the whole process."""
    key = (host or None, builder, docker_cli)
    with _engines_lock:
        if key not in _engines:
            _engines[key] = Engine(host, builder=builder, docker_cli=docker_cli)
        return _engines[key]
