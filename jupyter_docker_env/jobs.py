"""Long-running work (builds, pushes, pulls) as jobs that clients can follow, rejoin and cancel.

A job runs in its own worker thread (the work is blocking engine I/O) and appends to a log kept
in memory, so a client that disconnects and comes back reads the whole log from any offset.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

# Colour and cursor codes that pip and apt print: noise in a log read in a browser.
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
STATES = ("queued", "running", "succeeded", "failed", "cancelled")


class Cancelled(Exception):
    """Raised inside a job's work when the job was cancelled."""


class JobFailed(Exception):
    """The work failed in a way the user can act on; ``step`` names the failing instruction."""

    def __init__(self, message: str, step: str | None = None) -> None:
        super().__init__(message)
        self.step = step


@dataclass
class Job:
    env: str
    kind: str
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    state: str = "queued"
    log: list[str] = field(default_factory=list)
    step: int = 0
    total_steps: int = 0
    error: str | None = None
    failed_step: str | None = None
    result: dict[str, Any] = field(default_factory=dict)
    started: float | None = None
    finished: float | None = None
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    _done: asyncio.Event | None = field(default=None, repr=False)

    # -- called from the worker thread ----------------------------------------------------
    def emit(self, line: str) -> None:
        self.log.append(ANSI_ESCAPE.sub("", line.rstrip("\n")))

    def set_step(self, step: int, total: int) -> None:
        self.step, self.total_steps = step, total

    def check_cancelled(self) -> None:
        if self._cancel.is_set():
            raise Cancelled()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    # -- read by clients ----------------------------------------------------------------------
    @property
    def active(self) -> bool:
        return self.state in ("queued", "running")

    @property
    def progress(self) -> float:
        if self.state == "succeeded":
            return 1.0
        if not self.total_steps:
            return 0.0
        return round(max(0, self.step - 1) / self.total_steps, 3)

    def to_json(self, offset: int = 0) -> dict[str, Any]:
        log = self.log[offset:]
        return {
            "id": self.id,
            "env": self.env,
            "kind": self.kind,
            "state": self.state,
            "step": self.step,
            "total_steps": self.total_steps,
            "progress": self.progress,
            "log": log,
            "log_offset": offset + len(log),
            "error": self.error,
            "failed_step": self.failed_step,
            "image": self.result.get("image"),
            "built": self.result.get("built"),
            "pulled": self.result.get("pulled"),
            "started": self.started,
            "finished": self.finished,
        }

    async def wait(self) -> Job:
        if self._done is not None:
            await self._done.wait()
        return self


Work = Callable[[Job], dict[str, Any]]


class JobManager:
    """Runs jobs on a small pool of worker threads; one active job per environment and kind."""

    def __init__(self, workers: int = 2, keep: int = 200) -> None:
        self._executor = ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="docker-env-job"
        )
        self._jobs: dict[str, Job] = {}
        self._keep = keep
        self._tasks: set[asyncio.Task[None]] = set()

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def latest(self, env: str) -> Job | None:
        """The active job of an environment, else its most recent one."""
        jobs = [j for j in self._jobs.values() if j.env == env]
        active = [j for j in jobs if j.active]
        chosen = active or jobs
        return chosen[-1] if chosen else None

    def active(self, env: str) -> list[Job]:
        return [j for j in self._jobs.values() if j.env == env and j.active]

    def start(
        self, env: str, kind: str, work: Work, on_done: Callable[[Job], Any] | None = None
    ) -> Job:
        """Start ``work``, or return the job already doing it for this environment."""
        for job in self._jobs.values():
            if job.env == env and job.kind == kind and job.active:
                return job
        job = Job(env=env, kind=kind)
        job._done = asyncio.Event()
        self._jobs[job.id] = job
        self._forget_old()
        task = asyncio.ensure_future(self._run(job, work, on_done))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return job

    def cancel(self, job_id: str) -> Job | None:
        job = self._jobs.get(job_id)
        if job is not None and job.active:
            job._cancel.set()
            job.emit("Cancelling…")
        return job

    async def _run(self, job: Job, work: Work, on_done: Callable[[Job], Any] | None) -> None:
        loop = asyncio.get_running_loop()

        def run() -> dict[str, Any]:
            job.check_cancelled()
            job.state = "running"
            job.started = time.time()
            return work(job)

        try:
            job.result = await loop.run_in_executor(self._executor, run)
            job.state = "succeeded"
        except Cancelled:
            job.state = "cancelled"
            job.emit("Cancelled.")
        except JobFailed as exc:
            job.state, job.error, job.failed_step = "failed", str(exc), exc.step
            job.emit(f"ERROR: {exc}")
        except Exception as exc:  # the job's owner must hear of any failure, whatever it is
            job.state, job.error = "failed", f"{type(exc).__name__}: {exc}"
            job.emit(f"ERROR: {job.error}")
        finally:
            job.finished = time.time()
            if on_done is not None:
                try:
                    result = on_done(job)
                    if asyncio.iscoroutine(result):
                        await result
                except Exception as exc:
                    job.emit(f"WARNING: after the job: {exc}")
            assert job._done is not None
            job._done.set()

    def _forget_old(self) -> None:
        finished = [j for j in self._jobs.values() if not j.active]
        for job in finished[: max(0, len(self._jobs) - self._keep)]:
            del self._jobs[job.id]

    def close(self) -> None:
        for job in self._jobs.values():
            job._cancel.set()
        self._executor.shutdown(wait=False, cancel_futures=True)
