"""Run inside the first stage of a serving image's build, with the venv's Python: remove the
named distributions from the venv, file by file as their RECORD lists them, and say whether the
venv still sees the system's packages.

    python prune.py --system-site-packages true|false [--strip-build-inputs] NAME...

Only files inside the venv are removed; then the byte code of removed modules and the folders
left empty. ``--strip-build-inputs`` also removes what only a compiler reads from the packages
that stay (C, C++ and Cython sources and headers, static libraries): a serving image has no
compiler. Standard library only (pip itself may be among the removed).
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import os
import shutil
import sys
from pathlib import Path


def size_of(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def remove(name: str, venv: Path) -> int:
    """Remove one distribution's files; how many."""
    dist = md.distribution(name)
    removed = 0
    for entry in dist.files or []:
        path = Path(os.path.normpath(os.path.abspath(str(dist.locate_file(entry)))))
        if venv in path.parents and (path.is_file() or path.is_symlink()):
            path.unlink()
            removed += 1
    info = Path(str(getattr(dist, "_path", "")))
    if info.name and venv in info.parents and info.is_dir():
        shutil.rmtree(info)
    return removed


BUILD_INPUTS = (".c", ".cc", ".cpp", ".cxx", ".h", ".hh", ".hpp", ".pyx", ".pxd", ".pxi", ".a")


def strip_build_inputs(venv: Path) -> tuple[int, int]:
    """Remove compiler inputs from the venv's packages; how many files, how many bytes."""
    count = size = 0
    for site in (venv / "lib").glob("python*/site-packages"):
        for path in site.rglob("*"):
            if path.suffix in BUILD_INPUTS and path.is_file() and not path.is_symlink():
                size += path.stat().st_size
                count += 1
                path.unlink()
    return count, size


def tidy(venv: Path) -> None:
    """Drop byte code whose source is gone, then folders left empty (deepest first)."""
    for cache in list(venv.rglob("__pycache__")):
        for pyc in cache.glob("*.pyc"):
            if not (cache.parent / (pyc.name.split(".", 1)[0] + ".py")).exists():
                pyc.unlink()
    folders = (p for p in venv.rglob("*") if p.is_dir() and not p.is_symlink())
    for folder in sorted(folders, key=lambda p: -len(p.parts)):
        if not any(folder.iterdir()):
            folder.rmdir()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--system-site-packages", choices=["true", "false"], required=True)
    parser.add_argument("--strip-build-inputs", action="store_true")
    parser.add_argument("names", nargs="*")
    args = parser.parse_args()
    venv = Path(os.path.abspath(sys.prefix))
    before = size_of(venv)
    for name in args.names:
        count = remove(name, venv)
        print(f"removed {name} ({count} files)")
    if args.strip_build_inputs:
        count, size = strip_build_inputs(venv)
        print(f"removed {count} compiler inputs (sources, headers): {size / 1e6:.1f} MB")
    tidy(venv)
    cfg = venv / "pyvenv.cfg"
    lines = [
        f"include-system-site-packages = {args.system_site_packages}"
        if line.split("=", 1)[0].strip() == "include-system-site-packages"
        else line
        for line in cfg.read_text().splitlines()
    ]
    cfg.write_text("\n".join(lines) + "\n")
    after = size_of(venv)
    print(f"venv: {before / 1e6:.1f} MB -> {after / 1e6:.1f} MB ({len(args.names)} distributions)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
