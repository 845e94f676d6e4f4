"""The launch broker: the one process on a shared JupyterHub that holds the Docker socket.

Write access to the Docker socket is root on the host, so single-user servers never get it. They
ask the broker instead, over HTTP with their hub API token, for what they want — build this
environment, start a kernel or a run of this image with these resources — and the broker decides
from its own configuration who the caller is (:mod:`.identity`), what they may do
(:mod:`.policy`, pure functions), and carries it out on the engine (:mod:`.service`), writing
one audit line per decision. Its REST API is :mod:`.handlers` (``broker/openapi.yaml``); the
program is :mod:`.app` (``jupyter-docker-env-broker``, ``python -m jupyter_docker_env.broker``).

The single-user side: :class:`~..containers.broker.BrokerBackend` (kernels and runs,
``c.DockerEnvProvisioner.backend = "broker"``) and
:class:`~..environments.broker.BrokerEnvironmentManager` (builds and images,
``c.DockerEnvApp.environment_manager_class``), both through :mod:`.client`.
"""
