"""`jupyter docker-env restore NOTEBOOK.ipynb`: recreate the environment a notebook recorded.

The same service as the server's (notebooks.service): it shows the base image, packages and files
first and asks before anything runs (unless --yes); environments are created under the current
folder's environments/ like the server's.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from ..kernels import kernelspecs
from ..models import NotebookEnvComparison, RestorePlan
from ..notebooks.record import read_notebook
from ..notebooks.service import Listener, NotebookEnvironments
from .environments import emit_json, finish, manager, printer, registry_option


def show(comparison: NotebookEnvComparison, plan: RestorePlan, folder: Path) -> None:
    """What recreating would do, on stderr (stdout stays for the result)."""

    def say(text: str = "") -> None:
        print(text, file=sys.stderr)

    say(comparison.message)
    say()
    say(f"Recreate it as environment {plan.name} in {folder}:")
    say(f"  base image: {plan.base or '(its Dockerfile)'}")
    if plan.base_digest:
        say(f"              {plan.base_digest}")
    for label, items in (("pip", plan.pip), ("apt", plan.apt), ("conda", plan.conda)):
        if items:
            say(f"  {label} ({len(items)}): {' '.join(items)}")
    say(f"  files: {', '.join(sorted(plan.files)) or '(none)'}")
    if plan.source:
        say(f"  pulled by digest when the registry has it: {plan.source}")
    else:
        say("  built from the recorded versions (no registry to pull from)")


def confirmed(args: argparse.Namespace) -> bool:
    if args.yes:
        return True
    if not sys.stdin.isatty():
        raise SystemExit("error: nothing was run; confirm with --yes (stdin is not a terminal)")
    print("Recreate it? [y/N] ", end="", file=sys.stderr, flush=True)
    return sys.stdin.readline().strip().lower() in ("y", "yes")


def cmd_restore(args: argparse.Namespace) -> int:
    path = Path(args.notebook)
    notebook = read_notebook(path)
    envs = manager(args)
    notebooks = NotebookEnvironments(envs)

    async def run() -> dict[str, Any]:
        comparison = await notebooks.compare(str(path), notebook)
        plan = comparison.restore
        data: dict[str, Any] = {"comparison": comparison.to_json(), "restored": None}
        if comparison.state == "none":
            raise SystemExit(f"error: {path}: {comparison.message}")
        if comparison.state == "same":
            print(comparison.message, file=sys.stderr)
            return data
        assert plan is not None
        show(comparison, plan, envs.env_dirs[0] / plan.name)
        if not plan.allowed:
            raise SystemExit(f"error: refused: {plan.refusal}")
        if not confirmed(args):
            print("Nothing was changed.", file=sys.stderr)
            return data
        listeners: list[Listener] = [] if args.quiet else [printer]
        op = await notebooks.restore(str(path), notebook, args.name, listeners)
        result = await finish(op, envs.cancel)
        data["restored"] = {
            **result.to_json(),
            "folder": str(envs.locate(result.name).folder),
            "kernel_name": kernelspecs.kernel_name(result.name),
        }
        return data

    try:
        data = asyncio.run(run())
    finally:
        envs.close()
    restored = data["restored"]
    if args.json:
        emit_json(data)
    elif restored:
        how = "pulled" if restored["pulled"] else ("built" if restored["built"] else "found")
        print(
            f"{restored['name']}: {how} {restored['image']} (kernel {restored['kernel_name']}, "
            f"folder {restored['folder']})"
        )
        print(
            "For nbclient or papermill: jupyter docker-env kernelspec install "
            f"{restored['folder']}",
            file=sys.stderr,
        )
    return 0


def register(sub: Any) -> None:
    """Add `restore` to the top-level parser's subcommands."""
    r = sub.add_parser(
        "restore",
        help="recreate the environment a notebook recorded (metadata.docker_env)",
        description="Compare the environment a notebook recorded with the ones here, show what "
        "recreating it installs, and (once confirmed) create its environment folder from the "
        "recorded spec and lock: pulled by digest when the registry has it, else built with "
        "exactly the recorded versions.",
    )
    r.add_argument("notebook", help="the notebook (.ipynb)")
    r.add_argument("--name", help="the environment to create (default: the recorded name)")
    r.add_argument("-y", "--yes", action="store_true", help="do not ask before recreating")
    r.add_argument("--json", action="store_true", help="print one JSON object")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    r.add_argument(
        "--registry", type=registry_option, help="HOST[:PORT]/NAMESPACE to pull the image from"
    )
    r.set_defaults(func=cmd_restore)
