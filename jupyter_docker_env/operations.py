"""Long-running work on environments (builds, pushes, pulls) as operations that clients can
follow, rejoin and cancel.

An operation runs in a worker thread of its manager (the work is blocking engine I/O) and appends
to a log kept in memory, so a client that disconnects and comes back reads the whole log from any
offset. ("Jobs" are training runs: see the runs service.)
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from .engine import EngineUnavailable
from .models import ACTIVE_STATES, FieldError, OperationKind, OperationState

# Colour and cursor codes that pip and apt print: noise in a log read in a browser.
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class Cancelled(Exception):
    """Raised inside an operation's work when it was cancelled."""


class OperationFailed(Exception):
    """The work failed in a way the user can act on; ``step`` names the failing instruction."""

    def __init__(self, message: str, step: str | None = None) -> None:
        super().__init__(message)
        self.step = step


@dataclass(eq=False)
class Operation:
    env: str
    kind: OperationKind
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    state: OperationState = "queued"
    log: list[str] = field(default_factory=list)
    step: int = 0
    total_steps: int = 0
    error: str | None = None
    failed_step: str | None = None
    result: Any = None  # a BuildResult or PushResult once it succeeded
    started: float | None = None
    finished: float | None = None
    #: Called with each log line as it is written (from the worker thread).
    listeners: list[Callable[[Operation, str], None]] = field(default_factory=list, repr=False)
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    _done: asyncio.Event | None = field(default=None, repr=False)

    # -- called from the worker thread ----------------------------------------------------
    def emit(self, line: str) -> None:
        line = ANSI_ESCAPE.sub("", line.rstrip("\n"))
        self.log.append(line)
        for listener in self.listeners:
            listener(self, line)

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
        return self.state in ACTIVE_STATES

    @property
    def progress(self) -> float:
        if self.state == "succeeded":
            return 1.0
        if not self.total_steps:
            return 0.0
        return round(max(0, self.step - 1) / self.total_steps, 3)

    def to_json(self, offset: int = 0) -> dict[str, Any]:
        log = self.log[offset:]
        result = self.result
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
            "image": getattr(result, "image", None),
            "built": getattr(result, "built", None),
            "pulled": getattr(result, "pulled", None),
            "started": self.started,
            "finished": self.finished,
        }

    async def wait(self) -> Operation:
        if self._done is not None:
            await self._done.wait()
        return self


Work = Callable[[Operation], Any]
AfterWork = Callable[[Operation], Awaitable[None]]


class OperationManager:
    """Runs operations on its own small pool of worker threads; one active operation per
    environment and kind (a second request joins it)."""

    def __init__(
        self, workers: int = 2, keep: int = 200, log: logging.Logger | None = None
    ) -> None:
        self._executor = ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="docker-env-operation"
        )
        self._operations: dict[str, Operation] = {}
        self._keep = keep
        self._tasks: set[asyncio.Task[None]] = set()
        self.log = log or logging.getLogger(__name__)

    def get(self, operation_id: str) -> Operation | None:
        return self._operations.get(operation_id)

    def latest(self, env: str) -> Operation | None:
        """The active operation of an environment, else its most recent one."""
        ops = [op for op in self._operations.values() if op.env == env]
        active = [op for op in ops if op.active]
        chosen = active or ops
        return chosen[-1] if chosen else None

    def active(self, env: str) -> list[Operation]:
        return [op for op in self._operations.values() if op.env == env and op.active]

    def start(
        self,
        env: str,
        kind: OperationKind,
        work: Work,
        after: AfterWork | None = None,
        listeners: list[Callable[[Operation, str], None]] | None = None,
    ) -> Operation:
        """Start ``work``, or return the operation already doing it for this environment.

        ``after`` runs on the event loop once the work ended, whatever the outcome.
        """
        for op in self._operations.values():
            if op.env == env and op.kind == kind and op.active:
                return op
        op = Operation(env=env, kind=kind, listeners=list(listeners or ()))
        op._done = asyncio.Event()
        self._operations[op.id] = op
        self._forget_old()
        task = asyncio.ensure_future(self._run(op, work, after))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return op

    def cancel(self, operation_id: str) -> Operation | None:
        op = self._operations.get(operation_id)
        if op is not None and op.active:
            op._cancel.set()
            op.emit("Cancelling…")
        return op

    async def _run(self, op: Operation, work: Work, after: AfterWork | None) -> None:
        loop = asyncio.get_running_loop()

        def run() -> Any:
            op.check_cancelled()
            op.state = "running"
            op.started = time.time()
            return work(op)

        state: OperationState = "failed"
        error: str | None = "interrupted: the server stopped"  # unless it ends on its own
        step = line = None
        try:
            try:
                op.result = await loop.run_in_executor(self._executor, run)
                state, error = "succeeded", None
            except Cancelled:
                state, error, line = "cancelled", None, "Cancelled."
            except OperationFailed as exc:
                error, step = str(exc), exc.step
            except (FieldError, EngineUnavailable) as exc:  # a file refused, the engine gone
                error = str(exc)
                step = f"file {exc.field}" if isinstance(exc, FieldError) else None
                self.log.warning("jupyter-docker-env: %s of %s failed: %s", op.kind, op.env, exc)
            except Exception as exc:  # a bug or an engine fault: the owner and the admin must hear
                error = f"{type(exc).__name__}: {exc}"
                self.log.exception(
                    "jupyter-docker-env: %s of %s failed unexpectedly", op.kind, op.env
                )
            op.finished = time.time()
            # Before clients see the outcome: a build is "succeeded" once its kernel spec exists.
            if after is not None:
                try:
                    await after(op)
                except Exception as exc:
                    op.emit(f"WARNING: after the {op.kind}: {exc}")
                    self.log.exception("jupyter-docker-env: after the %s of %s", op.kind, op.env)
        finally:
            op.finished = op.finished or time.time()
            if error is not None:
                line = f"ERROR: {error}"
            if line:
                op.emit(line)
            op.state, op.error, op.failed_step = state, error, step
            assert op._done is not None
            op._done.set()

    def _forget_old(self) -> None:
        finished = [op for op in self._operations.values() if not op.active]
        for op in finished[: max(0, len(self._operations) - self._keep)]:
            del self._operations[op.id]

    def close(self) -> None:
        for op in self._operations.values():
            op._cancel.set()
        self._executor.shutdown(wait=False, cancel_futures=True)
