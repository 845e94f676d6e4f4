"""Write docs/configuration.md from the configurable traits (run: python scripts/config_docs.py).

tests/test_config_docs.py fails when the file is out of date.
"""

from __future__ import annotations

import sys
from pathlib import Path

from traitlets import HasTraits

from jupyter_docker_env.containers.swarm import SwarmBackend
from jupyter_docker_env.kernels.provisioner import DockerEnvProvisioner
from jupyter_docker_env.runs.manager import RunManager
from jupyter_docker_env.server.app import DockerEnvApp

DOC = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
INTRO = """# Configuration reference

Generated from the code by `python scripts/config_docs.py`; do not edit by hand.

Put these in `jupyter_server_config.py` (or pass them as `--DockerEnvApp.name=value` to
`jupyter lab`). The `jupyter docker-env` command line reads the same files. Kernel spec
`metadata.kernel_provisioner.config` entries set `DockerEnvProvisioner` traits per environment.
`SwarmBackend` settings apply when `c.DockerEnvProvisioner.backend = "swarm"` (docs/swarm.md).
Training runs follow the kernels' container rules (`user`, `allow_root`, `home`, `env_allowlist`,
`extra_env`, `extra_labels`, `pids_limit`, `network`, `backend`, and `cpus`, `mem_limit`, `gpus`
as defaults) from `c.DockerEnvProvisioner`; `c.RunManager` holds what only runs have.
"""


def section(cls: type[HasTraits], own: type[HasTraits] | None = None) -> str:
    lines = [f"\n## `c.{cls.__name__}`\n"]
    names = sorted(
        name
        for name, trait in cls.class_traits(config=True).items()
        if own is None or name not in own.class_traits()
    )
    for name in names:
        trait = cls.class_traits()[name]
        default = trait.default_value_repr()
        lines.append(f"\n### `{name}` ({type(trait).__name__}, default `{default}`)\n")
        lines.append(f"\n{trait.help.strip()}\n")
    return "".join(lines)


def render() -> str:
    from jupyter_client.provisioning.provisioner_base import KernelProvisionerBase
    from jupyter_server.extension.application import ExtensionApp
    from traitlets.config import LoggingConfigurable

    return (
        INTRO
        + section(DockerEnvApp, ExtensionApp)
        + section(DockerEnvProvisioner, KernelProvisionerBase)
        + section(SwarmBackend, LoggingConfigurable)
        + section(RunManager)
    )


if __name__ == "__main__":
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(render())
    print(f"wrote {DOC}", file=sys.stderr)
