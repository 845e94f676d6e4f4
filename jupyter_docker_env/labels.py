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
SPEC_FILES = label("spec-files")  # the spec files it was built from, as JSON (notebooks carry them)
GPU = label("gpu")
OWNER = label("owner")
RENDERER = label("renderer")
REPOSITORY = label("repository")  # PREFIX/ENV: finds an environment's untagged earlier images
# serving images (their own names: a serving image is no environment's image)
SERVING_ENV = label("serving.env")  # the environment it serves
SERVING_SPEC_HASH = label("serving.spec-hash")  # that environment's content hash
SERVING_ENV_IMAGE = label("serving.env-image")  # that environment's image id
SERVING_LOCK = label("serving.lock")  # that environment's lock (JSON)
SERVING_REMOVED = label("serving.removed")  # kernel-only distributions left out (JSON)
SERVING_MODEL = label("serving.model")  # the model's path inside the image
SERVING_MODEL_DIGEST = label("serving.model-digest")
SERVING_MODEL_SIZE = label("serving.model-size")
SERVING_HANDLER = label("serving.handler")  # FILE.py:FUNCTION
# containers
KERNEL_ID = label("kernel-id")
INSTANCE = label("instance")
USER = label("user")
ROLE = label("role")
NETWORK = label("network")
RUN_ID = label("run-id")  # a run's container and its snapshot image
WORKSPACE = label("workspace")  # the host folder whose runs a run's container belongs to
SNAPSHOT = label("snapshot")  # a run image: content hash of the code copied into it
POOL = label("pool")  # a warm pool's container: the placement (a hash) it serves
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
