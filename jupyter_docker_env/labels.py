"""The Docker labels on everything the extension creates, so it can be listed, owned and swept.

One place for their names: images, kernel containers, network sandboxes, and what later services
(runs, serving images) make all carry ``org.jupyter.docker-env.managed=true`` plus their own.
"""

from __future__ import annotations

import shlex

PREFIX = "org.jupyter.docker-env"


def label(name: str) -> str:
    return f"{PREFIX}.{name}"


MANAGED = label("managed")
# images
ENV = label("env")  # the environment an image was first built for
SPEC_HASH = label("spec-hash")
LOCK = label("lock")
GPU = label("gpu")
OWNER = label("owner")
RENDERER = label("renderer")
# containers
KERNEL_ID = label("kernel-id")
INSTANCE = label("instance")
USER = label("user")
ROLE = label("role")
NETWORK = label("network")
# what the launch broker runs for hub users
HUB_USER = label("hub-user")  # the hub user a container, network or build belongs to
SERVER = label("server")  # the single-user server container that asked for a kernel


def label_instruction(labels: dict[str, str]) -> str:
    """One Dockerfile LABEL instruction for all ``labels``.

    Values are single-quoted (no variable expansion); specs cannot hold control characters, so
    nothing can end the instruction early.
    """
    return (
        "LABEL " + " ".join(f"{shlex.quote(k)}={shlex.quote(v)}" for k, v in labels.items()) + "\n"
    )
