"""`jupyter docker-env build|push|pull|show|list|rm|kernelspec`: environments from a shell.

A thin adapter over the same :class:`EnvironmentManager` the server uses, on an environment
folder (DIR) instead of a name.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jupyter_core.paths import jupyter_data_dir

from ..config import load_settings
from ..engine import Engine
from ..environments.images import registry_problem
from ..environments.manager import EnvironmentManager, Location
from ..kernels import kernelspecs
from ..models import BuildOptions
from ..operations import Cancelled, Operation, OperationFailed


def manager(args: argparse.Namespace, root_dir: Path | None = None) -> EnvironmentManager:
    """The environment service with the user's configuration and this command's options, for
    the workspace ``root_dir`` (default: the current folder)."""
    settings = load_settings(
        registry=getattr(args, "registry", None),
        ca_bundle=getattr(args, "ca_bundle", None),
        pip_index_url=getattr(args, "index_url", None),
        default_base=getattr(args, "default_base", None),
    )
    engine = Engine(
        settings.docker_host or None, builder=settings.builder, docker_cli=settings.docker_cli
    )
    envs: EnvironmentManager = settings.environment_manager_class(
        settings=settings, root_dir=root_dir or Path.cwd(), engine=engine
    )
    return envs


def emit_json(data: Any) -> None:
    print(json.dumps(data, indent=2))


def emit_record(data: dict[str, Any], as_json: bool) -> None:
    """One JSON object, or `key: value` lines."""
    if as_json:
        emit_json(data)
        return
    for key, value in data.items():
        print(f"{key}: {json.dumps(value) if isinstance(value, dict | list) else value}")


def printer(op: Operation, line: str) -> None:
    """An operation's log line on stderr, with its step."""
    step = f"[{op.step}/{op.total_steps}] " if op.total_steps else ""
    print(f"{step}{line}", file=sys.stderr, flush=True)


async def finish(op: Operation, cancel: Callable[[str], Any]) -> Any:
    """Wait for an operation (cancelled if this is interrupted); its result, or its error."""
    try:
        await op.wait()
    finally:
        if op.active:
            cancel(op.id)
    if op.state == "failed":
        raise OperationFailed(op.error or "failed", op.failed_step)
    if op.state == "cancelled":
        raise Cancelled()
    return op.result


def follow(
    args: argparse.Namespace,
    start: Callable[
        [EnvironmentManager, Location, list[Callable[[Operation, str], None]]], Operation
    ],
) -> Any:
    """Run an operation on DIR, its log on stderr (unless --quiet); return its result."""
    envs = manager(args)

    async def run() -> Any:
        loc = envs.location_of(Path(args.dir))
        return await finish(start(envs, loc, [] if args.quiet else [printer]), envs.cancel)

    try:
        return asyncio.run(run())
    finally:
        envs.close()


def cmd_build(args: argparse.Namespace) -> int:
    options = BuildOptions(no_cache=args.no_cache, from_lock=args.from_lock, pull=not args.no_pull)
    result = follow(args, lambda envs, loc, out: envs.build(loc, options, out))
    data = {**result.to_json(), "kernel_name": kernelspecs.kernel_name(result.name)}
    if args.json:
        emit_json(data)
    else:
        what = "built" if result.built else ("pulled" if result.pulled else "up to date")
        print(f"{result.name}: {what} → {result.image} (kernel {data['kernel_name']})")
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    result = follow(args, lambda envs, loc, out: envs.pull(loc, out))
    data = {**result.to_json(), "kernel_name": kernelspecs.kernel_name(result.name)}
    emit_json(data) if args.json else print(f"{result.name}: pulled {result.image}")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from . import serving  # imports this module

    if serving.is_image_ref(args.dir):
        return serving.cmd_push(args)
    result = follow(args, lambda envs, loc, out: envs.push(loc, out))
    emit_json(result.to_json()) if args.json else print(f"pushed {', '.join(result.pushed)}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    envs = manager(args)
    try:
        loc = envs.location_of(Path(args.dir))
        env = asyncio.run(envs.describe(loc))
    finally:
        envs.close()
    data = {**env.to_json(), "folder": str(loc.folder)}
    emit_record(data, args.json)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    if args.serving:
        from . import serving  # imports this module

        return serving.cmd_list(args)
    envs = manager(args)
    try:
        rows = [row.to_json() for row in envs.images.catalog()]
    finally:
        envs.close()
    if args.json:
        emit_json(rows)
        return 0
    if not rows:
        print("No environment images yet: `jupyter docker-env build DIR` builds one.")
    for row in rows:
        size = f"{(row['size'] or 0) / 1e6:.0f} MB"
        print(f"{row['name']:<24} {row['image_id'][7:19]}  {size:>8}  {' '.join(row['tags'])}")
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    from . import serving  # imports this module

    if serving.is_image_ref(args.name):
        return serving.cmd_rm(args)
    envs = manager(args)
    try:
        removed = envs.images.remove(args.name)
    finally:
        envs.close()
    if not removed:
        print(f"No images of environment {args.name!r}.", file=sys.stderr)
        return 1
    for row in removed:
        print(f"removed {row.image_id[7:19]} {' '.join(row.tags)}")
    return 0


def cmd_kernelspec_install(args: argparse.Namespace) -> int:
    envs = manager(args)
    try:
        env = asyncio.run(envs.describe(envs.location_of(Path(args.dir))))
        latest = envs.images.latest_ref(env.name)
    finally:
        envs.close()
    if env.image is None:
        print(
            f"{env.name} is not built yet: run `jupyter docker-env build {args.dir}` first",
            file=sys.stderr,
        )
        return 1
    config: dict[str, Any] = {}
    if args.workspace:
        config["workspace"] = str(Path(args.workspace).resolve())
    gpu = env.spec.gpu if env.spec else False
    spec = kernelspecs.kernel_json(env.name, latest, gpu, config)
    if args.prefix:
        kernels = Path(args.prefix) / "share" / "jupyter" / "kernels"
    elif args.sys_prefix:
        kernels = Path(sys.prefix) / "share" / "jupyter" / "kernels"
    else:
        kernels = Path(jupyter_data_dir()) / "kernels"
    path = kernelspecs.write(kernels, spec)
    print(f"Installed kernel spec {kernelspecs.kernel_name(env.name)} in {path.parent}")
    return 0


def registry_option(value: str) -> str:
    if problem := registry_problem(value):
        raise argparse.ArgumentTypeError(problem)
    return value


def register(sub: Any) -> None:
    """Add the environment commands to the top-level parser's subcommands."""

    def common(
        sp: argparse.ArgumentParser, dir_arg: bool = True, what: str = "the environment folder"
    ) -> None:
        if dir_arg:
            sp.add_argument("dir", help=what)
        sp.add_argument("--json", action="store_true", help="print one JSON object")
        sp.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
        sp.add_argument(
            "--registry", type=registry_option, help="HOST[:PORT]/NAMESPACE to share images through"
        )

    b = sub.add_parser("build", help="build the environment's image (or reuse/pull it)")
    common(b)
    b.add_argument(
        "--no-cache", action="store_true", help="rebuild every layer (refreshes unpinned packages)"
    )
    b.add_argument(
        "--from-lock", action="store_true", help="install the exact versions in docker-env.lock"
    )
    b.add_argument("--no-pull", action="store_true", help="never pull from the registry")
    b.add_argument("--ca-bundle", help="CA bundle to trust inside the build")
    b.add_argument("--index-url", help="pip package index inside the build")
    b.add_argument("--default-base", help="base image for specs that name none")
    b.set_defaults(func=cmd_build)

    for name, func, text in (
        ("push", cmd_push, "push the environment's image (or a serving image) to the registry"),
        ("pull", cmd_pull, "pull the environment's image from the registry"),
        ("show", cmd_show, "show the environment's spec, state, image and lock"),
    ):
        sp = sub.add_parser(name, help=text)
        common(
            sp,
            what="the environment folder, or a serving image (REF)"
            if name == "push"
            else "the environment folder",
        )
        sp.add_argument("--default-base", help="base image for specs that name none")
        sp.set_defaults(func=func)

    ls = sub.add_parser("list", help="list the environment images on the engine")
    common(ls, dir_arg=False)
    ls.add_argument(
        "--serving", action="store_true", help="list the serving images, with their sizes"
    )
    ls.set_defaults(func=cmd_list)

    rm = sub.add_parser(
        "rm", help="remove an environment's images (not its folder), or a serving image"
    )
    rm.add_argument("name", help="the environment's name, or a serving image (REF)")
    rm.set_defaults(func=cmd_rm)

    ks = sub.add_parser("kernelspec", help="kernel spec files for tools without the server")
    ks_sub = ks.add_subparsers(dest="kernelspec_command", required=True)
    ki = ks_sub.add_parser("install", help="write a kernel.json for the environment")
    ki.add_argument("dir")
    where = ki.add_mutually_exclusive_group()
    where.add_argument("--user", action="store_true", help="the user's data dir (default)")
    where.add_argument("--prefix", help="PREFIX/share/jupyter/kernels")
    where.add_argument("--sys-prefix", action="store_true", help="this Python's prefix")
    ki.add_argument(
        "--workspace", help="folder to mount in the kernel (default: the kernel's working dir)"
    )
    ki.set_defaults(func=cmd_kernelspec_install)
