#!/usr/bin/env bash
# make deploy-check: the Docker Compose deployment, built and run for real on a
# machine without Docker Engine, GPU or image registry (README.md, Deploy).
#
#   1. podman: Debian's podman, runc, netavark, aardvark-dns, iptables, debootstrap and
#      docker-compose (installed when missing); a private containers.conf; the
#      podman API socket, which Debian's docker-compose 1.29 talks to.
#   2. images: a Debian bookworm base made by debootstrap (cached), the
#      Dockerfile's `serve` target built from it as elunet:serve-cpu (the
#      compose service server-cpu's image: ONNX Runtime CPU), and stand-ins for
#      python, nginx and Prometheus (deploy/check/Containerfile).
#   3. a tiny model: trained with this checkout's elunet (or the cached run
#      reused), exported with parity verification into the volume `models`.
#   4. docker-compose.yml with deploy/check/docker-compose.check.yml on top:
#      profiles cpu and scale, Prometheus, a replica stopped under load,
#      `down` under load (scripts/deploy_check.py does this part).
#
# It removes every container, network and volume it made; images and the base
# stay cached (ELUNET_DEPLOY_CACHE, default /var/tmp/elunet-deploy-check).
# Network: the package registries while building; afterwards loopback and the
# compose project's own network only.
#
# Exit status: 0 passed, 77 skipped (podman cannot run here: the reason is
# printed), anything else failed.
#
# Knobs: ELUNET (the elunet CLI; default: on PATH, else .venv/bin/elunet),
# REPLICAS (default 3), ELUNET_DEPLOY_CACHE, ELUNET_DEPLOY_KEEP_IMAGES=0 to
# remove the images it built as well.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${ELUNET_DEPLOY_CACHE:-/var/tmp/elunet-deploy-check}
REPLICAS=${REPLICAS:-3}
SKIP=77
START=$(date +%s.%N)

elapsed() { awk -v s="$START" -v n="$(date +%s.%N)" 'BEGIN { printf "%.1f", n - s }'; }
log() { printf '[deploy-check %6ss] %s\n' "$(elapsed)" "$*"; }
skip() { printf 'deploy-check: SKIP: %s\n' "$*" >&2; exit "$SKIP"; }
die() { printf 'deploy-check: FAILED: %s\n' "$*" >&2; exit 1; }

# ------------------------------------------------------------------ root
if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        exec sudo -n --preserve-env=ELUNET,REPLICAS,ELUNET_DEPLOY_CACHE,ELUNET_DEPLOY_KEEP_IMAGES env PATH="$PATH" bash "$0" "$@"
    fi
    skip "needs root (rootful podman, apt-get) and there is no passwordless sudo"
fi
[ "$(uname -s)" = Linux ] || skip "podman containers need Linux (this is $(uname -s))"

# The elunet that trains and exports: this checkout's (the image installs this checkout's wheel).
ELUNET=${ELUNET:-$(command -v elunet || true)}
[ -n "$ELUNET" ] || ELUNET=$ROOT/.venv/bin/elunet
[ -x "$ELUNET" ] || die "no elunet CLI (run \`make setup\`, or set ELUNET=/path/to/elunet)"

# ------------------------------------------------------- 1. podman
PACKAGES=(podman runc netavark aardvark-dns iptables debootstrap docker-compose)
missing=()
for p in "${PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
    command -v apt-get >/dev/null 2>&1 || skip "podman is not installed and there is no apt-get to install it (${missing[*]})"
    log "installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

mkdir -p "$CACHE"
# Private to this check (CONTAINERS_CONF replaces /etc/containers/containers.conf
# for the podman processes started here):
# - ulimits: podman's defaults exceed this machine's hard limits ("error setting rlimit type 7");
# - runc: crun 1.8 refuses hybrid cgroup hierarchies ("cgroups in hybrid mode not supported");
# - netavark + aardvark-dns: compose service names resolve on the project network (netavark runs
#   iptables for the bridge, which Debian does not make it depend on: "netavark: No such file or directory");
# - events in a file: no journald without systemd.
nofile=$(ulimit -Hn)
nproc=$(ulimit -Hu)
{ [ "$nproc" = unlimited ] || [ "$nproc" -gt 4096 ]; } && nproc=4096
cat > "$CACHE/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"

[network]
network_backend = "netavark"
EOF
export CONTAINERS_CONF=$CACHE/containers.conf
podman info >/dev/null 2>"$CACHE/podman-info.err" || skip "podman does not work here: $(tail -3 "$CACHE/podman-info.err")"

RUN=$(mktemp -d /tmp/elunet-deploy-check.XXXXXX)
PROJECT=elunetcheck$$
SERVICE_PID=
BUILT_IMAGES=()
cleanup() {
    local status=$?
    set +e
    # A safety net behind deploy_check.py's `down -v`: whatever of this project is left.
    local ids
    ids=$(podman ps -aq --filter "label=com.docker.compose.project=$PROJECT" 2>/dev/null)
    [ -n "$ids" ] && podman rm -f -t 5 $ids >/dev/null 2>&1
    ids=$(podman network ls -q --filter "label=com.docker.compose.project=$PROJECT" 2>/dev/null)
    [ -n "$ids" ] && podman network rm -f $ids >/dev/null 2>&1
    ids=$(podman volume ls -q --filter "label=com.docker.compose.project=$PROJECT" 2>/dev/null)
    [ -n "$ids" ] && podman volume rm -f $ids >/dev/null 2>&1
    [ -n "$SERVICE_PID" ] && kill "$SERVICE_PID" 2>/dev/null && wait "$SERVICE_PID" 2>/dev/null
    if [ "${ELUNET_DEPLOY_KEEP_IMAGES:-1}" = 0 ] && [ ${#BUILT_IMAGES[@]} -gt 0 ]; then
        podman rmi -f "${BUILT_IMAGES[@]}" >/dev/null 2>&1
    fi
    rm -rf "$RUN"
    exit $status
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------- 2. images
# One check at a time on a machine: they share the base and the image tags that
# docker-compose.yml names (another checkout's build must not retag them mid-run).
exec 9>"$CACHE/lock"
if ! flock -n 9; then
    log "another deploy check is running here: waiting for it"
    flock -w 1200 9 || die "another deploy check held the lock for 20 min"
fi
BASE=localhost/debian:bookworm
if ! podman image exists "$BASE"; then
    if [ ! -s "$CACHE/debian-bookworm.tar" ]; then
        log "building the Debian bookworm base with debootstrap (minbase)"
        mirror=$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
        debootstrap --variant=minbase bookworm "$RUN/rootfs" "${mirror:-http://deb.debian.org/debian}" > "$RUN/debootstrap.log" 2>&1 \
            || { tail -20 "$RUN/debootstrap.log"; die "debootstrap failed"; }
        rm -rf "$RUN"/rootfs/var/cache/apt/*.bin "$RUN"/rootfs/var/cache/apt/archives/*.deb "$RUN"/rootfs/var/lib/apt/lists/*
        tar -C "$RUN/rootfs" -c . > "$CACHE/debian-bookworm.tar.part"
        mv "$CACHE/debian-bookworm.tar.part" "$CACHE/debian-bookworm.tar"
        rm -rf "$RUN/rootfs"
    fi
    log "importing the base as $BASE"
    podman import -q - "$BASE" < "$CACHE/debian-bookworm.tar" >/dev/null
fi
# A trivial container first: if podman cannot start one here, nothing below can run.
podman run --rm --network none "$BASE" true 2>"$RUN/run.err" \
    || skip "podman cannot start a container here: $(tail -3 "$RUN/run.err")"

# pip inside a build trusts what this machine trusts (its CA bundle, mounted for
# the build only); apt and pip reach their registries over the host network.
printf '[global]\ncert = /run/host-ca.crt\n' > "$RUN/pip.conf"
BUILD=(podman build --format docker --network host
       -v /etc/ssl/certs/ca-certificates.crt:/run/host-ca.crt:ro -v "$RUN/pip.conf:/etc/pip.conf:ro")
build() {  # build TAG LOGNAME ARGS...
    local tag=$1 name=$2 t0
    shift 2
    t0=$(date +%s)
    if ! "${BUILD[@]}" -t "$tag" "$@" "$ROOT" > "$RUN/build-$name.log" 2>&1; then
        tail -40 "$RUN/build-$name.log"
        die "building $tag failed"
    fi
    BUILT_IMAGES+=("$tag")
    log "built $tag in $(( $(date +%s) - t0 )) s"
}
log "building images from $BASE (docker format: HEALTHCHECK and STOPSIGNAL are kept)"
for standin in python nginx prometheus; do
    build "localhost/elunet-check/$standin:bookworm" "$standin" -f "$ROOT/deploy/check/Containerfile" --target "$standin" --build-arg "BASE=$BASE"
done
# The Dockerfile's serve target, as docker-compose.yml's server-cpu builds it, from the local bases.
SOURCE=$({ git -C "$ROOT" rev-parse HEAD; git -C "$ROOT" diff HEAD; } 2>/dev/null | sha256sum | cut -c1-16)
build elunet:serve-cpu serve-cpu -f "$ROOT/Dockerfile" --target serve \
    --build-arg WHEEL_BASE=localhost/elunet-check/python:bookworm --build-arg "SERVE_BASE=$BASE" --build-arg ORT_PACKAGE=onnxruntime \
    --build-arg "ELUNET_SOURCE=$SOURCE"

# ------------------------------------------------------- 3. a tiny model
# The run is cached (training is the slow part); the export, with its parity
# check and certificate, is made by this checkout's elunet every time.
train() {
    log "training a tiny model (1 epoch, 2000 images) with $ELUNET"
    rm -rf "$CACHE/model-run"
    "$ELUNET" train --epochs 1 --limit-train 2000 --device cpu --out "$CACHE/model-run" > "$RUN/train.log" 2>&1 \
        || { tail -20 "$RUN/train.log"; die "training failed"; }
}
export_model() {
    rm -rf "$RUN/repository"
    "$ELUNET" export "$CACHE/model-run" --repository "$RUN/repository" > "$RUN/export.log" 2>&1
}
[ -d "$CACHE/model-run" ] || train
if ! export_model; then
    log "the cached run did not export (made by another version?): training again"
    train
    export_model || { tail -20 "$RUN/export.log"; die "export failed"; }
fi
log "exported: $(grep -E '^parity|^published' "$RUN/export.log" | tr '\n' ' ')"

# ------------------------------------------------------- 4. compose
podman system service --time=0 "unix://$RUN/podman.sock" > "$RUN/podman-service.log" 2>&1 9>&- &
SERVICE_PID=$!
for _ in $(seq 100); do [ -S "$RUN/podman.sock" ] && break; sleep 0.1; done
[ -S "$RUN/podman.sock" ] || die "podman's API socket did not come up: $(tail -3 "$RUN/podman-service.log")"

python3 "$ROOT/scripts/deploy_check.py" \
    --root "$ROOT" --project "$PROJECT" --socket "$RUN/podman.sock" --repository "$RUN/repository" \
    --image elunet:serve-cpu --replicas "$REPLICAS" --work "$RUN" --started "$START"
