"""Runs on disk: one folder per run under the workspace's hidden runs folder.

``WORKSPACE/.docker-env/runs/ID/`` holds ``run.json`` (the record, written by the server or the
CLI), ``run.log`` (everything the run and its preparation printed) and ``status.json`` (written
by the executor inside the container: its attempts and how they ended). Whoever looks — a
restarted server, the CLI, a second server on the same workspace — finds every run there.

Everything here blocks (file I/O); the run service calls it from its executor.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..models import Run

RECORD = "run.json"
LOG = "run.log"
STATUS = "status.json"
ENDING = ".ending"  # held by the process recording how the run ended
RUN_ID = re.compile(r"^[0-9a-f]{12}$")
#: Most log bytes one read returns; the next read goes on from its offset.
MAX_READ = 1024 * 1024
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class RunNotFound(LookupError):
    pass


class RunStore:
    def __init__(self, workspace: Path, folder: str, owner: tuple[int, int] | None = None) -> None:
        self.workspace = workspace
        self.root = workspace / folder
        #: uid and gid that own what is created here (when this process runs as root).
        self.owner = owner

    # -- paths -----------------------------------------------------------------------------
    def folder(self, run_id: str) -> Path:
        return self.root / run_id

    def log_path(self, run_id: str) -> Path:
        return self.folder(run_id) / LOG

    def status_path(self, run_id: str) -> Path:
        return self.folder(run_id) / STATUS

    def relative(self, path: Path) -> str:
        return path.relative_to(self.workspace).as_posix()

    @staticmethod
    def new_id() -> str:
        return uuid.uuid4().hex[:12]

    def resolve(self, id_or_prefix: str) -> str:
        """A run id from itself or a unique prefix of it (as the CLI accepts)."""
        if RUN_ID.match(id_or_prefix) and (self.folder(id_or_prefix) / RECORD).is_file():
            return id_or_prefix
        if len(id_or_prefix) >= 4 and re.fullmatch(r"[0-9a-f]+", id_or_prefix):
            matches = [r for r in self.ids() if r.startswith(id_or_prefix)]
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                raise RunNotFound(f"{id_or_prefix} is the start of several runs: give more of it")
        raise RunNotFound(f"no run {id_or_prefix} in {self.root}")

    def ids(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return [
            p.name for p in self.root.iterdir() if RUN_ID.match(p.name) and (p / RECORD).is_file()
        ]

    # -- records ---------------------------------------------------------------------------
    def create(self, run: Run) -> None:
        """The run's folder, its empty log and its first record, owned by the run's user."""
        for parent in reversed([self.root, *self.root.parents]):
            inside = parent == self.workspace or self.workspace in parent.parents
            if inside and not parent.is_dir():
                parent.mkdir()
                self._own(parent)
        folder = self.folder(run.id)
        folder.mkdir()
        self._own(folder)
        self.log_path(run.id).touch()
        self._own(self.log_path(run.id))
        self.save(run)

    def save(self, run: Run) -> None:
        path = self.folder(run.id) / RECORD
        tmp = path.with_name(f".{RECORD}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(run.to_record(), indent=1))
        self._own(tmp)
        tmp.replace(path)  # atomic: readers never see half a record

    def load(self, run_id: str) -> Run:
        try:
            data = json.loads((self.folder(run_id) / RECORD).read_text())
        except FileNotFoundError:
            raise RunNotFound(f"no run {run_id}") from None
        return Run.from_record(data)

    def all(self) -> list[Run]:
        runs = []
        for run_id in self.ids():
            with contextlib.suppress(RunNotFound, ValueError, KeyError, TypeError):
                runs.append(self.load(run_id))
        return sorted(runs, key=lambda r: r.created, reverse=True)

    def status(self, run_id: str) -> dict[str, Any]:
        """What the executor recorded (empty before it started, or when it never did)."""
        try:
            data = json.loads(self.status_path(run_id).read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def claim(self, run_id: str, me: str, alive: Callable[[str], bool]) -> bool:
        """Whether ``me`` may record how the run ended: the first process to ask, or any once
        the one that asked died (two processes that both follow a run write its end once)."""
        path = self.folder(run_id) / ENDING
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            try:
                owner = path.read_text()
            except FileNotFoundError:
                return False  # released just now: the record says how it ended
            if owner == me or alive(owner):
                return owner == me
            path.unlink(missing_ok=True)  # its owner died while recording: take over
            return self.claim(run_id, me, alive)
        with os.fdopen(fd, "w") as f:
            f.write(me)
        return True

    def release(self, run_id: str) -> None:
        (self.folder(run_id) / ENDING).unlink(missing_ok=True)

    def remove(self, run_id: str) -> None:
        shutil.rmtree(self.folder(run_id), ignore_errors=True)

    def _own(self, path: Path) -> None:
        if self.owner is not None and os.geteuid() == 0:
            os.chown(path, *self.owner)

    # -- the log ---------------------------------------------------------------------------
    def append_log(self, run_id: str, text: str) -> None:
        with self.log_path(run_id).open("ab") as f:
            f.write(text.encode("utf-8", "replace"))

    def read_log(self, run_id: str, offset: int, final: bool) -> tuple[list[str], int]:
        """Whole lines from byte ``offset`` on, and the offset after them.

        A line still being written is held back until it ends, unless the run is ``final``.
        Colour codes are dropped, and a line redrawn with carriage returns (a progress bar)
        shows its last state.
        """
        try:
            with self.log_path(run_id).open("rb") as f:
                f.seek(offset)
                data = f.read(MAX_READ)
        except FileNotFoundError:
            return [], offset
        end = len(data) if final or len(data) == MAX_READ else data.rfind(b"\n") + 1
        text = data[:end].decode("utf-8", "replace").removesuffix("\n")
        # only \n ends a line: a \r redraws it (str.splitlines would split there too)
        lines = [_shown(line) for line in text.split("\n")] if text else []
        return lines, offset + end


def _shown(line: str) -> str:
    line = ANSI.sub("", line)
    if "\r" in line:
        parts = [p for p in line.split("\r") if p]
        line = parts[-1] if parts else ""
    return line
