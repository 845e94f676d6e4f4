"""The program inside a run's container: it runs the command, or executes the notebook with its
parameters, appends everything to the run's log, enforces the run's timeout, retries failed
attempts, and records how each attempt ended in the run's folder.

It is copied into every run's container and started there as ``python executor.py SPEC``; it
needs only the standard library, and jupyter_client (which ipykernel brings into every
environment) for notebooks. It never talks to the server, so a run goes on while no server
runs; whoever looks later reads what it wrote: ``status.json`` and the log.

Notebooks follow papermill's conventions, so tools that read papermill's output read ours: the
parameters go into a new cell tagged ``injected-parameters`` after the cell tagged
``parameters`` (or replace an earlier injected cell), ``metadata.papermill`` records the
parameters, paths and times, every cell gets its status and times, execution stops at the first
error (unless the cell is tagged ``raises-exception``), error marker cells point at the failing
cell, and the notebook is saved after every cell, so a cancelled run keeps what it computed.

Exit codes: the command's own; 128+N when a signal killed it; 124 when the run timed out; 143
when it was stopped (cancelled); 127 when the command does not exist.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import queue
import re
import signal
import subprocess
import sys
import time
import traceback
import uuid
from typing import Any

TIMED_OUT = 124
STOPPED = 128 + signal.SIGTERM
NOT_FOUND = 127
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# papermill's marks for the failing cell
ERROR_TAG = "papermill-error-cell-tag"
ERROR_STYLE = (
    'style="color:red; font-family:Helvetica Neue, Helvetica, Arial, sans-serif; font-size:2em;"'
)
ERROR_MESSAGE = (
    f"<span {ERROR_STYLE}>An Exception was encountered at "
    "'<a href=\"#papermill-error-cell\">In [%s]</a>'.</span>"
)
ERROR_ANCHOR = (
    f'<span id="papermill-error-cell" {ERROR_STYLE}>'
    "Execution using papermill encountered an exception here and stopped:</span>"
)
PARAMETER = re.compile(r"^(?P<target>\w[\w_]*)\s*(:\s*[^=]*)?=")


class Stop:
    """Why the run must stop: "cancel" (SIGTERM, the server's or the CLI's cancel) or
    "timeout"; None while it may go on."""

    reason: str | None = None


def _on_signal(signum: int, frame: Any) -> None:
    Stop.reason = Stop.reason or "cancel"


# -- the run's folder --------------------------------------------------------------------------
class Run:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.log = open(spec["log"], "ab", buffering=0)  # noqa: SIM115 (the whole run long)
        self.attempts: list[dict[str, Any]] = []
        #: The error that failed the last attempt, in a line (a notebook cell's exception).
        self.error: str | None = None
        timeout = spec.get("timeout")
        self.deadline = time.monotonic() + float(timeout) if timeout else None
        self.stop_timeout = float(spec.get("stop_timeout") or 10)

    def say(self, message: str) -> None:
        self.log.write(f"[docker-env] {message}\n".encode())

    def write_status(self, running: bool, exit_code: int | None = None) -> None:
        data = {
            "attempt": len(self.attempts),
            "attempts": self.attempts,
            "running": running,
            "exit_code": exit_code,
            "error": self.error,
            "timed_out": Stop.reason == "timeout",
            "cancelled": Stop.reason == "cancel",
        }
        _write_atomic(self.spec["status"], json.dumps(data, indent=1))

    def check_deadline(self) -> None:
        if Stop.reason is None and self.deadline is not None and time.monotonic() > self.deadline:
            Stop.reason = "timeout"
            self.say(f"Timed out after {_seconds(float(self.spec['timeout']))}: stopping")


def _write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def _seconds(value: float) -> str:
    return f"{value:g} s"


def _oom_kills() -> int | None:
    """How often the kernel's OOM killer struck in this container (cgroup v2, then v1)."""
    for path in ("/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory/memory.oom_control"):
        try:
            with open(path) as f:
                for line in f:
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        return int(value)
        except (OSError, ValueError):
            continue
    return None


# -- commands ----------------------------------------------------------------------------------
def run_command(run: Run) -> int:
    command = run.spec["command"]
    try:
        proc = subprocess.Popen(
            command,
            cwd=run.spec["working_dir"],
            stdin=subprocess.DEVNULL,
            stdout=run.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopping it stops its children
        )
    except FileNotFoundError:
        run.say(f"command not found: {command[0]} (is it installed in the environment?)")
        return NOT_FOUND
    except PermissionError as exc:
        run.say(f"cannot run {command[0]}: {exc}")
        return NOT_FOUND - 1
    stopping_since = None
    while True:
        try:
            code = proc.wait(timeout=0.2)
        except subprocess.TimeoutExpired:
            run.check_deadline()
            if Stop.reason and stopping_since is None:
                stopping_since = time.monotonic()
                _signal_group(proc.pid, signal.SIGTERM)
            elif stopping_since and time.monotonic() - stopping_since > run.stop_timeout:
                _signal_group(proc.pid, signal.SIGKILL)
            continue
        return code if code >= 0 else 128 - code


def _signal_group(pid: int, signum: int) -> None:
    with contextlib.suppress(OSError):  # it ended already
        os.killpg(pid, signum)


# -- notebooks ---------------------------------------------------------------------------------
def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat()


def _cell_id() -> str:
    return uuid.uuid4().hex[:8]


def _lines(text: Any) -> Any:
    """nbformat's on-disk form of a multi-line string: a list of lines."""
    return text.splitlines(True) if isinstance(text, str) else text


def _joined(value: Any) -> Any:
    return "".join(value) if isinstance(value, list) else value


def py_value(value: Any) -> str:
    """A JSON value as Python source, as papermill's Python translator writes it."""
    if value is None:
        return "None"
    if isinstance(value, str):
        escaped = value.encode("unicode_escape").decode("utf-8").replace('"', r"\"")
        return f'"{escaped}"'
    if isinstance(value, (bool, int)):
        return str(value)
    if isinstance(value, float):
        if math.isfinite(value):
            return str(value)
        if math.isnan(value):
            return "float('nan')"
        return "float('-inf')" if value < 0 else "float('inf')"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{py_value(str(k))}: {py_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(py_value(v) for v in value) + "]"
    return f'"{value}"'


def parameters_source(parameters: dict[str, Any]) -> str:
    return "# Parameters\n" + "".join(f"{k} = {py_value(v)}\n" for k, v in parameters.items())


def _tags(cell: dict[str, Any]) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def _first_tagged(cells: list[dict[str, Any]], tag: str) -> int:
    return next((i for i, cell in enumerate(cells) if tag in _tags(cell)), -1)


def prepare_notebook(nb: dict[str, Any], spec: dict[str, Any], run: Run) -> dict[str, Any]:
    """The notebook to execute: upgraded to nbformat 4.5, its parameters injected, papermill's
    metadata set, earlier outputs and error marks removed."""
    if nb.get("nbformat") != 4:
        raise ValueError(f"{spec['notebook']} is not an nbformat 4 notebook")
    cells: list[dict[str, Any]] = nb.setdefault("cells", [])
    for cell in cells:
        cell["source"] = _joined(cell.get("source", ""))
    if nb.get("nbformat_minor", 0) < 5:
        for cell in cells:
            cell["id"] = _cell_id()
        nb["nbformat_minor"] = 5
    metadata = nb.setdefault("metadata", {})
    papermill = metadata.setdefault("papermill", {})
    papermill.setdefault("default_parameters", {})
    papermill.setdefault("parameters", {})
    papermill.setdefault("environment_variables", {})
    papermill["version"] = spec.get("version", "")
    parameters = spec.get("parameters") or {}
    if parameters:
        param_index = _first_tagged(cells, "parameters")
        if param_index < 0:
            run.say("The notebook has no cell tagged 'parameters': parameters go on top")
        else:
            declared = {
                m.group("target")
                for line in cells[param_index]["source"].splitlines()
                if (m := PARAMETER.match(line))
            }
            for name in parameters:
                if name not in declared:
                    run.say(f"Passed unknown parameter: {name}")
        injected: dict[str, Any] = {
            "cell_type": "code",
            "execution_count": None,
            "id": _cell_id(),
            "metadata": {"tags": ["injected-parameters"]},
            "outputs": [],
            "source": parameters_source(parameters),
        }
        if (old := _first_tagged(cells, "injected-parameters")) >= 0:
            cells[old] = injected
        else:
            cells.insert(param_index + 1 if param_index >= 0 else 0, injected)
        papermill["parameters"] = parameters
    papermill["input_path"] = spec.get("input_path")
    papermill["output_path"] = spec.get("output_path")
    nb["cells"] = [cell for cell in cells if ERROR_TAG not in _tags(cell)]
    for cell in nb["cells"]:
        cell.setdefault("metadata", {}).setdefault("tags", [])
        cell["metadata"]["papermill"] = {
            "exception": None,
            "start_time": None,
            "end_time": None,
            "duration": None,
            "status": "pending",
        }
        if cell.get("cell_type") == "code":
            cell["execution_count"] = None
            cell["outputs"] = []
    papermill.update(start_time=_now(), end_time=None, duration=None, exception=None)
    return nb


def save_notebook(nb: dict[str, Any], path: str) -> None:
    """Write as nbformat does (sorted keys, one-space indent, multi-line strings as lists)."""
    out = json.loads(json.dumps(nb))
    for cell in out["cells"]:
        cell["source"] = _lines(cell.get("source", ""))
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream":
                output["text"] = _lines(output.get("text", ""))
            for mime, value in (output.get("data") or {}).items():
                if mime.startswith("text/") or mime in ("application/javascript", "image/svg+xml"):
                    output["data"][mime] = _lines(value)
    text = json.dumps(out, sort_keys=True, indent=1, separators=(",", ": "), ensure_ascii=False)
    _write_atomic(path, text + "\n")


def _timestamp(msg: dict[str, Any]) -> str:
    date = msg.get("header", {}).get("date")
    if isinstance(date, datetime.datetime):
        return date.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if date:
        return str(date)
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class KernelDied(Exception):
    pass


class NotebookRunner:
    """Executes one notebook in a fresh kernel, as papermill does with nbclient."""

    def __init__(self, run: Run, nb: dict[str, Any]) -> None:
        self.run = run
        self.nb = nb
        self.output = run.spec["output"]
        self.last_save = 0.0
        self.display_ids: dict[str, list[tuple[int, int]]] = {}

    def save(self) -> None:
        save_notebook(self.nb, self.output)
        self.last_save = time.monotonic()

    def execute(self) -> int:
        from jupyter_client.manager import KernelManager  # only notebooks need it

        papermill = self.nb["metadata"]["papermill"]
        started = time.monotonic()
        self.save()
        km = KernelManager(kernel_name=self.run.spec.get("kernel") or "python3")
        km.start_kernel(cwd=self.run.spec["working_dir"])
        kc = km.client()
        kc.start_channels()
        code = 0
        try:
            kc.wait_for_ready(timeout=120)
            cells = self.nb["cells"]
            total = sum(1 for c in cells if c.get("cell_type") == "code")
            number = 0
            for index, cell in enumerate(cells):
                meta = cell["metadata"]["papermill"]
                meta.update(start_time=_now(), status="running", exception=False)
                self.save()
                failed = False
                try:
                    if cell.get("cell_type") == "code":
                        number += 1
                        self.run.say(f"Executing cell {number} of {total}")
                        failed = self.execute_cell(km, kc, index, cell)
                except KernelDied:
                    failed = True
                    self.run.say("The kernel died while executing this cell")
                finally:
                    end = datetime.datetime.now(datetime.timezone.utc)
                    begin = datetime.datetime.fromisoformat(meta["start_time"])
                    meta.update(end_time=end.isoformat(), duration=(end - begin).total_seconds())
                    meta["status"] = "failed" if failed else "completed"
                    if failed:
                        meta["exception"] = True
                        papermill["exception"] = True
                    self.save()
                if failed or Stop.reason:
                    code = 1 if failed and not Stop.reason else 0
                    break
            if not Stop.reason:
                reply = kc.kernel_info(reply=True, timeout=10)
                self.nb["metadata"]["language_info"] = reply["content"].get("language_info", {})
        finally:
            papermill["end_time"] = _now()
            papermill["duration"] = round(time.monotonic() - started, 6)
            for cell in self.nb["cells"]:
                status = cell["metadata"]["papermill"]["status"]
                if status == "failed":
                    break
                if status == "pending" and not Stop.reason:
                    cell["metadata"]["papermill"]["status"] = "completed"
            if code:
                self.mark_error()
            self.save()
            kc.stop_channels()
            km.shutdown_kernel(now=True)
        if Stop.reason:
            return TIMED_OUT if Stop.reason == "timeout" else STOPPED
        return code

    def execute_cell(self, km: Any, kc: Any, index: int, cell: dict[str, Any]) -> bool:
        """Run one code cell; True when it failed (an error the cell does not allow)."""
        if not cell["source"].strip():
            return False
        allows_errors = "raises-exception" in _tags(cell)
        timing: dict[str, str] = {}
        cell["metadata"]["execution"] = timing
        msg_id = kc.execute(cell["source"], store_history=True, stop_on_error=not allows_errors)
        idle = False
        interrupted_at = None
        while not idle:
            self.run.check_deadline()
            if Stop.reason and interrupted_at is None:
                interrupted_at = time.monotonic()
                km.interrupt_kernel()  # the cell's output shows where it stopped
            elif interrupted_at and time.monotonic() - interrupted_at > 3:
                return True  # the kernel does not answer the interrupt: keep what there is
            try:
                msg = kc.get_iopub_msg(timeout=0.2)
            except queue.Empty:
                if not km.is_alive():
                    raise KernelDied() from None
                continue
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            idle = self.handle(msg, index, cell, timing)
            if time.monotonic() - self.last_save > 30:
                self.save()  # long cells: their output so far is on disk (as papermill does)
        reply = self.shell_reply(km, kc, msg_id, timing)
        if reply.get("execution_count") is not None:
            cell["execution_count"] = reply["execution_count"]
        if Stop.reason:
            return True  # interrupted: the cell did not complete
        if reply.get("status") == "error" and not allows_errors:
            self.run.error = (
                f"{reply.get('ename')}: {reply.get('evalue')} "
                f"(notebook cell In [{cell.get('execution_count')}])"
            )
            lines = "\n".join(reply.get("traceback") or [])
            self.run.log.write(  # as papermill says it
                (
                    f"\n{75 * '-'}\n"
                    f'Exception encountered at "In [{cell.get("execution_count")}]":\n'
                    f"{ANSI.sub('', lines)}\n"
                ).encode()
            )
            return True
        return False

    def shell_reply(self, km: Any, kc: Any, msg_id: str, timing: dict[str, str]) -> Any:
        waited = 0.0
        while True:
            try:
                msg = kc.get_shell_msg(timeout=0.5)
            except queue.Empty:
                waited += 0.5
                if not km.is_alive():
                    raise KernelDied() from None
                if waited > 60:
                    return {}
                continue
            if msg.get("parent_header", {}).get("msg_id") == msg_id:
                timing["shell.execute_reply"] = _timestamp(msg)
                return msg["content"]

    def handle(
        self, msg: dict[str, Any], index: int, cell: dict[str, Any], timing: dict[str, str]
    ) -> bool:
        """Apply one IOPub message to the cell (as nbclient does); True once the kernel is idle."""
        kind = msg["header"]["msg_type"]
        content = msg["content"]
        display_id = (content.get("transient") or {}).get("display_id")
        if display_id and kind in ("execute_result", "display_data", "update_display_data"):
            self.update_display(display_id, content)
        if "execution_count" in content:
            cell["execution_count"] = content["execution_count"]
        if kind == "status":
            state = content["execution_state"]
            timing[f"iopub.status.{state}"] = _timestamp(msg)
            return bool(state == "idle")
        if kind == "execute_input":
            timing["iopub.execute_input"] = _timestamp(msg)
            return False
        outputs = cell["outputs"]
        if kind == "clear_output":
            if content.get("wait"):
                cell["_clear_before_next"] = True
            else:
                outputs[:] = []
            return False
        output = self.output_from(kind, content)
        if output is None:
            return False
        if cell.pop("_clear_before_next", False):
            outputs[:] = []
        if display_id:
            self.display_ids.setdefault(display_id, []).append((index, len(outputs)))
        outputs.append(output)
        self.echo(output)
        return False

    @staticmethod
    def output_from(kind: str, content: dict[str, Any]) -> dict[str, Any] | None:
        if kind == "stream":
            return {"output_type": "stream", "name": content["name"], "text": content["text"]}
        if kind in ("display_data", "execute_result"):
            out = {"output_type": kind, "data": content["data"], "metadata": content["metadata"]}
            if kind == "execute_result":
                out["execution_count"] = content["execution_count"]
            return out
        if kind == "error":
            return {
                "output_type": "error",
                "ename": content["ename"],
                "evalue": content["evalue"],
                "traceback": content["traceback"],
            }
        return None

    def update_display(self, display_id: str, content: dict[str, Any]) -> None:
        for cell_index, output_index in self.display_ids.get(display_id, []):
            output = self.nb["cells"][cell_index]["outputs"][output_index]
            output["data"], output["metadata"] = content["data"], content["metadata"]

    def echo(self, output: dict[str, Any]) -> None:
        """The cell's output in the run's log, as it comes (papermill's --log-output)."""
        if output["output_type"] == "stream":
            text = output["text"]
        elif output["output_type"] == "error":
            return  # the traceback is logged once the cell has failed
        else:
            text = _joined(output["data"].get("text/plain", ""))
            text = text + "\n" if text and not text.endswith("\n") else text
        if text:
            self.run.log.write(text.encode("utf-8", "replace"))

    def mark_error(self) -> None:
        """papermill's error cells: a note on top and an anchor before the failing cell."""
        cells = self.nb["cells"]
        failed = next(
            (i for i, c in enumerate(cells) if c["metadata"]["papermill"]["status"] == "failed"),
            None,
        )
        if failed is None:
            return
        for at, source in (
            (failed, ERROR_ANCHOR),
            (0, ERROR_MESSAGE % cells[failed].get("execution_count")),
        ):
            marker = {"cell_type": "markdown", "id": _cell_id(), "source": source}
            cells.insert(at, {**marker, "metadata": {"tags": [ERROR_TAG]}})


def run_notebook(run: Run) -> int:
    spec = run.spec
    try:
        with open(spec["notebook"], encoding="utf-8") as f:
            nb = json.load(f)
        nb = prepare_notebook(nb, spec, run)
    except (OSError, ValueError) as exc:
        run.say(f"cannot read the notebook {spec['notebook']}: {exc}")
        return 1
    try:
        os.makedirs(os.path.dirname(spec["output"]), exist_ok=True)
        return NotebookRunner(run, nb).execute()
    except ImportError as exc:
        run.say(f"the environment cannot run notebooks ({exc}): add ipykernel to it")
        return 1
    except Exception as exc:  # the kernel did not start or answer, the output is not writable
        run.say(f"the notebook could not run: {type(exc).__name__}: {exc}")
        return 1


# -- attempts ----------------------------------------------------------------------------------
def main(argv: list[str]) -> int:
    with open(argv[1], encoding="utf-8") as f:
        spec = json.load(f)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    run = Run(spec)
    attempts = int(spec.get("attempts") or 1)
    what = spec.get("input_path") or spec.get("notebook") or " ".join(spec["command"])
    code = 0
    for attempt in range(1, attempts + 1):
        record: dict[str, Any] = {"attempt": attempt, "started": time.time()}
        run.attempts.append(record)
        run.write_status(running=True)
        run.say(f"Attempt {attempt} of {attempts}: {what}" if attempts > 1 else f"Running {what}")
        kills = _oom_kills()
        run.error = None
        code = run_notebook(run) if spec.get("notebook") else run_command(run)
        after = _oom_kills()
        oom = kills is not None and after is not None and after > kills
        record.update(finished=time.time(), exit_code=code, oom_killed=oom)
        if code == 0 or Stop.reason:
            break
        why = f"exit code {code}" + (", out of memory" if oom else "")
        if attempt < attempts:
            delay = float(spec.get("retry_delay") or 0)
            run.say(f"Attempt {attempt} failed ({why}); retrying in {_seconds(delay)}")
            end = time.monotonic() + delay
            while time.monotonic() < end and not Stop.reason:
                time.sleep(0.1)
                run.check_deadline()
            if Stop.reason:
                break
        else:
            run.say(f"Failed: {why}")
    if Stop.reason == "timeout":
        code = TIMED_OUT
    elif Stop.reason == "cancel":
        code = STOPPED
        run.say("Stopped")
    run.write_status(running=False, exit_code=code)
    return code


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv))
    except Exception:  # a fault of this program: the container's output keeps the traceback
        traceback.print_exc()
        sys.exit(1)
