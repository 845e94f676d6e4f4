"""`jupyter docker-env serve-image|serve`: serving images from a shell.

``serve-image DIR`` builds (or reuses) the environment, then its serving image; ``serve REF`` runs
one on 127.0.0.1. The environment commands take serving images too: ``push REF``, ``rm REF`` and
``list --serving`` (a REF is an image reference; a DIR is a folder, a NAME has no '/' or ':').
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import threading
from pathlib import Path
from typing import Any, NoReturn

from ..engine import EngineError
from ..environments.manager import EnvironmentManager
from ..models import BuildOptions, ServingContainer, ServingOptions
from ..serving.dockerfile import PORT
from ..serving.manager import Listener, ServingManager
from .environments import emit_json, finish, manager, printer


def services(args: argparse.Namespace) -> tuple[EnvironmentManager, ServingManager]:
    envs = manager(args)
    serving: ServingManager = envs.settings.serving_manager_class(
        settings=envs.settings, environments=envs, engine=envs.engine
    )
    return envs, serving


def is_image_ref(target: str) -> bool:
    """A serving image reference rather than an environment folder or name."""
    return not Path(target).is_dir() and ("/" in target or ":" in target)


def cmd_serve_image(args: argparse.Namespace) -> int:
    envs, serving = services(args)
    listeners: list[Listener] = [] if args.quiet else [printer]
    options = ServingOptions(
        model=args.model, handler=args.handler, tag=args.tag, no_cache=args.no_cache
    )

    async def run() -> Any:
        loc = envs.location_of(Path(args.dir))
        await serving.check_inputs(options, Path.cwd(), confine=False)
        # The environment first: reused when it is up to date, built (or pulled) when not.
        await finish(envs.build(loc, BuildOptions(), listeners), envs.cancel)
        request = await serving.request(loc, options, Path.cwd(), confine=False)
        return await finish(serving.build(loc, request, listeners), serving.cancel)

    try:
        result = asyncio.run(run())
    finally:
        serving.close()
        envs.close()
    if args.json:
        emit_json(result.to_json())
        return 0
    image = result.serving
    what = "built" if result.built else "up to date"
    print(
        f"{image.env}: {what} → {image.image} ({_size(image.size)}; the environment's image "
        f"{_size(image.env_image_size)}). Run it: jupyter docker-env serve {image.image}"
    )
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    environment = dict(args.env or ())
    envs, serving = services(args)
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops the container too
    served: ServingContainer | None = None
    try:
        served = asyncio.run(serving.run(args.ref, args.port, environment))
        print(f"Starting {args.ref} at {served.url}", file=sys.stderr, flush=True)
        log = None
        if not args.detach:
            log = threading.Thread(target=_print_log, args=(serving, served.id), daemon=True)
            log.start()
        if not asyncio.run(serving.wait_ready(served, args.timeout)):
            tail = "" if log else "\n" + envs.engine.container_logs(served.id, tail=40).strip()
            raise EngineError(f"{args.ref} stopped or did not get ready in time{tail}")
        print(served.url, flush=True)
        print(
            f"Ready: POST {served.url}/predict, GET /healthz, /readyz. "
            + (
                f"Container {served.id[:12]}: stop it with `docker rm -f {served.id[:12]}`."
                if args.detach
                else "Ctrl-C stops it."
            ),
            file=sys.stderr,
            flush=True,
        )
        if args.detach:
            served = None  # keeps running
            return 0
        assert log is not None
        while log.is_alive():
            log.join(0.5)
        code = envs.engine.wait_container(served.id, timeout=10)
        print(f"the server stopped (exit code {code})", file=sys.stderr)
        return 1
    finally:
        if served is not None:
            asyncio.run(serving.stop(served.id))
        serving.close()
        envs.close()


def cmd_push(args: argparse.Namespace) -> int:
    """`push REF`: a serving image, to the registry its name says or the configured one."""
    envs, serving = services(args)

    async def run() -> Any:
        op = await serving.push(args.dir, [] if args.quiet else [printer])
        return await finish(op, serving.cancel)

    try:
        result = asyncio.run(run())
    finally:
        serving.close()
        envs.close()
    emit_json(result.to_json()) if args.json else print(f"pushed {', '.join(result.pushed)}")
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    envs, serving = services(args)
    try:
        removed = asyncio.run(serving.remove(args.name))
    finally:
        serving.close()
        envs.close()
    print(f"removed {removed.id[7:19]} {' '.join(removed.tags)}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    envs, serving = services(args)
    try:
        rows = asyncio.run(serving.list_all())
    finally:
        serving.close()
        envs.close()
    if args.json:
        emit_json([row.to_json() for row in rows])
        return 0
    if not rows:
        print("No serving images yet: `jupyter docker-env serve-image DIR --model … --handler …`.")
    for row in rows:
        print(
            f"{row.image:<48} {_size(row.size):>8}  environment {row.env} "
            f"{_size(row.env_image_size)}, model {_size(row.model_size)}"
        )
    return 0


def register(sub: Any) -> None:
    """Add the serving commands to the top-level parser's subcommands."""
    si = sub.add_parser(
        "serve-image",
        help="build a slim serving image: the environment's runtime, a model and a handler",
    )
    si.add_argument("dir", help="the environment folder")
    si.add_argument("--model", required=True, help="the model file or folder")
    si.add_argument(
        "--handler",
        required=True,
        metavar="FILE.py:FUNCTION",
        help="FUNCTION(payload) answers POST /predict; FILE's load(path), when defined, is "
        "called once per worker with the model's path in the image",
    )
    si.add_argument("--tag", help="another name for the image, e.g. registry.example.com/team/x:1")
    si.add_argument("--no-cache", action="store_true", help="rebuild every layer")
    si.add_argument("--json", action="store_true", help="print one JSON object")
    si.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    si.add_argument("--default-base", help="base image for specs that name none")
    si.add_argument("--ca-bundle", help="CA bundle to trust inside the build")
    si.add_argument("--index-url", help="pip package index inside the build")
    si.set_defaults(func=cmd_serve_image)

    sv = sub.add_parser("serve", help="run a serving image on 127.0.0.1 and print its URL")
    sv.add_argument("ref", help="the serving image (as serve-image or list --serving names it)")
    sv.add_argument(
        "--port", type=int, default=PORT, help=f"port on 127.0.0.1 (default {PORT}; 0: any free)"
    )
    sv.add_argument(
        "-e",
        "--env",
        action="append",
        type=_key_value,
        metavar="KEY=VALUE",
        help="environment variable, e.g. WEB_CONCURRENCY=4 (repeatable)",
    )
    sv.add_argument("-d", "--detach", action="store_true", help="leave it running and return")
    sv.add_argument(
        "--timeout", type=float, default=120, help="seconds to wait for the model to load"
    )
    sv.set_defaults(func=cmd_serve)


def _size(size: int | None) -> str:
    if size is None:
        return "(gone)"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.{1 if size < 10 * scale else 0}f} {unit}"
    return f"{size} B"


def _print_log(serving: ServingManager, container_id: str) -> None:
    for line in serving.logs(container_id):
        print(line, file=sys.stderr, flush=True)


def _key_value(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{item!r} is not KEY=VALUE")
    return key, value


def _interrupt(signum: int, frame: Any) -> NoReturn:
    raise KeyboardInterrupt
