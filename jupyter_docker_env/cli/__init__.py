"""`jupyter docker-env`: the command line, a thin adapter over the same services as the server.

It reads the same configuration as the server (c.DockerEnvApp.* in jupyter_server_config);
command-line options override it.
"""

from __future__ import annotations

import argparse
import sys

from .. import __version__
from ..engine import EngineError
from ..environments.manager import EnvNotFound
from ..environments.spec import SpecError
from ..models import FieldError
from ..operations import Cancelled, OperationFailed
from ..runs.manager import RunConflict, RunNotFound, RunRefused
from . import environments, notebooks, runs, serving


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="jupyter docker-env",
        description="Build reproducible Docker environments and use them as Jupyter kernels.",
    )
    p.add_argument("--version", action="version", version=__version__)
    sub = p.add_subparsers(dest="command", required=True)
    environments.register(sub)
    runs.register(sub)
    serving.register(sub)
    notebooks.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # What follows `--` is a run's command, options and all (argparse would take them).
    command: list[str] = []
    if "--" in argv:
        argv, command = argv[: argv.index("--")], argv[argv.index("--") + 1 :]
    args = parser().parse_args(argv)
    if command and args.func is not runs.cmd_run:
        parser().error("only `run` takes a command after --")
    args.run_command = command
    try:
        return int(args.func(args))
    except SpecError as exc:
        print(f"error: invalid environment: {exc}", file=sys.stderr)
    except FieldError as exc:  # an option's value (a run's notebook, a serving image's model, …)
        print(f"error: {exc}", file=sys.stderr)
    except OperationFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        if exc.step:
            print(f"failed step: {exc.step}", file=sys.stderr)
    except (EngineError, RunNotFound, RunConflict, RunRefused, EnvNotFound) as exc:
        print(f"error: {exc}", file=sys.stderr)
    except Cancelled:
        print("cancelled", file=sys.stderr)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())
