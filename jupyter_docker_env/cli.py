"""`jupyter docker-env`: build, list, show, remove, share and install kernels from a shell.

It reads the same configuration as the server (c.DockerEnvApp.* in jupyter_server_config)
and command-line options override it.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jupyter_core.application import JupyterApp
from jupyter_core.paths import jupyter_data_dir

from . import __version__, kernelspecs
from .builder import LABEL_ENV, LABEL_GPU, Builder, BuildOptions, read_lock, registry_problem
from .engine import Engine, EngineError
from .jobs import Cancelled, Job, JobFailed
from .spec import SpecError


class _ServerConfig(JupyterApp):
    """Loads jupyter_server_config files, so the CLI sees the server's c.DockerEnvApp."""

    name = "jupyter-docker-env"
    config_file_name = "jupyter_server_config"


@dataclass
class PrintingJob(Job):
    """A job whose log goes to stderr as it happens, with the build step in front."""

    quiet: bool = field(default=False, repr=False)

    def emit(self, line: str) -> None:
        super().emit(line)
        if not self.quiet:
            step = f"[{self.step}/{self.total_steps}] " if self.total_steps else ""
            print(f"{step}{line.rstrip()}", file=sys.stderr, flush=True)


def make_builder(args: argparse.Namespace) -> Builder:
    from .app import DockerEnvApp

    loader = _ServerConfig()
    loader.load_config_file()
    app = DockerEnvApp(config=loader.config)
    for option, trait in (
        ("registry", "registry"),
        ("ca_bundle", "ca_bundle"),
        ("index_url", "pip_index_url"),
        ("default_base", "default_base"),
    ):
        value = getattr(args, option, None)
        if value is not None:
            setattr(app, trait, value)
    return Builder(Engine(app.docker_host or None), app.build_settings())


def _registry(value: str) -> str:
    if problem := registry_problem(value):
        raise argparse.ArgumentTypeError(problem)
    return value


def _emit_json(data: Any) -> None:
    print(json.dumps(data, indent=2))


def cmd_build(args: argparse.Namespace) -> int:
    builder = make_builder(args)
    job = PrintingJob(env=Path(args.dir).name, kind="build", quiet=args.quiet)
    options = BuildOptions(no_cache=args.no_cache, from_lock=args.from_lock, pull=not args.no_pull)
    result = builder.build(Path(args.dir).resolve(), options, job)
    result["kernel_name"] = kernelspecs.kernel_name(result["name"])
    if args.json:
        _emit_json(result)
    else:
        what = "built" if result["built"] else ("pulled" if result["pulled"] else "up to date")
        print(f"{result['name']}: {what} → {result['image']} (kernel {result['kernel_name']})")
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    builder = make_builder(args)
    job = PrintingJob(env=Path(args.dir).name, kind="pull", quiet=args.quiet)
    result = builder.pull_env(Path(args.dir).resolve(), job)
    result["kernel_name"] = kernelspecs.kernel_name(result["name"])
    _emit_json(result) if args.json else print(f"{result['name']}: pulled {result['image']}")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    builder = make_builder(args)
    job = PrintingJob(env=Path(args.dir).name, kind="push", quiet=args.quiet)
    result = builder.push(Path(args.dir).resolve(), job)
    _emit_json(result) if args.json else print(f"pushed {', '.join(result['pushed'])}")
    return 0


def _images(builder: Builder, name: str | None = None) -> list[dict[str, Any]]:
    rows = []
    for image in builder.env_images(name):
        tags = [t for t in image.get("RepoTags") or [] if t != "<none>:<none>"]
        rows.append(
            {
                "name": (image.get("Labels") or {}).get(LABEL_ENV),
                "image_id": image["Id"],
                "tags": tags,
                "size": image.get("Size"),
                "created": image.get("Created"),
                "gpu": (image.get("Labels") or {}).get(LABEL_GPU) == "true",
            }
        )
    return sorted(rows, key=lambda r: (r["name"] or "", -(r["created"] or 0)))


def cmd_list(args: argparse.Namespace) -> int:
    rows = _images(make_builder(args))
    if args.json:
        _emit_json(rows)
        return 0
    if not rows:
        print("No environment images yet: `jupyter docker-env build DIR` builds one.")
    for row in rows:
        size = f"{(row['size'] or 0) / 1e6:.0f} MB"
        print(f"{row['name']:<24} {row['image_id'][7:19]}  {size:>8}  {' '.join(row['tags'])}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    builder = make_builder(args)
    folder = Path(args.dir).resolve()
    plan = builder.plan(folder, resolve_base=False)
    image = builder.find_image(builder.image_ref(plan)) if plan.hash else None
    data = {
        "name": plan.spec.name,
        "folder": str(folder),
        "spec": plan.spec.to_json(),
        "spec_hash": plan.hash or None,
        "image": image.to_json() if image else None,
        "up_to_date": image is not None,
        "kernel_name": kernelspecs.kernel_name(plan.spec.name),
        "lock": (builder.lock_of(image) if image else None) or read_lock(folder),
    }
    if args.json:
        _emit_json(data)
    else:
        for key, value in data.items():
            print(f"{key}: {json.dumps(value) if isinstance(value, dict | list) else value}")
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    builder = make_builder(args)
    rows = _images(builder, args.name)
    if not rows:
        print(f"No images of environment {args.name!r}.", file=sys.stderr)
        return 1
    for row in rows:
        builder.engine.remove_image(row["image_id"], force=True)
        print(f"removed {row['image_id'][7:19]} {' '.join(row['tags'])}")
    return 0


def cmd_kernelspec_install(args: argparse.Namespace) -> int:
    builder = make_builder(args)
    folder = Path(args.dir).resolve()
    plan = builder.plan(folder, resolve_base=False)
    if builder.find_image(builder.latest_ref(plan.spec.name)) is None:
        print(
            f"{plan.spec.name} is not built yet: run `jupyter docker-env build {args.dir}` first",
            file=sys.stderr,
        )
        return 1
    config: dict[str, Any] = {}
    if args.workspace:
        config["workspace"] = str(Path(args.workspace).resolve())
    spec = kernelspecs.kernel_json(
        plan.spec.name, builder.latest_ref(plan.spec.name), plan.spec.gpu, config
    )
    if args.prefix:
        kernels = Path(args.prefix) / "share" / "jupyter" / "kernels"
    elif args.sys_prefix:
        kernels = Path(sys.prefix) / "share" / "jupyter" / "kernels"
    else:
        kernels = Path(jupyter_data_dir()) / "kernels"
    path = kernelspecs.write(kernels, spec)
    print(f"Installed kernel spec {kernelspecs.kernel_name(plan.spec.name)} in {path.parent}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="jupyter docker-env",
        description="Build reproducible Docker environments and use them as Jupyter kernels.",
    )
    p.add_argument("--version", action="version", version=__version__)
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser, dir_arg: bool = True) -> None:
        if dir_arg:
            sp.add_argument("dir", help="the environment folder")
        sp.add_argument("--json", action="store_true", help="print one JSON object")
        sp.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
        sp.add_argument(
            "--registry", type=_registry, help="HOST[:PORT]/NAMESPACE to share images through"
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
        ("push", cmd_push, "push the environment's image to the registry"),
        ("pull", cmd_pull, "pull the environment's image from the registry"),
        ("show", cmd_show, "show the environment's spec, image and lock"),
    ):
        sp = sub.add_parser(name, help=text)
        common(sp)
        sp.add_argument("--default-base", help="base image for specs that name none")
        sp.set_defaults(func=func)

    ls = sub.add_parser("list", help="list the environment images on the engine")
    common(ls, dir_arg=False)
    ls.set_defaults(func=cmd_list)

    rm = sub.add_parser("rm", help="remove an environment's images (not its folder)")
    rm.add_argument("name")
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
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except SpecError as exc:
        print(f"error: invalid environment: {exc}", file=sys.stderr)
    except JobFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        if exc.step:
            print(f"failed step: {exc.step}", file=sys.stderr)
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
    except Cancelled:
        print("cancelled", file=sys.stderr)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())
