"""Seeded fuzzing of environment specs: one generator, through the REST API and the CLI's parser.

The generator writes specs as a clumsy user or an attacker would: wrong types, huge numbers,
control characters, paths out of the workspace, options where packages go, Dockerfile lines in
values. Whatever comes in: no 5xx, every 4xx names a field, nothing is created outside the
workspace, and no generated Dockerfile has an instruction the spec did not ask for.
``JDE_FUZZ_SEED`` replays another seed.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import random
import shutil
import string
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from jupyter_docker_env.cli import main as cli_main
from jupyter_docker_env.environments import dockerfile
from jupyter_docker_env.environments.spec import SPEC_FILE, SPEC_KEYS, load
from jupyter_docker_env.models import EnvSpec, FieldError

from .test_api import API, jp_server_config

__all__ = ["jp_server_config"]  # the test server's configuration, shared with test_api

SEED = int(os.environ.get("JDE_FUZZ_SEED", "20261129"))
COUNT = 1000
BASE = "python:3.12-slim"
ESCAPE = "jde-fuzz-escape"  # every path the generator aims outside the workspace ends so
STRINGS = [
    *("", " ", "\t", "\n", "abc\n", "a..b", ".", "..", "/", "\\", "'", '"', "%s", "{}"),
    *("-c", "--override-channels", "-e .", "--index-url=http://evil", "-oAPT::x=1"),
    *("x'\nRUN touch /tmp/pwned #", "x\\\nRUN touch /tmp/pwned", "RUN id", "\nFROM evil"),
    *("\ud800", "\u2028", "\x00", "\x1b[31m", "é" * 200, "a" * 300, "$(id)", "`id`", "a b"),
    *("ok", "six", "six==1.16.0", "git", "curl=7.88", "numpy=1.26", "conda-forge::numpy"),
    *("python:3.12-slim", "127.0.0.1:5000/team/py:t", "Abc/def", "x@sha256:1234"),
    *(f"../../{ESCAPE}", f"/tmp/{ESCAPE}", f"../{ESCAPE}/Dockerfile", f"/{ESCAPE}"),
    *("requirements.txt", "environment.yml", "Dockerfile", SPEC_FILE, "docker-env.lock"),
]
ALPHABET = string.ascii_lowercase + string.digits + "._-/:=<>~*!,+@ \n\t'\"\\$;&|" + "éß€"
SOURCES = ["src/requirements.txt", "src/Dockerfile", "src/environment.yml", "src/Dockerfile.txt"]


class Specs:
    """The generator: specs, names and paths from one seeded random source."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.fresh = 0

    def text(self) -> str:
        r = self.rng.random()
        if r < 0.5:
            return self.rng.choice(STRINGS)
        if r < 0.85:
            return "".join(self.rng.choices(ALPHABET, k=self.rng.randint(1, 24)))
        return self.rng.choice(STRINGS) + self.rng.choice(STRINGS)

    def scalar(self) -> Any:
        return self.rng.choice(
            [self.text(), 0, -1, 2**63, 10**30, 1e308, -0.0, 0.5, True, False, None]
        )

    def anything(self, depth: int = 0) -> Any:
        r = self.rng.random()
        if depth > 3 or r < 0.6:
            return self.scalar()
        if r < 0.8:
            return [self.anything(depth + 1) for _ in range(self.rng.randint(0, 3))]
        return {self.text(): self.anything(depth + 1) for _ in range(self.rng.randint(0, 3))}

    def name(self) -> Any:
        if self.rng.random() < 0.45:
            self.fresh += 1
            return f"fz{self.fresh}{self.rng.choice(['', '-a', '.b', '_c', '__d'])}"
        return self.text() if self.rng.random() < 0.9 else self.scalar()

    def entries(self, plausible: list[str]) -> list[Any]:
        items: list[Any] = []
        for _ in range(self.rng.randint(0, 4)):
            r = self.rng.random()
            items.append(
                self.rng.choice(plausible)
                if r < 0.5
                else self.text()
                if r < 0.95
                else self.scalar()
            )
        return items

    def field(self, key: str) -> Any:
        if self.rng.random() < 0.2:
            return self.anything()
        if key == "name":
            return self.name()
        if key == "base":
            return self.rng.choice([BASE, "127.0.0.1:5000/team/py:t", self.text()])
        if key == "pip":
            return self.entries(["six", "six==1.16.0", "attrs>=22", "six; python_version>'3'"])
        if key == "apt":
            return self.entries(["git", "curl", "curl=7.88.1-10", "libc6:amd64"])
        if key == "conda":
            return self.entries(["numpy", "numpy=1.26", "conda-forge::numpy", "scipy>=1.11"])
        if key == "gpu":
            return self.rng.choice([True, False, self.scalar()])
        if key == "env":
            return {
                self.rng.choice(["TZ", "A_B", self.text()]): self.rng.choice(
                    ["UTC", "x y", "$HOME", "a'b", self.text(), self.scalar()]
                )
                for _ in range(self.rng.randint(0, 3))
            }
        return self.rng.choice(["requirements.txt", "environment.yml", self.text()])

    def spec(self, with_name: bool = True) -> dict[str, Any]:
        keys = self.rng.sample([k for k in SPEC_KEYS if k != "name"], self.rng.randint(0, 4))
        if with_name and self.rng.random() < 0.95:
            keys.append("name")
        body = {key: self.field(key) for key in keys}
        if self.rng.random() < 0.1:
            body[self.rng.choice(["colour", "kind", "__proto__", self.text()])] = self.scalar()
        return body

    def environment_yml(self) -> str:
        deps: list[Any] = self.entries(["python=3.11", "pip"])
        if self.rng.random() < 0.5:
            deps.append({"pip": self.entries(["six", "attrs==23.1.0"])})
        if self.rng.random() < 0.3:
            deps.append(self.rng.choice(["numpy", self.text()]))
        return json.dumps({"dependencies": deps}) if self.rng.random() < 0.9 else self.text()


# -- what a generated Dockerfile may hold -----------------------------------------------------
def instructions(text: str) -> list[str]:
    """The instructions of a Dockerfile as Docker's parser splits them (a line ending in a
    backslash continues; comments and blank lines are skipped)."""
    found, continued = [], False
    for line in text.split("\n"):
        stripped = line.strip()
        if not continued and stripped and not stripped.startswith("#"):
            found.append(stripped.split()[0].upper())
        if stripped and not stripped.startswith("#"):
            continued = stripped.endswith("\\")
    return found


def check_dockerfile(spec: EnvSpec, folder: Path) -> None:
    """The Dockerfile of ``spec`` has exactly the instructions of the same spec with harmless
    values, in both flavours, and no value of it is an option."""
    canonical = dataclasses.replace(
        spec,
        base="base:tag" if spec.base else None,
        pip=tuple(f"p{i}" for i in range(len(spec.pip))),
        apt=tuple(f"a{i}" for i in range(len(spec.apt))),
        conda=tuple(f"c{i}" for i in range(len(spec.conda))),
        env=dict.fromkeys(spec.env, "v"),
    )
    for cache_id in (None, "docker-env"):  # the portable flavour and BuildKit's
        rendered = dockerfile.render(spec, folder, cache_id=cache_id, labels={"l": "v"})
        expected = dockerfile.render(canonical, folder, cache_id=cache_id, labels={"l": "v"})
        assert instructions(rendered) == instructions(expected), (spec, rendered)
    for value in (*spec.pip, *spec.apt, *spec.conda):
        assert not value.startswith("-"), spec


def check_refusal(status: int, data: Any, body: Any) -> None:
    assert status < 500, (status, data, body)
    assert status in (400, 409), (status, data, body)
    assert isinstance(data.get("field"), str), (data, body)
    assert data["field"], (data, body)


def outside(top: Path, skip: set[Path]) -> dict[str, tuple[int, int]]:
    """Every path under ``top`` but those under ``skip``, with its type and size."""
    found = {}
    for dirpath, dirs, names in os.walk(top):
        dirs[:] = [d for d in dirs if Path(dirpath, d) not in skip]
        for name in dirs + names:
            st = Path(dirpath, name).lstat()
            found[os.path.join(dirpath, name)] = (st.st_mode, st.st_size)
    return found


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def escaped(workspace: Path) -> list[Path]:
    return [
        p / ESCAPE
        for p in (Path("/"), Path("/tmp"), *workspace.parents, workspace)
        if os.path.lexists(p / ESCAPE)
    ]


# -- through the REST API ---------------------------------------------------------------------
@pytest.mark.docker
async def test_fuzzed_specs_through_the_rest_api(
    jp_fetch: Any, jp_root_dir: Path, tmp_path: Path, jde_base_image: str
) -> None:
    # Given a workspace with files to create environments from, and one environment to update
    src = jp_root_dir / "src"
    src.mkdir()
    (src / "requirements.txt").write_text("six\n")
    (src / "Dockerfile").write_text("FROM busybox\n")
    (src / "environment.yml").write_text('dependencies: ["python", {"pip": ["six"]}]\n')
    envs = jp_root_dir / "environments"
    (envs / "fz-base").mkdir(parents=True)
    (envs / "fz-base" / SPEC_FILE).write_text('pip = ["six"]\n')
    skip = {jp_root_dir, tmp_path / "runtime"}
    before = outside(tmp_path, skip)
    gen = Specs(SEED)
    counts: dict[int, int] = {}
    for _ in range(COUNT):
        # When a generated spec is sent to create or to update an environment
        if gen.rng.random() < 0.75:
            path, method, body = "envs", "POST", gen.spec()
            if gen.rng.random() < 0.25:
                body["from_path"] = gen.rng.choice([*SOURCES, gen.text(), gen.scalar()])
        else:
            path, method, body = "envs/fz-base", "PUT", gen.spec(with_name=False)
        resp = await jp_fetch(
            API, *path.split("/"), method=method, body=json.dumps(body), raise_error=False
        )
        counts[resp.code] = counts.get(resp.code, 0) + 1
        data = json.loads(resp.body)
        # Then it is taken, or refused naming a field; never a server error
        if resp.code in (200, 201):
            folder = envs / data["name"]
            assert folder.parent == envs, data  # in the workspace's environments, nowhere else
            spec = load(folder, BASE)
            if spec.kind != "dockerfile":
                check_dockerfile(spec, folder)
            if resp.code == 201:
                shutil.rmtree(folder)
        else:
            check_refusal(resp.code, data, body)
    # and nothing was created outside the workspace, nor left in it
    assert outside(tmp_path, skip) == before
    assert escaped(jp_root_dir) == []
    assert names(envs) == ["fz-base"]
    assert names(jp_root_dir) == ["environments", "src"]
    # and the fuzz reached both sides: specs taken and specs refused
    assert counts.get(201, 0) > 50, counts
    assert counts.get(200, 0) > 10, counts
    assert counts.get(400, 0) > 300, counts
    print(f"REST fuzz, seed {SEED}: {counts}")


# -- through the CLI's spec parser ------------------------------------------------------------
def parse_or_refuse(folder: Path) -> EnvSpec | FieldError:
    try:
        return load(folder, BASE)
    except FieldError as exc:
        return exc


def test_fuzzed_specs_through_the_cli_spec_parser(tmp_path: Path) -> None:
    gen = Specs(SEED)
    folder = tmp_path / "env"
    taken = 0
    for i in range(COUNT):
        # Given an environment folder with a generated docker-env.toml (and environment.yml)
        folder.mkdir()
        spec = gen.spec()
        try:
            text = tomli_w.dumps(spec).encode("utf-8", "surrogatepass")
        except (TypeError, ValueError):
            text = gen.text().encode("utf-8", "surrogatepass")  # what a hand-edit may leave
        (folder / SPEC_FILE).write_bytes(text)
        if i % 3 == 0:
            (folder / "environment.yml").write_text(gen.environment_yml(), errors="surrogatepass")
        if i % 5 == 0:
            (folder / "requirements.txt").write_text("six\n")
        # When the CLI's parser reads it
        parsed = parse_or_refuse(folder)
        if isinstance(parsed, FieldError):
            # Then it is refused naming a field
            assert parsed.field, parsed
        else:
            # or taken, and its Dockerfile holds only the instructions it asks for
            taken += 1
            check_dockerfile(parsed, folder)
        shutil.rmtree(folder)
    assert taken > 50
    print(f"CLI fuzz, seed {SEED}: {taken} of {COUNT} taken")


@pytest.mark.docker
def test_fuzzed_folders_through_the_cli_never_crash_it(tmp_path: Path, jde_base_image: str) -> None:
    # Given folders with generated specs, a sample of the CLI fuzz
    gen = Specs(SEED + 1)
    for i in range(25):
        folder = tmp_path / f"env{i}"
        folder.mkdir()
        try:
            text = tomli_w.dumps(gen.spec()).encode("utf-8", "surrogatepass")
        except (TypeError, ValueError):
            text = gen.text().encode("utf-8", "surrogatepass")
        (folder / SPEC_FILE).write_bytes(text)
        # When `jupyter docker-env show` describes one
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            code = cli_main(["show", str(folder), "--json"])
        # Then it shows the environment, or its error naming a field, and never crashes
        assert code == 0, err.getvalue()
        shown = json.loads(out.getvalue())
        assert shown["state"] in ("not_built", "failed", "outdated", "built"), shown
        if shown["state"] == "failed":
            assert shown["error"].split(":", 1)[0], shown
        assert "Traceback" not in err.getvalue()
