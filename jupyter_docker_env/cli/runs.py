"""`jupyter docker-env run` and `jupyter docker-env runs`: training runs from a shell.

A thin adapter over the same :class:`RunManager` the server uses. The workspace is ``--workspace``,
else the nearest folder up from here that holds runs (``.docker-env/``) or environments
(``environments/``), as a server's root does, else the current folder; it is mounted into the
run, and its runs are the ones listed. Without ``--detach`` this
process prepares the run, follows its log and exits with its exit code; Ctrl-C cancels it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import yaml

from ..config import load_settings, os_user
from ..containers.placement import working_dir_in
from ..environments.manager import Location
from ..kernels.resources import parse_cpus
from ..models import FieldError, Run, RunRequest
from ..notebooks.record import read_notebook
from ..notebooks.service import NotebookEnvironments
from ..runs.manager import RunManager
from .environments import emit_json, emit_record, manager


def workspace_for(args: argparse.Namespace, env_dirs: list[str]) -> Path:
    """--workspace, else the nearest folder up from here that holds runs or environments (as
    a server's root does), else here."""
    if args.workspace:
        return Path(os.path.abspath(args.workspace))
    here = Path.cwd()
    for folder in (here, *here.parents):
        if any((folder / d).is_dir() for d in (".docker-env", *env_dirs)):
            return folder
    return here


def services(args: argparse.Namespace) -> RunManager:
    workspace = workspace_for(args, list(load_settings().env_dirs))
    envs = manager(args, root_dir=workspace)
    settings = envs.settings
    runs: RunManager = settings.run_manager_class(
        config=settings.config,
        settings=settings,
        environments=envs,
        workspace=workspace,
        adopt=False,
    )
    return runs


def close(runs: RunManager) -> None:
    runs.close()
    runs.envs.close()


def parameter_value(value: str) -> Any:
    """A -p value as papermill's command line reads it: True, False, None, a number, or text."""
    if value in ("True", "False", "None"):
        return {"True": True, "False": False, "None": None}[value]
    for kind in (int, float):
        with contextlib.suppress(ValueError):
            return kind(value)
    return value


def _yaml_parameters(text: str, where: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise FieldError("parameters", f"{where} is not YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise FieldError("parameters", f"{where} must hold name: value pairs")
    # as JSON values (a date stays the text it was written as)
    return json.loads(json.dumps(data, default=str))  # type: ignore[no-any-return]


def parameters_for(args: argparse.Namespace) -> dict[str, Any]:
    """Notebook parameters in papermill's order: -f files, -y YAML, -p values, -r raw text."""
    parameters: dict[str, Any] = {}
    for path in args.parameters_file or []:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise FieldError("parameters", f"cannot read {path}: {exc}") from None
        parameters.update(_yaml_parameters(text, path))
    for text in args.parameters_yaml or []:
        parameters.update(_yaml_parameters(text, "-y"))
    parameters.update({name: parameter_value(v) for name, v in args.parameter or []})
    parameters.update(dict(args.parameter_raw or []))
    return parameters


def _relative(workspace: Path, path: str, what: str) -> str:
    inside = working_dir_in(str(workspace), os.path.abspath(path))
    if inside is None:
        raise FieldError(
            what,
            f"{path} is outside the workspace {workspace}: run from inside it, or name it "
            "with --workspace",
        )
    return Path(inside).relative_to(workspace).as_posix()


def request_for(args: argparse.Namespace, runs: RunManager, env: str) -> RunRequest:
    command: list[str] = args.run_command
    if len(args.target) > 1 or (args.target and not args.target[0].endswith(".ipynb")):
        raise FieldError(
            "command",
            "put the command after -- (run DIR -- python train.py), or name one notebook "
            "(run DIR NOTEBOOK.ipynb)",
        )
    notebook = args.target[0] if args.target else None
    if bool(notebook) == bool(command):
        raise FieldError("command", "give a notebook or a command after --, not both")
    ws = runs.workspace
    body: dict[str, Any] = {
        "env": env,
        "command": command,
        "notebook": _relative(ws, notebook, "notebook") if notebook else None,
        "parameters": parameters_for(args),
        "output": _relative(ws, args.output, "output") if args.output else None,
        "cwd": _relative(ws, os.getcwd(), "cwd"),
        "cpus": args.cpus,
        "memory": args.memory,
        "gpus": args.gpus,
        "timeout": args.timeout,
        "retries": args.retries,
        "snapshot": args.snapshot,
    }
    return RunRequest.from_json({k: v for k, v in body.items() if v is not None})


def shown(run: Run, workspace: Path) -> dict[str, Any]:
    """The run as --json prints it: the REST shape, with absolute paths."""
    data = run.to_json()
    for key in ("output", "log"):
        if data[key]:
            data[key] = str(workspace / data[key])
    return data


async def follow(runs: RunManager, run_id: str, out: TextIO, until_started: bool = False) -> Run:
    """Print the run's log as it grows until it ends (or leaves the queue); Ctrl-C cancels it."""
    interrupted = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, interrupted.set)
    offset = 0
    try:
        while True:
            log = await runs.read_log(run_id, offset)
            for line in log.lines:
                print(line, file=out, flush=True)
            offset = log.offset
            done = log.state not in ("queued", "running")
            if (done and not log.lines) or (until_started and log.state != "queued"):
                return await runs.get(run_id)
            if interrupted.is_set():
                print(f"interrupted: cancelling run {run_id}", file=sys.stderr, flush=True)
                await runs.cancel(run_id, wait=True, by="Ctrl-C")
                interrupted.clear()
            elif not log.lines:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(interrupted.wait(), 0.2)
    finally:
        loop.remove_signal_handler(signal.SIGINT)


def summary(run: Run, workspace: Path) -> str:
    took = f" in {run.duration:.1f} s" if run.duration is not None else ""
    text = f"run {run.id} {run.state.replace('_', ' ')}{took}"
    if run.exit_code is not None:
        text += f" (exit code {run.exit_code}"
        text += (
            f", attempt {run.attempt} of {run.request.retries + 1})" if run.request.retries else ")"
        )
    if run.reason and run.state in ("failed", "timed_out"):
        text += f": {run.reason}"
    if run.output:
        text += f"\nexecuted notebook: {workspace / run.output}"
    return text


def exit_code(run: Run) -> int:
    if run.exit_code is not None:
        return run.exit_code
    return 0 if run.state == "succeeded" else 1


def cmd_run(args: argparse.Namespace) -> int:
    runs = services(args)
    out = sys.stderr if args.json else sys.stdout

    # run NOTEBOOK.ipynb: on the environment the notebook was saved on
    notebook = read_notebook(Path(args.dir)) if args.dir.endswith(".ipynb") else None

    async def go() -> Run:
        if notebook is not None:
            args.target.insert(0, args.dir)
            loc = await notebooks_environment(runs, Path(args.dir), notebook)
        else:
            loc = runs.envs.location_of(Path(args.dir))
        request = request_for(args, runs, loc.name)
        run = await runs.create(request, user=os_user(), location=loc)
        if args.detach:
            # the preparation (a build, maybe) is shown; the run itself goes on without us
            return await follow(runs, run.id, sys.stderr, until_started=True)
        return await follow(runs, run.id, out)

    try:
        run = asyncio.run(go())
    finally:
        close(runs)
    if args.json:
        emit_json(shown(run, runs.workspace))
    elif args.detach and run.active:
        print(run.id)
        print(
            f"run {run.id} is {run.state}: `jupyter docker-env runs logs {run.id} --follow`",
            file=sys.stderr,
        )
    else:
        print(summary(run, runs.workspace), file=sys.stderr)
    return 0 if args.detach and run.active else exit_code(run)


async def notebooks_environment(runs: RunManager, path: Path, notebook: Any) -> Location:
    """The environment a notebook was saved on (its metadata.docker_env record), when it is
    here as recorded (or another environment here is); otherwise SystemExit saying what to do."""
    comparison = await NotebookEnvironments(runs.envs).compare(str(path), notebook)
    if comparison.state == "same" and comparison.env:
        return runs.envs.locate(comparison.env)
    if comparison.match is not None:
        return runs.envs.locate(comparison.match.name)
    choose = f"`jupyter docker-env run DIR {path}` runs it on the environment in DIR"
    if comparison.state == "none":
        raise SystemExit(f"error: {path}: {comparison.message} {choose}.")
    raise SystemExit(
        f"error: {path}: {comparison.message} `jupyter docker-env restore {path}` recreates "
        f"the notebook's environment; or {choose}."
    )


def _ago(when: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when)) if when else "-"


def cmd_runs(args: argparse.Namespace) -> int:
    runs = services(args)
    try:
        found = asyncio.run(runs.list_runs())
    finally:
        close(runs)
    if args.json:
        emit_json([shown(run, runs.workspace) for run in found])
        return 0
    if not found:
        print(f"No runs in {runs.workspace} yet: `jupyter docker-env run DIR -- CMD` starts one.")
        return 0
    print(f"{'ID':<12}  {'ENV':<16} {'STATE':<10} {'STARTED':<19} {'TIME':>8}  WHAT")
    for run in found:
        r = run.request
        what = r.notebook or " ".join(r.command)
        took = f"{run.duration:.1f}s" if run.duration is not None else "-"
        row = f"{run.id:<12}  {r.env:<16} {run.state:<10} {_ago(run.started):<19} {took:>8}"
        print(f"{row}  {what}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    runs = services(args)
    try:
        run = asyncio.run(runs.get(args.id))
    finally:
        close(runs)
    emit_record(shown(run, runs.workspace), getattr(args, "json", False))
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    runs = services(args)

    async def go() -> Run:
        run = await runs.get(args.id)
        if args.follow:
            return await follow(runs, run.id, sys.stdout)
        log = await runs.read_log(run.id, 0)
        offset = 0
        while log.lines:
            for line in log.lines:
                print(line)
            offset = log.offset
            log = await runs.read_log(run.id, offset)
        return run

    try:
        asyncio.run(go())
    finally:
        close(runs)
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    runs = services(args)
    try:
        run = asyncio.run(runs.cancel(args.id, wait=True, by=os_user()))
    finally:
        close(runs)
    print(summary(run, runs.workspace))
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    runs = services(args)

    async def go() -> Run:
        run = await runs.get(args.id)
        await runs.delete(run.id)
        return run

    try:
        run = asyncio.run(go())
    finally:
        close(runs)
    print(f"removed run {run.id}")
    return 0


def cpus_option(value: str) -> float:
    try:
        return parse_cpus(value)
    except FieldError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


def register(sub: Any) -> None:
    """Add `run` and `runs` to the top-level parser's subcommands."""

    def workspace(sp: argparse.ArgumentParser, default: Any = None) -> None:
        sp.add_argument(
            "--workspace",
            default=default,
            help="the folder mounted into runs and holding their records (default: the nearest "
            "folder up from here with runs or environments in it, else this one)",
        )

    r = sub.add_parser(
        "run",
        help="run a command or a notebook in an environment's container",
        usage="jupyter docker-env run DIR [options] -- CMD [ARGS...]\n"
        "       jupyter docker-env run DIR NOTEBOOK.ipynb [-p NAME VALUE]... [options]\n"
        "       jupyter docker-env run NOTEBOOK.ipynb [-p NAME VALUE]... [options]",
        description="Run a command (after --) or a notebook with parameters as a detached "
        "container of the environment in DIR, building the environment first when it is not "
        "current. Without DIR, a notebook runs on the environment it was saved on (its "
        "metadata.docker_env record). Without --detach, follow the log and exit with the run's "
        "exit code.",
    )
    r.add_argument("dir", help="the environment folder (or the notebook, to run it on its own)")
    r.add_argument("target", nargs="*", metavar="NOTEBOOK.ipynb", help="the notebook to run")
    r.add_argument(
        "-p",
        "--parameter",
        nargs=2,
        action="append",
        metavar=("NAME", "VALUE"),
        help="a notebook parameter (papermill's rules: True, False, None, numbers, else text)",
    )
    r.add_argument(
        "-r",
        "--parameter-raw",
        nargs=2,
        action="append",
        metavar=("NAME", "VALUE"),
        help="a notebook parameter taken as text",
    )
    r.add_argument(
        "-f",
        "--parameters-file",
        action="append",
        metavar="FILE",
        help="a YAML file of notebook parameters",
    )
    r.add_argument(
        "-y", "--parameters-yaml", action="append", metavar="YAML", help="parameters as YAML"
    )
    r.add_argument("--output", help="the executed notebook (default: runs/NAME-ID.ipynb beside it)")
    r.add_argument("--detach", action="store_true", help="start it and return its id")
    r.add_argument("--json", action="store_true", help="print one JSON object (the run)")
    r.add_argument("--cpus", type=cpus_option, help="CPU limit, e.g. 2 or 0.5")
    r.add_argument("--memory", help="memory limit, e.g. 4g (no swap beyond it)")
    r.add_argument("--gpus", help='"all", a number of GPUs, or device ids such as 0,1')
    r.add_argument("--timeout", type=float, help="stop it after this many seconds (timed_out)")
    r.add_argument("--retries", type=int, default=0, help="run it again this often if it fails")
    r.add_argument(
        "--snapshot",
        action="store_true",
        help="copy the code into a run image instead of mounting it (reproducible)",
    )
    workspace(r)
    r.set_defaults(func=cmd_run)

    rs = sub.add_parser("runs", help="list, show, follow, cancel or remove runs")
    workspace(rs)
    rs.add_argument("--json", action="store_true", help="print JSON")
    rs.set_defaults(func=cmd_runs)
    rs_sub = rs.add_subparsers(dest="runs_command")
    for name, func, text in (
        ("show", cmd_show, "one run's record"),
        ("logs", cmd_logs, "a run's log"),
        ("cancel", cmd_cancel, "stop a run (SIGTERM, then SIGKILL); its partial output stays"),
        ("rm", cmd_rm, "forget a finished run (its record and log)"),
    ):
        sp = rs_sub.add_parser(name, help=text)
        sp.add_argument("id", help="the run's id (or a unique start of it)")
        # SUPPRESS: given before the subcommand (runs --workspace W show ID) counts too
        workspace(sp, default=argparse.SUPPRESS)
        if name == "show":
            sp.add_argument(
                "--json", action="store_true", default=argparse.SUPPRESS, help="print JSON"
            )
        if name == "logs":
            sp.add_argument("-f", "--follow", action="store_true", help="until the run ends")
        sp.set_defaults(func=func)
