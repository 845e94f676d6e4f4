#!/usr/bin/env bash
# `make lab`: JupyterLab on .lab-workspace/, which holds an example environment on the base image
# that `make docker` prepared (JDE_BASE_IMAGE), so a newcomer can build it and open a notebook.
set -euo pipefail
BASE=${JDE_BASE_IMAGE:?run through make lab}
WS=${JDE_WORKSPACE:-$PWD/.lab-workspace}
PORT=${JDE_PORT:-8888}
mkdir -p "$WS/environments/example"
if [ ! -f "$WS/environments/example/docker-env.toml" ]; then
    cat >"$WS/environments/example/docker-env.toml" <<TOML
# An example environment: edit it here or in the Docker environments panel, then Build.
name = "example"
base = "$BASE"
pip = ["tabulate==0.9.0"]
env = { TZ = "UTC" }
TOML
    cat >"$WS/hello.txt" <<TXT
This file sits in the workspace; kernels in containers see it at the same path.
TXT
fi
args=(--no-browser --ServerApp.ip=127.0.0.1 --ServerApp.port="$PORT" --ServerApp.root_dir="$WS"
      --DockerEnvApp.default_base="$BASE")
if [ "$(id -u)" = 0 ]; then
    # Kernels never run as root: give the workspace to an ordinary uid, whom kernels run as.
    chown -R 1000:1000 "$WS"
    args+=(--ServerApp.allow_root=True)
fi
echo "make lab: workspace $WS, base image $BASE"
exec .venv/bin/jupyter lab "${args[@]}"
