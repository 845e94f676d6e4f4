#!/usr/bin/env bash
# A two-node Docker Swarm on one machine, for tests, benchmarks and trying the Swarm back end:
# the manager is the Docker engine that already runs here; the worker is a second dockerd in its
# own network namespace, joined over a veth pair. Needs root, iproute2, util-linux and Debian's
# docker-registry (`make docker` installs it).
#
#   scripts/swarm-cluster.sh up     # prints WORKER_NODE_ID WORKER_HOSTNAME WORKER_DOCKER_HOST
#   scripts/swarm-cluster.sh down   # the worker gone, the engine out of swarm mode again
#   scripts/swarm-cluster.sh kill-worker   # the worker's dockerd dies (SIGKILL): a lost node
#
# JDE_SWARM_WORKER_GPUS=GPU-a,GPU-b makes the worker advertise those ids as NVIDIA-GPU generic
# resources and carry the node label gpu=true, as a GPU node would (no GPU is needed to schedule).
#
# Facts it relies on (docs/swarm.md): addresses come from the benchmarking range 198.18.0.0/15,
# the overlays too (--default-addr-pool); `nsenter --net` (not `ip netns exec`, which remounts
# /sys and hides the cgroups); this kernel has no IPVS, so services use dnsrr endpoints and no
# ingress ports; the manager names images as 127.0.0.1:5000/...@sha256, which the worker resolves
# on its own loopback: a read-only docker-registry there serves the same storage.
#
# Only a swarm this script made is ever left (the manager's node carries a label naming it);
# a swarm someone else made is refused, not touched. `up` treats what it finds of an earlier
# worker as a crashed run's leftovers: tests/test_swarm.py and benchmarks/swarm_kernel_start.py
# hold an flock on /tmp/jde-swarm-test.lock from `up` to `down`, so they never meet.
set -euo pipefail

NAME=${JDE_SWARM_NAME:-jde-swarm-worker}
STATE_DIR=${DOCKER_ENV_STATE_DIR:-/var/lib/jupyter-docker-env}
REGISTRY_STORAGE=${JDE_SWARM_REGISTRY_STORAGE:-$STATE_DIR/registry}
REGISTRY_PORT=${DOCKER_ENV_REGISTRY_PORT:-5000}
DIR=$STATE_DIR/swarm/$NAME            # worker's data root, config, logs
RUN=/run/$NAME                        # worker's exec root and socket (short: unix socket paths)
NETNS=$NAME
HOST_IF=jdesw0                         # the veth's end on the host (interface names: <= 15 chars)
MANAGER_ADDR=198.18.255.1
WORKER_ADDR=198.18.255.2
ADDR_POOL=198.19.0.0/16
MARK=org.jupyter.docker-env.test-swarm
DOCKER=docker
[ -x /usr/bin/docker ] && DOCKER=/usr/bin/docker
WORKER_HOST=unix://$RUN/docker.sock

say() { echo "swarm-cluster: $*" >&2; }
die() { echo "swarm-cluster: ERROR: $*" >&2; exit 1; }
wdocker() { $DOCKER -H "$WORKER_HOST" "$@"; }
in_ns() { nsenter --net=/run/netns/"$NETNS" "$@"; }

swarm_state() { $DOCKER info --format '{{.Swarm.LocalNodeState}}' 2>/dev/null || echo unknown; }
self_id() { $DOCKER info --format '{{.Swarm.NodeID}}'; }
ours() {  # is the engine's swarm one this script made (under this name)?
    [ "$($DOCKER node inspect "$(self_id)" --format "{{index .Spec.Labels \"$MARK\"}}" 2>/dev/null)" = "$NAME" ]
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local seconds=$1 what=$2
    shift 2
    local deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $deadline ] || return 1
        sleep 0.2
    done
}

# -- down -------------------------------------------------------------------------------------
pids_of_worker() {  # the worker's daemons and shims, found by their own arguments
    local pid cmd
    for pid in $(ls /proc | grep -E '^[0-9]+$'); do
        cmd=$( (tr '\0' ' ' <"/proc/$pid/cmdline") 2>/dev/null) || continue
        case "$cmd" in
            *"--exec-root $RUN "* | *"$RUN/containerd"* | *"-namespace $NAME "* | *"$DIR/registry.yml"*) echo "$pid" ;;
        esac
    done
}

worker_cgroup_pids() {  # processes of the worker's containers (its --cgroup-parent)
    cat /sys/fs/cgroup/pids/"$NAME"/*/cgroup.procs /sys/fs/cgroup/"$NAME"/*/cgroup.procs 2>/dev/null || true
}

stop_worker() {
    if [ -S "$RUN/docker.sock" ] && wdocker info >/dev/null 2>&1; then
        wdocker swarm leave --force >/dev/null 2>&1 || true
    fi
    if [ -f "$RUN/docker.pid" ] && kill -0 "$(cat "$RUN/docker.pid")" 2>/dev/null; then
        kill -TERM "$(cat "$RUN/docker.pid")" 2>/dev/null || true
        wait_for 20 "dockerd to stop" sh -c "! kill -0 $(cat "$RUN/docker.pid") 2>/dev/null" || true
    fi
    # What a killed worker leaves: its registry, containerd, shims and containers' processes.
    local pids
    pids="$(pids_of_worker) $(worker_cgroup_pids)"
    # shellcheck disable=SC2086
    [ -n "${pids// /}" ] && kill -KILL $pids 2>/dev/null || true
    sleep 0.2
    # Mounts under its roots (overlay layers, netns files, shm) would keep the folders busy.
    awk -v d="$DIR/" -v r="$RUN/" 'index($2, d) == 1 || index($2, r) == 1 { print $2 }' /proc/mounts \
        | sort -r | while read -r mnt; do umount -l "$mnt" 2>/dev/null || true; done
    for cg in /sys/fs/cgroup/*/"$NAME"; do
        [ -d "$cg" ] && find "$cg" -depth -type d -exec rmdir {} \; 2>/dev/null || true
    done
    rm -rf "$DIR" "$RUN"
    rmdir "$STATE_DIR/swarm" 2>/dev/null || true
}

leave_manager() {
    case "$(swarm_state)" in
        active | pending | error | locked)
            if ours; then
                $DOCKER swarm leave --force >/dev/null
            elif [ "$(swarm_state)" = active ]; then
                say "the engine is in a swarm this script did not make: leaving it alone"
                return 0
            fi
            ;;
    esac
    # Swarm's bridge for overlay containers' egress, once nothing uses it.
    if $DOCKER network inspect docker_gwbridge >/dev/null 2>&1 \
        && [ "$($DOCKER network inspect docker_gwbridge --format '{{len .Containers}}')" = 0 ]; then
        $DOCKER network rm docker_gwbridge >/dev/null 2>&1 || true
    fi
}

down() {
    stop_worker
    leave_manager
    ip link del "$HOST_IF" 2>/dev/null || true
    ip netns del "$NETNS" 2>/dev/null || true
}

# -- up ---------------------------------------------------------------------------------------
up() {
    [ "$(id -u)" = 0 ] || die "a second dockerd and a network namespace need root"
    for tool in ip nsenter unshare dockerd docker-registry; do
        command -v "$tool" >/dev/null || die "'$tool' is missing (Debian: iproute2, util-linux, docker.io, docker-registry)"
    done
    [ -d "$REGISTRY_STORAGE" ] || die "no registry storage at $REGISTRY_STORAGE: run 'make docker' first"
    case "$(swarm_state)" in
        inactive) ;;
        *) ours || die "this Docker engine is already part of a swarm (state: $(swarm_state)) that this script did not make; the two-node test swarm needs an engine outside any swarm" ;;
    esac
    down  # a crashed run's leftovers
    MADE_SWARM=0
    trap 'say "failed: cleaning up"; [ $MADE_SWARM = 1 ] && $DOCKER swarm leave --force >/dev/null 2>&1; down' ERR

    # The network: a namespace for the worker, a veth pair from the benchmarking range.
    ip netns add "$NETNS"
    ip link add "$HOST_IF" type veth peer name eth0 netns "$NETNS"
    ip addr add "$MANAGER_ADDR/30" dev "$HOST_IF"
    ip link set "$HOST_IF" up
    in_ns ip addr add "$WORKER_ADDR/30" dev eth0
    in_ns ip link set eth0 up
    in_ns ip link set lo up

    # The worker's registry: the same storage, read-only, on its own loopback.
    mkdir -p "$DIR" "$RUN"
    cat >"$DIR/registry.yml" <<YML
version: 0.1
log: {level: warn}
storage:
  filesystem: {rootdirectory: $REGISTRY_STORAGE}
  maintenance: {readonly: {enabled: true}}
http:
  addr: 127.0.0.1:$REGISTRY_PORT
YML
    in_ns setsid docker-registry serve "$DIR/registry.yml" >"$DIR/registry.log" 2>&1 </dev/null &

    # The worker's engine: its own roots, socket, containerd namespaces and cgroup parent.
    local gpus=""
    if [ -n "${JDE_SWARM_WORKER_GPUS:-}" ]; then
        gpus=$(echo "$JDE_SWARM_WORKER_GPUS" | tr ',' '\n' | sed 's/.*/"NVIDIA-GPU=&"/' | paste -sd,)
    fi
    echo "{\"node-generic-resources\": [$gpus]}" >"$DIR/daemon.json"
    in_ns unshare --uts -- sh -c "hostname $NAME && exec setsid dockerd \
        --config-file $DIR/daemon.json --data-root $DIR/data --exec-root $RUN \
        -H $WORKER_HOST --pidfile $RUN/docker.pid \
        --containerd-namespace $NAME --containerd-plugins-namespace $NAME-plugins \
        --cgroup-parent $NAME --bridge none" >"$DIR/dockerd.log" 2>&1 </dev/null &
    wait_for 30 "the worker's dockerd" wdocker info \
        || die "the worker's dockerd did not start; see $DIR/dockerd.log"
    wait_for 15 "the worker's registry" in_ns bash -c "exec 3<>/dev/tcp/127.0.0.1/$REGISTRY_PORT" \
        || die "the worker's registry did not start; see $DIR/registry.log"

    # The manager: this engine. A 1 s heartbeat marks a lost node down in ~3 s (default ~15 s).
    if [ "$(swarm_state)" = inactive ]; then
        $DOCKER swarm init --advertise-addr "$MANAGER_ADDR" --listen-addr "$MANAGER_ADDR:2377" \
            --default-addr-pool "$ADDR_POOL" --default-addr-pool-mask-length 24 \
            --dispatcher-heartbeat 1s >/dev/null
        MADE_SWARM=1
        $DOCKER node update --label-add "$MARK=$NAME" "$(self_id)" >/dev/null
    fi
    local token
    token=$($DOCKER swarm join-token -q worker)
    wdocker swarm join --token "$token" --advertise-addr "$WORKER_ADDR" "$MANAGER_ADDR:2377" >/dev/null
    local worker_id
    worker_id=$(wdocker info --format '{{.Swarm.NodeID}}')
    wait_for 30 "the worker to be ready" sh -c \
        "[ \"\$($DOCKER node inspect $worker_id --format '{{.Status.State}}')\" = ready ]" \
        || die "the worker did not become ready in the swarm"
    if [ -n "${JDE_SWARM_WORKER_GPUS:-}" ]; then
        $DOCKER node update --label-add gpu=true "$worker_id" >/dev/null
    fi
    trap - ERR
    echo "$worker_id $NAME $WORKER_HOST"
}

kill_worker() {
    [ -f "$RUN/docker.pid" ] || die "no worker runs"
    kill -KILL "$(cat "$RUN/docker.pid")"
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    kill-worker) kill_worker ;;
    *) echo "usage: $0 up|down|kill-worker" >&2; exit 2 ;;
esac
