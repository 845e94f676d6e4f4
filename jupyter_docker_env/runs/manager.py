"""The run service: a script or a notebook run as one detached container of an environment's
image, which outlives the server (and the CLI) that started it.

A run goes ``queued`` (its environment is built or pulled first when it is not current, which
its log says) → ``running`` (the container runs :mod:`.executor`, which writes the log, enforces
the time limit and retries) → ``succeeded``, ``failed``, ``cancelled`` or ``timed_out``. Its
record, log and the executor's status live in the workspace (:mod:`.store`) and its container
carries its id as a label, so whoever looks later — a restarted server, the CLI — finds every run,
and the one that finds a run's container exited records how it ended (exit code, out of memory)
and removes the container.

Containers go through the same back end and rules as kernels (:mod:`..containers`): the
workspace mounted at the same path, the workspace owner's uid, allow-listed variables, labels,
limits; runs read those settings from ``c.DockerEnvProvisioner``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import os
import signal
import socket
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from traitlets import Float, Int, List, Unicode
from traitlets.config import LoggingConfigurable

from .. import __version__
from .. import labels as L
from ..containers import ContainerError, ContainerFile, ContainerRequest, ContainerState
from ..containers.placement import allowed_env, user_for, within
from ..environments.manager import EnvironmentManager, EnvNotFound, Location
from ..kernels.provisioner import DockerEnvProvisioner, backend_for
from ..kernels.resources import container_limits, human_size
from ..models import BuildOptions, FieldError, Run, RunLog, RunRequest, RunState
from ..operations import Operation
from . import snapshot
from .store import RunNotFound, RunStore

if TYPE_CHECKING:
    from ..config import DockerEnvConfig

T = TypeVar("T")
#: Where the executor and its instructions are placed in a run's container.
EXECUTOR_PATH = "/run/jupyter-docker-env/executor.py"
SPEC_PATH = "/run/jupyter-docker-env/run.json"
EXECUTOR_SOURCE = (Path(__file__).parent / "executor.py").read_bytes()
_ENV_WORDS = {
    "not_built": "is not built yet",
    "outdated": "changed since its last build",
    "building": "is being built",
    "failed": "failed to build last time",
}


class RunConflict(Exception):
    """The run is in a state that does not allow this (a 409)."""


class RunRefused(Exception):
    """The run cannot start as asked: it would run as root, no GPU runtime… (a 409)."""


class RunManager(LoggingConfigurable):
    """Runs of one workspace (see the module's docstring)."""

    runs_dir = Unicode(
        ".docker-env/runs",
        config=True,
        help="Folder, relative to the workspace, that holds every run's record, log and status "
        "(one subfolder per run).",
    )
    outputs_dir = Unicode(
        "runs",
        config=True,
        help="Where an executed notebook goes when a run names no output: this folder beside "
        "the notebook, as NOTEBOOK-RUNID.ipynb.",
    )
    default_timeout = Float(
        0,
        config=True,
        help="Time limit in seconds for runs that set none (all attempts together); 0: none.",
    )
    stop_timeout = Float(
        10,
        config=True,
        help="Seconds a cancelled or timed-out run has between SIGTERM and being killed.",
    )
    retry_delay = Float(
        2, config=True, help="Seconds between a failed attempt of a run and its next attempt."
    )
    poll_interval = Float(
        0.5, config=True, help="How often (seconds) a running run's container is checked."
    )
    snapshot_include = List(
        Unicode(),
        default_value=list(snapshot.DEFAULT_INCLUDE),
        config=True,
        help="Files (shell patterns on names) of the code folder that a --snapshot run copies "
        "into its image; hidden files and folders never go in.",
    )
    snapshot_max_size = Int(
        100 * 1024**2,
        config=True,
        help="Most bytes of code a --snapshot run copies into its image.",
    )

    def __init__(
        self,
        settings: DockerEnvConfig,
        environments: EnvironmentManager,
        workspace: Path,
        adopt: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.envs = environments
        self.engine = environments.engine
        self.workspace = Path(os.path.abspath(workspace))
        #: Runs follow the kernels' container rules (user, HOME, variables, labels, limits).
        self.kernels = DockerEnvProvisioner(config=self.config)
        self.backend = backend_for(self.kernels.backend, self.engine, config=self.config)
        #: A server adopts runs whose preparing process died, and watches every running run.
        self.adopt = adopt
        try:
            owner: tuple[int, int] | None = self._user()
        except (PermissionError, ValueError):
            owner = None  # creating a run says why
        self.store = RunStore(self.workspace, self.runs_dir, owner)
        key = f"{socket.gethostname()}|{os.path.realpath(self.workspace)}"
        self.instance_id = "runs-" + hashlib.sha256(key.encode()).hexdigest()[:16]
        self.me = f"{socket.gethostname()}:{os.getpid()}"
        self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="docker-env-runs")
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._stoppers: set[asyncio.Task[None]] = set()
        self._wake: dict[str, asyncio.Event] = {}
        self._lock = asyncio.Lock()

    async def _blocking(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args))

    def close(self) -> None:
        """Stop following runs; their containers go on, and a later process finds them."""
        for task in [*self._tasks.values(), *self._stoppers]:
            task.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _user(self) -> tuple[int, int]:
        return user_for(str(self.workspace), self.kernels.user, self.kernels.allow_root, "run")

    # -- reading ---------------------------------------------------------------------------
    async def list_runs(self) -> list[Run]:
        runs = await self._blocking(self.store.all)
        return [await self._reconcile(run) if run.active else run for run in runs]

    async def get(self, run_id: str) -> Run:
        run_id = await self._blocking(self.store.resolve, run_id)
        return await self._reconcile(await self._load(run_id))

    async def read_log(self, run_id: str, offset: int = 0) -> RunLog:
        run = await self.get(run_id)
        lines, end = await self._blocking(self.store.read_log, run.id, offset, not run.active)
        return RunLog(id=run.id, state=run.state, lines=tuple(lines), offset=end)

    async def wait(self, run_id: str, until_started: bool = False) -> Run:
        """The run once it ended (or, ``until_started``, once it left the queue)."""
        while True:
            run = await self.get(run_id)
            if not run.active or (until_started and run.state != "queued"):
                return run
            wake = self._wake.setdefault(run.id, asyncio.Event())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), self.poll_interval)
            wake.clear()

    async def _load(self, run_id: str) -> Run:
        return await self._blocking(self.store.load, run_id)

    async def _update(self, run_id: str, **changes: Any) -> Run:
        async with self._lock:
            run = replace(await self._load(run_id), **changes)
            await self._blocking(self.store.save, run)
        if wake := self._wake.get(run_id):
            wake.set()
        return run

    def _say(self, run_id: str, message: str) -> None:
        self.store.append_log(run_id, f"[docker-env] {message}\n")

    async def _reconcile(self, run: Run) -> Run:
        """An active run as it really is: a server follows it (adopting it when the process
        that prepared it died); elsewhere an exited container is recorded as ended."""
        if not run.active or run.id in self._tasks:
            return run
        if run.state == "queued":
            if self.adopt and not _alive(run.driver):
                self._drive(run)
            return run
        if self.adopt:
            self._drive(run)
            return run
        state = await self.backend.state(run.container_id) if run.container_id else None
        if state is None or not state.running:
            return await self._finish(run.id, state)
        attempt = (await self._blocking(self.store.status, run.id)).get("attempt")
        return replace(run, attempt=attempt) if isinstance(attempt, int) and attempt else run

    async def recover(self) -> list[Run]:
        """Follow every run that was queued or running when this server last stopped."""
        return [run for run in await self.list_runs() if run.active]

    # -- starting --------------------------------------------------------------------------
    async def create(
        self, request: RunRequest, user: str = "", location: Location | None = None
    ) -> Run:
        """Record a run (queued) and start preparing it in the background."""
        try:
            loc = location or await self.envs.location(request.env)
        except EnvNotFound as exc:
            raise FieldError("env", str(exc)) from exc
        run = await self._blocking(self._new, request, user, loc)
        self._drive(run)
        return run

    def _new(self, request: RunRequest, user: str, loc: Location) -> Run:
        try:
            self.store.owner = self._user()
        except PermissionError as exc:
            raise RunRefused(str(exc)) from exc
        run_id = self.store.new_id()
        output = None
        if request.notebook:
            notebook = self._in_workspace(request.notebook, "notebook")
            if not notebook.is_file():
                raise FieldError("notebook", f"{request.notebook} does not exist")
            working_dir = notebook.parent
            if request.output:
                output = self._in_workspace(request.output, "output")
            else:
                output = working_dir / self.outputs_dir / f"{notebook.stem}-{run_id}.ipynb"
            if output == notebook:
                raise FieldError("output", "the output would overwrite the notebook itself")
            if request.snapshot and not within(str(output), str(working_dir)):
                raise FieldError("output", "a --snapshot run writes its output beside the notebook")
        else:
            working_dir = self._in_workspace(request.cwd or ".", "cwd")
            if not working_dir.is_dir():
                raise FieldError("cwd", f"{request.cwd} is not a folder of the workspace")
        timeout = request.timeout or self.default_timeout or None
        run = Run(
            id=run_id,
            request=replace(request, env=loc.name, timeout=timeout),
            state="queued",
            created=time.time(),
            user=user,
            env_folder=str(loc.folder),
            workspace=str(self.workspace),
            working_dir=str(working_dir),
            output=self.store.relative(output) if output else None,
            log=self.store.relative(self.store.log_path(run_id)),
            driver=self.me,
        )
        self.store.create(run)
        return run

    def _in_workspace(self, path: str, field: str) -> Path:
        full = Path(os.path.normpath(self.workspace / path))
        real_ws = os.path.realpath(self.workspace)
        if not within(str(full), str(self.workspace)) or not within(
            os.path.realpath(full), real_ws
        ):
            raise FieldError(field, f"{path} is outside the workspace {self.workspace}")
        return full

    def _drive(self, run: Run) -> None:
        if run.id in self._tasks:
            return
        task = asyncio.ensure_future(self._run(run.id))
        self._tasks[run.id] = task
        task.add_done_callback(lambda _: self._tasks.pop(run.id, None))

    async def _run(self, run_id: str) -> None:
        try:
            run = await self._load(run_id)
            if run.state == "queued":
                run = await self._update(run_id, driver=self.me)
                run = await self._prepare(run)
            if run.state == "running":
                await self._watch(run)
        except asyncio.CancelledError:
            raise  # this process stops: the run stays as it is, for the next one to find
        except Exception as exc:
            self.log.exception("jupyter-docker-env: run %s failed unexpectedly", run_id)
            await self._end(run_id, "failed", f"jupyter-docker-env could not run it: {exc}")

    async def _prepare(self, run: Run) -> Run:
        """Image (building or pulling the environment first), then the container."""
        found = await self.backend.find({L.RUN_ID: run.id})
        if found:  # started by a process that died before it could record so
            return await self._update(run.id, state="running", container_id=found[0])
        loc = await self._blocking(self.envs.location_of, Path(run.env_folder))
        ready = await self._environment(run, loc)
        if ready is None:
            return await self._load(run.id)
        image, image_id, spec_hash, gpu = ready
        run = await self._update(run.id, image=image, image_id=image_id, spec_hash=spec_hash)
        if run.request.snapshot:
            image = await self._blocking(self._snapshot, run, image_id)
            run = await self._update(run.id, image=image)
        if run.stop:
            return await self._end(run.id, "cancelled", "cancelled before it started")
        return await self._launch(run, gpu)

    async def _environment(self, run: Run, loc: Location) -> tuple[str, str, str, bool] | None:
        env = await self.envs.describe(loc)
        if env.state == "failed" and env.spec_hash is None:
            await self._end(run.id, "failed", f"environment {env.name} is invalid: {env.error}")
            return None
        if env.state == "built" and env.image is not None and env.spec_hash:
            return env.image.tag, env.image.id, env.spec_hash, bool(env.spec and env.spec.gpu)
        await self._blocking(
            self._say,
            run.id,
            f"Environment {env.name} {_ENV_WORDS.get(env.state, 'is not ready')}: building it "
            "first (or pulling it, when the registry has it)",
        )
        op = self.envs.build(loc, BuildOptions())
        await self._blocking(self._follow_build, run.id, op)
        wake = self._wake.setdefault(run.id, asyncio.Event())
        built = asyncio.ensure_future(op.wait())
        stopped = asyncio.ensure_future(wake.wait())
        while not built.done():
            await asyncio.wait({built, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if stopped.done():
                if (await self._load(run.id)).stop:
                    built.cancel()
                    stopped.cancel()
                    await self._end(run.id, "cancelled", "cancelled while its environment built")
                    return None
                wake.clear()
                stopped = asyncio.ensure_future(wake.wait())
        stopped.cancel()
        if op.state != "succeeded" or op.result is None:
            why = op.error or op.state
            await self._end(run.id, "failed", f"environment {env.name} did not build: {why}")
            return None
        result = op.result
        await self._blocking(self._say, run.id, f"Environment {env.name} is ready: {result.image}")
        return result.image, result.image_id, result.spec_hash, bool(env.spec and env.spec.gpu)

    def _follow_build(self, run_id: str, op: Operation) -> None:
        """The build's log in the run's log (a build already running is joined from its start,
        its backlog written at once). Blocking."""

        def listener(_: Operation, line: str) -> None:
            self.store.append_log(run_id, f"[build] {line}\n")

        if backlog := "".join(f"[build] {line}\n" for line in list(op.log)):
            self.store.append_log(run_id, backlog)
        op.listeners.append(listener)

    def _snapshot(self, run: Run, image_id: str) -> str:
        uid, gid = self._user()
        self._say(run.id, f"Copying the code in {run.working_dir} into a run image (--snapshot)")
        image, reused = snapshot.build(
            self.engine,
            base_image=image_id,
            prefix=self.settings.image_prefix,
            env_name=run.request.env,
            folder=Path(run.working_dir),
            include=list(self.snapshot_include),
            max_size=self.snapshot_max_size,
            owner=(uid, gid),
            labels={**self.kernels.extra_labels, L.ENV: run.request.env},
        )
        self._say(run.id, f"Run image {image}" + (" (unchanged code: reused)" if reused else ""))
        return image

    def _spec(self, run: Run) -> dict[str, Any]:
        """What the executor in the container does."""
        folder = self.store.folder(run.id)
        r = run.request
        return {
            "id": run.id,
            "command": list(r.command),
            "notebook": str(self.workspace / r.notebook) if r.notebook else None,
            "output": str(self.workspace / run.output) if run.output else None,
            "input_path": r.notebook,
            "output_path": run.output,
            "parameters": r.parameters,
            "working_dir": run.working_dir,
            "log": str(folder / "run.log"),
            "status": str(folder / "status.json"),
            "timeout": r.timeout,
            "attempts": r.retries + 1,
            "retry_delay": self.retry_delay,
            # the executor stops its program a little before the container is killed
            "stop_timeout": max(1.0, self.stop_timeout * 0.8),
            "version": f"jupyter-docker-env {__version__}",
        }

    async def _launch(self, run: Run, gpu: bool) -> Run:
        uid, gid = self._user()
        r, k = run.request, self.kernels
        limits = container_limits(
            r.cpus or k.cpus, r.memory or k.mem_limit, r.gpus or ("all" if gpu else k.gpus)
        )
        environment = {
            **allowed_env(os.environ, k.env_allowlist),
            **k.extra_env,
            "HOME": k.home,
            "PYTHONUNBUFFERED": "1",  # the log shows print() as it happens
            "TINI_KILL_PROCESS_GROUP": "1",
            "DOCKER_ENV_RUN_ID": run.id,
        }
        # a snapshot brings its code: only the run's folder is mounted, for its log and status
        mount = str(self.store.folder(run.id)) if r.snapshot else str(self.workspace)
        request = ContainerRequest(
            role="run",
            name=f"jupyter-run-{run.id}",
            image=run.image or "",
            command=("python", EXECUTOR_PATH, SPEC_PATH),
            workspace=mount,
            working_dir=run.working_dir,
            uid=uid,
            gid=gid,
            instance_id=self.instance_id,
            environment=environment,
            labels={
                **k.extra_labels,
                L.RUN_ID: run.id,
                L.ENV: r.env,
                L.WORKSPACE: str(self.workspace),
            },
            home=k.home,
            pids_limit=k.pids_limit or None,
            network=k.network,
            files=(
                ContainerFile(EXECUTOR_PATH, EXECUTOR_SOURCE, 0o444),
                ContainerFile(SPEC_PATH, json.dumps(self._spec(run)).encode(), 0o400),
            ),
            detached=True,
            **limits,
        )
        await self._blocking(self._say, run.id, f"Starting {run.image} {_describe(limits)}")
        started = time.time()
        try:
            launched = await self.backend.launch(request)
        except ContainerError as exc:
            return await self._end(run.id, "failed", self._explain(exc, limits))
        run = await self._update(
            run.id,
            state="running",
            container_id=launched.container_id,
            started=started,
            driver=None,
        )
        if run.stop:  # cancelled while the container started
            self._stop_later(run)
        return run

    def _explain(self, exc: ContainerError, limits: dict[str, Any]) -> str:
        if exc.kind == "no-gpu-runtime":
            return (
                f"GPUs requested ({limits.get('device_requests')}) but the Docker engine has no "
                f"NVIDIA runtime ({exc}): install the NVIDIA Container Toolkit on the Docker "
                "host, or run without --gpus."
            )
        if exc.kind == "no-image":
            return f"the run's image is not on the Docker engine: {exc}"
        return f"the Docker engine could not start the run: {exc}"

    # -- following and ending ----------------------------------------------------------------
    async def _watch(self, run: Run) -> None:
        wake = self._wake.setdefault(run.id, asyncio.Event())
        assert run.container_id is not None
        while True:
            state = await self.backend.state(run.container_id)
            if state is None or not state.running:
                break
            status = await self._blocking(self.store.status, run.id)
            attempt = status.get("attempt")
            if isinstance(attempt, int) and attempt != run.attempt:
                run = await self._update(run.id, attempt=attempt)
            if self._overdue(run):
                # the executor enforces the limit; this is for one that cannot any more
                run = await self._update(run.id, stop="timeout")
                self._stop_later(run)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), self.poll_interval)
            wake.clear()
            run = await self._load(run.id)
        await self._finish(run.id, state)

    def _overdue(self, run: Run) -> bool:
        limit = run.request.timeout
        if not limit or run.stop or run.started is None:
            return False
        return time.time() > run.started + limit + self.stop_timeout + 30

    async def _finish(self, run_id: str, state: ContainerState | None) -> Run:
        """Record how a run whose container exited ended, and remove the container (once,
        whoever else follows the run)."""
        while True:
            run = await self._load(run_id)
            if not run.active:
                return run
            if await self._blocking(self.store.claim, run_id, self.me, _alive):
                break
            await asyncio.sleep(0.2)  # another process records it
        try:
            return await self._record_end(run, state)
        finally:
            await self._blocking(self.store.release, run_id)

    async def _record_end(self, run: Run, state: ContainerState | None) -> Run:
        run_id = run.id
        status = await self._blocking(self.store.status, run_id)
        attempts = status.get("attempts") or []
        last = attempts[-1] if attempts and isinstance(attempts[-1], dict) else {}
        code = state.exit_code if state else None
        oom = bool(state and state.oom_killed and code != 0) or bool(last.get("oom_killed"))
        limit = run.request.timeout
        final: RunState
        if run.stop == "cancel" or status.get("cancelled"):
            final, reason = "cancelled", "cancelled"
        elif run.stop == "timeout" or status.get("timed_out"):
            final, reason = "timed_out", f"ran longer than its time limit of {limit or 0:g} s"
        elif state is None:
            final, reason = "failed", "its container was removed outside jupyter-docker-env"
        elif code == 0:
            final, reason = "succeeded", None
        elif oom:
            final, reason = "failed", self._out_of_memory(run)
        else:
            final, reason = "failed", status.get("error") or f"exit code {code}"
        crashed = not status or status.get("running")
        if crashed and state is not None and code != 0 and not oom and run.container_id:
            # the executor did not start, or died: the container's own output says why
            output = await self.backend.logs(run.container_id, tail=50)
            if output.strip():
                await self._blocking(self.store.append_log, run_id, output.rstrip("\n") + "\n")
        if run.container_id:  # before the run is seen as ended: then everything is in place
            if run.request.snapshot and state is not None:
                await self._copy_back(run)
            with contextlib.suppress(Exception):
                await self.backend.remove(run.container_id)
        finished = last.get("finished") if isinstance(last.get("finished"), float) else None
        attempt = status.get("attempt") if isinstance(status.get("attempt"), int) else None
        return await self._end(
            run_id,
            final,
            reason,
            exit_code=code,
            oom_killed=oom and final == "failed",
            attempt=attempt or run.attempt or 1,
            finished=finished,
        )

    async def _copy_back(self, run: Run) -> None:
        """A snapshot run's new and changed files in its code folder, back in the workspace."""
        assert run.container_id is not None
        folder = run.working_dir
        changed = [p for p in await self.backend.changes(run.container_id) if within(p, folder)]
        if not changed:
            return
        with tempfile.TemporaryFile() as tmp:
            await self.backend.copy_from(run.container_id, folder, tmp)
            tmp.seek(0)
            written = await self._blocking(snapshot.copy_back, tmp, folder, changed, self._user())
        if written:
            names = ", ".join(p[len(folder) + 1 :] for p in written[:10])
            more = f" and {len(written) - 10} more" if len(written) > 10 else ""
            await self._blocking(
                self._say, run.id, f"Copied what the run wrote back to {folder}: {names}{more}"
            )

    def _out_of_memory(self, run: Run) -> str:
        memory = run.request.memory or self.kernels.mem_limit
        limit = f"limit {memory}" if memory else "no limit set: the Docker host ran out"
        return (
            f"out of memory ({limit}): the run was killed. Give it more memory (--memory, or "
            "memory in the run form) or make it use less."
        )

    async def _end(self, run_id: str, state: RunState, reason: str | None, **changes: Any) -> Run:
        run = await self._load(run_id)
        finished = changes.pop("finished", None) or time.time()
        took = f" after {finished - run.started:.1f} s" if run.started else ""
        words = {
            "succeeded": f"Run succeeded{took}",
            "failed": f"Run failed{took}: {reason}",
            "cancelled": f"Run cancelled{took}",
            "timed_out": f"Run timed out: {reason}",
        }
        await self._blocking(self._say, run_id, words[state])
        return await self._update(
            run_id, state=state, reason=reason, finished=finished, driver=None, **changes
        )

    # -- cancelling and removing -------------------------------------------------------------
    async def cancel(self, run_id: str, wait: bool = False, by: str = "") -> Run:
        """Stop a run: SIGTERM, then SIGKILL after ``stop_timeout``; its partial log and
        notebook stay. ``wait``: return once it ended (else it ends in the background)."""
        run = await self.get(run_id)
        if not run.active:
            raise RunConflict(f"run {run.id} has already ended ({run.state})")
        await self._blocking(
            self._say, run.id, "Cancel requested" + (f" by {by}" if by else "") + ": stopping"
        )
        run = await self._update(run.id, stop="cancel")
        if run.container_id:
            if wait:
                await self._stop(run)
            else:
                self._stop_later(run)
        if wait:
            return await self.wait(run.id)
        return run

    def _stop_later(self, run: Run) -> None:
        task = asyncio.ensure_future(self._stop(run))
        self._stoppers.add(task)
        task.add_done_callback(self._stoppers.discard)

    async def _stop(self, run: Run) -> None:
        assert run.container_id is not None
        await self.backend.signal(run.container_id, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        while time.monotonic() < deadline:
            state = await self.backend.state(run.container_id)
            if state is None or not state.running:
                return
            await asyncio.sleep(0.2)
        await self._blocking(
            self._say, run.id, f"Still running {self.stop_timeout:g} s after SIGTERM: killing it"
        )
        await self.backend.signal(run.container_id, signal.SIGKILL)

    async def delete(self, run_id: str) -> None:
        """Forget a run: its record and log. An executed notebook outside the run's folder is
        the user's file and stays."""
        run = await self.get(run_id)
        if run.active:
            raise RunConflict(f"run {run.id} is {run.state}: cancel it first")
        for container_id in await self.backend.find({L.RUN_ID: run.id}):
            await self.backend.remove(container_id)
        await self._blocking(self.store.remove, run.id)


def _alive(driver: str | None) -> bool:
    """Is the process named ``host:pid`` still running? (Another host's: assumed so.)"""
    if not driver:
        return False
    host, _, pid = driver.rpartition(":")
    if host != socket.gethostname():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError):
        return True
    return True


def _describe(limits: dict[str, Any]) -> str:
    parts = []
    if cpus := limits.get("nano_cpus"):
        parts.append(f"{cpus / 1e9:g} CPUs")
    if memory := limits.get("mem_limit"):
        parts.append(human_size(memory))
    if limits.get("device_requests"):
        parts.append("GPUs")
    return f"({', '.join(parts)})" if parts else "(no limits)"


__all__ = ["RunConflict", "RunManager", "RunNotFound", "RunRefused"]
