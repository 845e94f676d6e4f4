"""Notebooks' recorded environments against the environment service's: compare and recreate.

A thin layer over :class:`~..environments.manager.EnvironmentManager` that the REST handlers and
the command line share; blocking work runs on the environment service's executor, recreating
is one of its operations (kind ``restore``), followed like builds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..environments.images import spec_files
from ..environments.manager import EnvConflict, Location
from ..environments.spec import NAME_RE, SpecError
from ..models import Environment, FieldError, NotebookEnvComparison
from ..operations import Operation
from .compare import NO_RECORD, compare
from .record import METADATA_KEY, NotebookEnv, from_notebook
from .restore import Checked, check_aside, materialize, preview, recreate, sources

if TYPE_CHECKING:
    from ..environments.manager import EnvironmentManager

Listener = Callable[[Operation, str], None]


class NotebookEnvironments:
    """What a notebook recorded (``metadata.docker_env``) against this workspace."""

    def __init__(self, envs: EnvironmentManager) -> None:
        self.envs = envs

    async def compare(self, path: str, notebook: Any) -> NotebookEnvComparison:
        """The notebook's environment against the one here, and what recreating it would do.
        Looks only: nothing is written but a temporary folder, nothing runs."""
        recorded = from_notebook(notebook)
        if recorded is None:
            return NotebookEnvComparison(path=path, state="none", message=NO_RECORD)
        environments = await self._environments()
        return await self.envs.call(self._compare, path, recorded, environments)

    def _compare(
        self, path: str, recorded: NotebookEnv, environments: list[Environment]
    ) -> NotebookEnvComparison:
        name, _ = target(recorded, environments)
        plan, checked = preview(recorded, name, self.envs.images.settings)
        current = next((e for e in environments if e.name == recorded.env), None)
        files = None
        if current is not None and current.spec is not None:
            files = spec_files(self.envs.locate(current.name).folder, current.spec)
        records = dict(self.envs.notebook_records)
        spec = checked.spec if checked else None
        return compare(path, recorded, records, environments, plan, spec, files)

    async def restore(
        self,
        path: str,
        notebook: Any,
        name: str | None = None,
        listeners: list[Listener] | None = None,
    ) -> Operation:
        """Recreate the notebook's environment (the user confirmed): its folder now, checked like
        any spec, and its image in an operation."""
        recorded = from_notebook(notebook)
        if recorded is None:
            raise FieldError(
                "notebook",
                f"{path} carries no environment (metadata.{METADATA_KEY}): save it on an "
                "environment's kernel first",
            )
        await self.envs.check_engine()
        environments = await self._environments()
        loc, checked = await self.envs.call(self._prepare, recorded, environments, name)
        pull_from = sources(recorded, self.envs.settings.registry)
        images = self.envs.images
        return self.envs.restore(
            loc,
            lambda op: recreate(images, loc.folder, checked, pull_from, op),
            listeners,
        )

    def _prepare(
        self, recorded: NotebookEnv, environments: list[Environment], name: str | None
    ) -> tuple[Location, Checked]:
        target_name, existing = target(recorded, environments, name)
        settings = self.envs.images.settings
        if existing:  # an environment with the recorded spec: complete it, files untouched
            checked = check_aside(recorded, target_name, settings)
            return self.envs.locate(target_name), checked
        folder = self.envs.env_dirs[0] / target_name
        try:
            checked = materialize(recorded, self.envs.root_dir, folder, settings)
        except FileExistsError as exc:
            raise EnvConflict(f"{folder} exists already: pick another name") from exc
        return Location(target_name, folder, readonly=False), checked

    async def _environments(self) -> list[Environment]:
        # What each kernel runs now (an image may have gone meanwhile); saves profit too.
        await self.envs.refresh_records()
        return await self.envs.list_all()


def target(
    recorded: NotebookEnv, environments: list[Environment], requested: str | None = None
) -> tuple[str, bool]:
    """The environment a restore creates, and whether it exists already with the recorded spec
    (then the restore completes it). By default the recorded name, else NAME-HASH."""
    if requested is not None and not NAME_RE.match(requested):
        raise SpecError(
            "name",
            f"{requested!r} is not a valid environment name: use lowercase letters, digits, '.', "
            "'_' and '-', starting with a letter or digit (at most 63 characters)",
        )
    by_name = {e.name: e for e in environments}
    candidates = [requested] if requested else [recorded.env, _suffixed(recorded)]
    for name in candidates:
        env = by_name.get(name)
        if env is None:
            return name, False
        if env.spec_hash == recorded.spec_hash:
            return name, True
    raise EnvConflict(
        f"environments {' and '.join(candidates)} exist with other specs: pick another name"
    )


def _suffixed(recorded: NotebookEnv) -> str:
    return f"{recorded.env[:54]}-{recorded.spec_hash[:8]}"
