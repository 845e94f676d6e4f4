#!/usr/bin/env bash
# Bring up what the tests and the offline lab need: a Docker engine, a private registry on
# loopback, and a Debian + Python base image served from it. Reuses whatever already exists.
# The last line printed is the base image reference.
set -euo pipefail

STATE_DIR=${DOCKER_ENV_STATE_DIR:-/var/lib/jupyter-docker-env}
LOG_DIR=${DOCKER_ENV_LOG_DIR:-/var/log/jupyter-docker-env}
REGISTRY_PORT=${DOCKER_ENV_REGISTRY_PORT:-5000}
BASE_REPO=${DOCKER_ENV_BASE_REPO:-docker-env/python}

# The Debian (or Ubuntu) mirror and suite of the base image: this machine's own apt sources name
# a mirror it can reach (deb822 .sources files or sources.list). Override both if needed.
apt_source() {  # prints "MIRROR SUITE" of the first non-security deb source
    {
        # deb822 stanzas: print "URI SUITE" per stanza of Types: deb
        for f in /etc/apt/sources.list.d/*.sources; do
            [ -f "$f" ] && awk '
                function flush() { if (deb && uri != "" && suite != "") print uri, suite; deb=0; uri=""; suite="" }
                /^[[:space:]]*$/ { flush(); next }
                /^Types:/ { deb = ($0 ~ /(^|[[:space:]])deb([[:space:]]|$)/) }
                /^URIs:/ { uri = $2 }
                /^Suites:/ { suite = $2 }
                END { flush() }' "$f"
        done
        # one-line style: deb [options] URI SUITE COMPONENTS...
        cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
            | sed -E 's/\[[^]]*\]//' | awk '$1 == "deb" { print $2, $3 }'
    } | grep -v -e security -e updates -e backports | head -n 1
}
read -r FOUND_MIRROR FOUND_SUITE < <(apt_source || true) || true
MIRROR=${DOCKER_ENV_DEBIAN_MIRROR:-${FOUND_MIRROR:-}}
SUITE=${DOCKER_ENV_DEBIAN_SUITE:-${FOUND_SUITE:-}}
BASE_TAG=${DOCKER_ENV_BASE_TAG:-python3-${SUITE:-unknown}}

mkdir -p "$LOG_DIR" 2>/dev/null || true
say() { echo "make docker: $*" >&2; }
die() { echo "make docker: ERROR: $*" >&2; exit 1; }

can_install() { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; }

apt_install() {
    can_install || die "missing '$1'. Install it yourself (Debian/Ubuntu: sudo apt-get install -y $*), then run 'make docker' again."
    if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -mmin -1440 2>/dev/null | head -1)" ]; then
        apt-get update -qq
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# --- 1. the engine -------------------------------------------------------------------------
if ! docker info >/dev/null 2>&1; then
    if ! command -v dockerd >/dev/null; then
        can_install || die "no Docker engine answers and this script can only install one as root on Debian/Ubuntu.
  Install Docker (https://docs.docker.com/engine/install/), start it, make sure 'docker info' works for your user, then run 'make docker' again."
        say "installing Debian's docker.io"
        apt_install docker.io
    fi
    [ "$(id -u)" = 0 ] || die "dockerd is installed but not running, and only root can start it. Start it (e.g. 'sudo systemctl start docker' or 'sudo dockerd &'), then run 'make docker' again."
    mkdir -p "$LOG_DIR"
    say "starting dockerd (log: $LOG_DIR/dockerd.log)"
    setsid dockerd >"$LOG_DIR/dockerd.log" 2>&1 < /dev/null &
    for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
    docker info >/dev/null 2>&1 || die "dockerd did not answer within 30 s; see $LOG_DIR/dockerd.log"
fi
DOCKER=docker
# Prefer Debian's 20.10 client when present: it matches the engine and can use BuildKit.
[ -x /usr/bin/docker ] && DOCKER=/usr/bin/docker
say "engine: $($DOCKER version --format '{{.Server.Version}} (API {{.Server.APIVersion}})')"

# --- 2. a registry on loopback ---------------------------------------------------------------
REGISTRY=127.0.0.1:$REGISTRY_PORT
registry_up() { curl -fsS -m 2 "http://$REGISTRY/v2/" >/dev/null 2>&1; }
if ! registry_up; then
    command -v docker-registry >/dev/null || { say "installing Debian's docker-registry"; apt_install docker-registry; }
    if (exec 3<>"/dev/tcp/127.0.0.1/$REGISTRY_PORT") 2>/dev/null; then
        die "port $REGISTRY_PORT is taken by something that is not a registry; rerun with DOCKER_ENV_REGISTRY_PORT=<free port>"
    fi
    mkdir -p "$STATE_DIR/registry" "$LOG_DIR"
    cat >"$STATE_DIR/registry.yml" <<YML
version: 0.1
log: {level: warn}
storage:
  filesystem: {rootdirectory: $STATE_DIR/registry}
  delete: {enabled: true}
http:
  addr: $REGISTRY
YML
    say "starting docker-registry on $REGISTRY (log: $LOG_DIR/registry.log)"
    setsid docker-registry serve "$STATE_DIR/registry.yml" >"$LOG_DIR/registry.log" 2>&1 < /dev/null &
    for _ in $(seq 1 40); do registry_up && break; sleep 0.25; done
    registry_up || die "the registry did not answer; see $LOG_DIR/registry.log"
fi

# --- 3. the base image -----------------------------------------------------------------------
BASE=$REGISTRY/$BASE_REPO:$BASE_TAG
if ! curl -fsS -m 5 -o /dev/null 2>/dev/null "http://$REGISTRY/v2/$BASE_REPO/manifests/$BASE_TAG" \
        -H 'Accept: application/vnd.docker.distribution.manifest.v2+json'; then
    if ! $DOCKER image inspect "$BASE" >/dev/null 2>&1; then
        command -v debootstrap >/dev/null || { say "installing debootstrap"; apt_install debootstrap; }
        [ "$(id -u)" = 0 ] || die "building the base image needs root (debootstrap)."
        [ -n "$MIRROR" ] && [ -n "$SUITE" ] || die "no Debian/Ubuntu mirror and suite found in this machine's apt sources (/etc/apt/sources.list, /etc/apt/sources.list.d/). Set DOCKER_ENV_DEBIAN_MIRROR (e.g. http://deb.debian.org/debian) and DOCKER_ENV_DEBIAN_SUITE (e.g. bookworm), then run 'make docker' again."
        ROOTFS=$(mktemp -d /tmp/docker-env-rootfs.XXXXXX)
        trap 'rm -rf "$ROOTFS"' EXIT
        say "building $BASE from $MIRROR ($SUITE) with debootstrap (about a minute)"
        debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
            "$SUITE" "$ROOTFS" "$MIRROR" >"$LOG_DIR/debootstrap.log" 2>&1 \
            || die "debootstrap failed; see $LOG_DIR/debootstrap.log"
        rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*
        tar -C "$ROOTFS" -c . | $DOCKER import \
            -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8' \
            -c 'CMD ["python3"]' - "$BASE" >/dev/null
    fi
    say "pushing $BASE"
    $DOCKER push "$BASE" >/dev/null
fi
echo "$BASE"
