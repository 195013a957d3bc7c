#!/usr/bin/env bash
# Builds, with podman and no image registry, local stand-ins for the images docker-compose.yaml uses, so the
# compose stack runs on a machine that reaches no container registry (tests/test_compose_up.py):
#   localhost/e2e3d-debian:bookworm              debootstrap --variant=minbase bookworm, imported
#   docker.io/apache/airflow:<v>-python3.11      the repo's Dockerfile builds FROM it unchanged, offline: pip has
#                                                no index, a wheelhouse (/wheels) holds Airflow, the providers and
#                                                the provider's requirements read from setup.cfg ([demo,backup])
#   localhost/e2e3d-minio-standin:latest         the pinned MinIO test build (tests/minio_binary.py, sha256-checked)
#   localhost/e2e3d-postgres-standin:latest      Debian PostgreSQL 15, official-image-like entrypoint
#   localhost/e2e3d-redis-standin:latest         Debian redis-server 7.0
# and podman-compose (pinned, from PyPI) in a venv.
#
# Usage: tests/compose/build_standins.sh [--rebuild] [--relock] [IMAGE...]
#   IMAGE: debian airflow minio postgres redis (default: all). Idempotent: each image carries a label with the hash
#   of its inputs (Containerfile, files, wheelhouse lock, setup.cfg's requirements, the base image) and is rebuilt
#   only when that changed, or with --rebuild. --relock re-resolves standin-constraints.txt (the wheelhouse lock).
# Prints on stdout, for the caller: PODMAN_COMPOSE=<path> and CONTAINERS_CONF=<path>; logs go to stderr.
#
# Needs root (rootful podman, debootstrap). Installs with apt-get what is missing (podman runc debootstrap netavark
# aardvark-dns iptables, and python3-venv python3-dev g++ for the wheelhouse: meshoptimizer is an sdist). Reaches
# only the Debian archive, PyPI and the npm registry. Uses tests/compose/containers.conf (runc, cgroupfs, file
# events, netavark, ulimits within this machine's hard limits) unless CONTAINERS_CONF is set. Caches downloads,
# venvs and the wheelhouse under ${XDG_CACHE_HOME:-~/.cache}/e2e3d/compose.
set -Eeuo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/e2e3d/compose
export CONTAINERS_CONF=${CONTAINERS_CONF:-$HERE/containers.conf}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
PODMAN_COMPOSE_VERSION=1.6.0
APT_PACKAGES=(podman runc debootstrap netavark aardvark-dns iptables python3-venv python3-dev g++)

BASE_IMAGE=localhost/e2e3d-debian:bookworm
MINIO_IMAGE=localhost/e2e3d-minio-standin:latest
POSTGRES_IMAGE=localhost/e2e3d-postgres-standin:latest
REDIS_IMAGE=localhost/e2e3d-redis-standin:latest
LABEL=io.e2e3d.standin.inputs

REBUILD=0
RELOCK=0
WANT=()
for arg in "$@"; do
  case "$arg" in
    --rebuild) REBUILD=1 ;;
    --relock) RELOCK=1 ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    debian|airflow|minio|postgres|redis) WANT+=("$arg") ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done
[ ${#WANT[@]} -gt 0 ] || WANT=(debian airflow minio postgres redis)

log() { printf '[build_standins %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
wanted() { local w; for w in "${WANT[@]}"; do [ "$w" = "$1" ] && return 0; done; return 1; }
sha256_of() { sha256sum "$1" | cut -d' ' -f1; }
hash_of() { cat "$@" | sha256sum | cut -d' ' -f1; }  # of files, or of stdin
image_id() { podman image inspect --format '{{.Id}}' "$1" 2>/dev/null || true; }
image_label() { podman image inspect --format "{{index .Labels \"$LABEL\"}}" "$1" 2>/dev/null || true; }

[ "$(id -u)" = 0 ] || die "run as root (rootful podman, debootstrap)"

# --------------------------------------------------------------------------------------------- host tools
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  [ "$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null)" = installed ] || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "apt-get install ${missing[*]}"
  mkdir -p "$CACHE"
  { DEBIAN_FRONTEND=noninteractive apt-get update -q \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"; } \
    > "$CACHE/apt.log" 2>&1 || { tail -20 "$CACHE/apt.log" >&2; die "apt-get install failed (log: $CACHE/apt.log)"; }
fi
for tool in podman runc sha256sum python3; do command -v "$tool" >/dev/null || die "$tool not found"; done
mkdir -p "$CACHE"

# podman-compose, pinned, in a venv of its own
COMPOSE_VENV=$CACHE/podman-compose-$PODMAN_COMPOSE_VERSION
if [ ! -x "$COMPOSE_VENV/bin/podman-compose" ]; then
  log "podman-compose $PODMAN_COMPOSE_VERSION from PyPI into $COMPOSE_VENV"
  rm -rf "$COMPOSE_VENV"
  python3 -m venv "$COMPOSE_VENV" || die "python3 -m venv failed (apt-get install -y python3-venv)"
  "$COMPOSE_VENV/bin/pip" install --quiet --disable-pip-version-check "podman-compose==$PODMAN_COMPOSE_VERSION" \
    || { rm -rf "$COMPOSE_VENV"; die "pip install podman-compose==$PODMAN_COMPOSE_VERSION failed"; }
fi

# ---------------------------------------------------------------------------------------------- debian base
build_debian() {
  local root=$CACHE/rootfs
  rm -rf "$root"
  log "debootstrap --variant=minbase bookworm ($DEBIAN_MIRROR)"
  debootstrap --variant=minbase bookworm "$root" "$DEBIAN_MIRROR" > "$CACHE/debootstrap.log" 2>&1 \
    || { tail -20 "$CACHE/debootstrap.log" >&2; die "debootstrap failed (log: $CACHE/debootstrap.log)"; }
  # like Debian's official container image: updates + security, no recommends, no service starts, no caches
  cat > "$root/etc/apt/sources.list" <<EOF
deb $DEBIAN_MIRROR bookworm main
deb $DEBIAN_MIRROR bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
EOF
  printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' > "$root/etc/apt/apt.conf.d/90standin"
  printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d"; chmod 755 "$root/usr/sbin/policy-rc.d"
  cat > "$root/etc/dpkg/dpkg.cfg.d/90standin-nodoc" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
EOF
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/var/log/* "$root"/tmp/*
  : > "$root/etc/hostname"; : > "$root/etc/resolv.conf"
  log "importing $BASE_IMAGE"
  tar --numeric-owner -C "$root" -c . | podman import \
    --change 'CMD ["/bin/bash"]' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change "LABEL $LABEL=$1" \
    --message "debootstrap --variant=minbase bookworm" - "$BASE_IMAGE" >/dev/null
  rm -rf "$root"
}

# ---------------------------------------------------------------------------------------- airflow wheelhouse
# The Airflow version and Python of the stand-in: those the repo's Dockerfile builds FROM.
read -r AIRFLOW_VERSION AIRFLOW_PYTHON < <(sed -nE 's#^FROM +apache/airflow:([0-9.]+)-python([0-9.]+).*#\1 \2#p' \
  "$REPO/Dockerfile" | head -1) || true
[ -n "${AIRFLOW_VERSION:-}" ] || die "$REPO/Dockerfile: no 'FROM apache/airflow:<version>-python<x.y>' line"
[ "$AIRFLOW_PYTHON" = 3.11 ] || die "the stand-in has Debian bookworm's python 3.11; the Dockerfile wants $AIRFLOW_PYTHON"
AIRFLOW_IMAGE=docker.io/apache/airflow:$AIRFLOW_VERSION-python$AIRFLOW_PYTHON
AIRFLOW_ALIAS=localhost/e2e3d-airflow-standin:$AIRFLOW_VERSION-python$AIRFLOW_PYTHON

REQS=$HERE/standin-requirements.txt
LOCK=$HERE/standin-constraints.txt
PROVIDER_REQS=$CACHE/provider-requirements.txt
# install_requires and the [demo,backup] extras (with the extras they name of the provider itself) of setup.cfg:
# what the Dockerfile's `pip install "/opt/e2e3d-provider[demo,backup]"` needs from the wheelhouse
python3 - "$REPO/setup.cfg" "$PROVIDER_REQS" <<'EOF'
import configparser, re, sys
cfg = configparser.ConfigParser()
cfg.read(sys.argv[1])
def lines(text):
    return [ln.split("#")[0].strip() for ln in text.splitlines() if ln.split("#")[0].strip()]
name = cfg["metadata"]["name"]
extras = cfg["options.extras_require"]
out, todo, seen = lines(cfg["options"]["install_requires"]), ["demo", "backup"], set()
while todo:
    extra = todo.pop()
    if extra in seen:
        continue
    seen.add(extra)
    for req in lines(extras[extra]):
        m = re.fullmatch(re.escape(name) + r"\[([^\]]+)\]", req)
        if m:
            todo += [e.strip() for e in m.group(1).split(",")]
        else:
            out.append(req)
with open(sys.argv[2], "w") as f:
    f.write(f"# generated by build_standins.sh from setup.cfg: install_requires and extras {sorted(seen)}\n")
    f.writelines(f"{req}\n" for req in dict.fromkeys(out))
EOF

# The wheelhouse is resolved with Debian bookworm's own python3.11 (3.11.2, as in the image; markers such as
# python_full_version < "3.11.3" differ from a newer python), in a venv with a current pip.
HOST_PYTHON=
host_python() {
  [ -n "$HOST_PYTHON" ] && return 0
  local venv=$CACHE/pyvenv-debian
  [ -x /usr/bin/python3.11 ] || die "/usr/bin/python3.11 not found (apt-get install -y python3 python3-venv python3-dev)"
  if [ ! -x "$venv/bin/python" ]; then
    /usr/bin/python3.11 -m venv "$venv" || die "python3.11 -m venv failed (apt-get install -y python3-venv)"
  fi
  HOST_PYTHON=$venv/bin/python
  "$HOST_PYTHON" -c 'import sys, platform; assert sys.version_info[:3] == (3, 11, 2) and platform.machine() == "x86_64"' \
    || die "$HOST_PYTHON must be CPython 3.11.2 (Debian bookworm's) on x86_64 (the wheels are for cp311 linux x86_64)"
  local pip_pin; pip_pin=$(sed -n 's/^pip==//p' "$LOCK" 2>/dev/null || true)
  pip_host install --quiet "pip${pip_pin:+==$pip_pin}" || pip_host install --quiet --upgrade pip
}
pip_host() {  # pip on the host, independent of the host's pip configuration (find-links, constraints, indexes)
  env -u PIP_FIND_LINKS -u PIP_CONSTRAINT -u PIP_INDEX_URL -u PIP_EXTRA_INDEX_URL -u PIP_NO_INDEX -u PIP_USER \
    PIP_CONFIG_FILE=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1 "$HOST_PYTHON" -m pip "$@"
}
# meshoptimizer (the [rightsize] extra) publishes only an sdist: built into a wheel on the host
PIP_BINARY_OPTS=(--only-binary=:all: --no-binary=meshoptimizer)

relock() {
  host_python
  log "resolving $REQS and setup.cfg's requirements into $LOCK"
  pip_host install --dry-run --ignore-installed "${PIP_BINARY_OPTS[@]}" --quiet --report "$CACHE/report.json" \
    -r "$REQS" -r "$PROVIDER_REQS"
  "$HOST_PYTHON" - "$CACHE/report.json" "$LOCK" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
pins = sorted(((i["metadata"]["name"], i["metadata"]["version"]) for i in r["install"]), key=lambda p: p[0].lower())
with open(sys.argv[2], "w") as f:
    f.write("# Pinned versions of the airflow stand-in's wheelhouse, resolved from standin-requirements.txt and the\n"
            "# provider's requirements in setup.cfg (linux x86_64, CPython 3.11.2). build_standins.sh --relock "
            "re-resolves it.\n")
    f.writelines(f"{n}=={v}\n" for n, v in pins)
EOF
}

wheelhouse() {
  host_python
  local wheels=$CACHE/wheels stamp
  stamp=$(hash_of "$REQS" "$LOCK" "$PROVIDER_REQS")
  if [ -f "$wheels/.stamp" ] && [ "$(cat "$wheels/.stamp")" = "$stamp" ]; then
    log "wheelhouse up to date ($(find "$wheels" -name '*.whl' | wc -l) wheels)"
    return 0
  fi
  log "downloading the wheelhouse into $wheels"
  rm -rf "$wheels"; mkdir -p "$wheels"
  pip_host wheel --quiet --wheel-dir "$wheels" "${PIP_BINARY_OPTS[@]}" -r "$REQS" -r "$PROVIDER_REQS" -c "$LOCK" \
    || die "pip wheel failed (a requirement outside the lock $LOCK? try --relock)"
  # the wheelhouse alone (no index) must install what the image pre-installs and what the repo's Dockerfile
  # installs: a copy of the provider's source, with the [demo,backup] extras
  local src=$CACHE/provider-src
  rm -rf "$src"; mkdir -p "$src"
  tar -C "$REPO" --exclude=./.git --exclude=./.venv --exclude=./build --exclude=./dist --exclude='*.egg-info' \
    --exclude=__pycache__ --exclude=./.mypy_cache --exclude=./.ruff_cache --exclude=./.pytest_cache -c . | tar -C "$src" -x
  pip_host install --dry-run --ignore-installed --quiet --no-index --find-links "$wheels" \
    -r "$REQS" -c "$LOCK" "$src[demo,backup]" \
    || die "the wheelhouse does not install $REQS and the provider's [demo,backup] offline (try --relock)"
  rm -rf "$src"
  echo "$stamp" > "$wheels/.stamp"
  log "wheelhouse: $(find "$wheels" -name '*.whl' | wc -l) wheels, $(du -sh "$wheels" | cut -f1)"
}

build_airflow() {
  local ctx=$CACHE/ctx-airflow
  rm -rf "$ctx"; mkdir -p "$ctx"
  cp -al "$CACHE/wheels" "$ctx/wheels" 2>/dev/null || cp -a "$CACHE/wheels" "$ctx/wheels"
  rm -f "$ctx/wheels/.stamp"
  cp "$HERE/airflow/entrypoint.sh" "$LOCK" "$REQS" "$ctx/"
  "${PODMAN_BUILD[@]}" --label "$LABEL=$1" --build-arg "AIRFLOW_VERSION=$AIRFLOW_VERSION" \
    -f "$HERE/airflow/Containerfile" -t "$AIRFLOW_IMAGE" -t "$AIRFLOW_ALIAS" "$ctx" \
    > "$CACHE/build-airflow.log" 2>&1 || { tail -30 "$CACHE/build-airflow.log" >&2; die "airflow build failed"; }
  rm -rf "$ctx"
}

# -------------------------------------------------------------------------------------------------- minio
MINIO_BINARY=
minio_binary() {  # the pinned MinIO test build: tests/minio_binary.py fetches it, checks both sha256, caches it
  [ -n "$MINIO_BINARY" ] && return 0
  MINIO_BINARY=$(cd "$REPO" && python3 -c 'from tests.minio_binary import ensure_minio; print(ensure_minio())') \
    || die "could not get the MinIO test build (tests/minio_binary.py)"
}
build_minio() {
  local ctx=$CACHE/ctx-minio
  rm -rf "$ctx"; mkdir -p "$ctx"; cp "$MINIO_BINARY" "$ctx/minio"
  "${PODMAN_BUILD[@]}" --label "$LABEL=$1" -f "$HERE/minio/Containerfile" -t "$MINIO_IMAGE" "$ctx" \
    > "$CACHE/build-minio.log" 2>&1 || { tail -30 "$CACHE/build-minio.log" >&2; die "minio build failed"; }
  rm -rf "$ctx"
}

build_postgres() {
  "${PODMAN_BUILD[@]}" --label "$LABEL=$1" -f "$HERE/postgres/Containerfile" -t "$POSTGRES_IMAGE" "$HERE/postgres" \
    > "$CACHE/build-postgres.log" 2>&1 || { tail -30 "$CACHE/build-postgres.log" >&2; die "postgres build failed"; }
}
build_redis() {
  "${PODMAN_BUILD[@]}" --label "$LABEL=$1" -f "$HERE/redis/Containerfile" -t "$REDIS_IMAGE" "$HERE/redis" \
    > "$CACHE/build-redis.log" 2>&1 || { tail -30 "$CACHE/build-redis.log" >&2; die "redis build failed"; }
}

PODMAN_BUILD=(podman build --pull=never --network=host --layers=false --format=docker)
declare -A TIMES=()
# ensure NAME IMAGE INPUTS_HASH: builds IMAGE unless it exists with that inputs hash (and no --rebuild of NAME);
# drops the image it replaced when nothing tags it any more
ensure() {
  local name=$1 image=$2 inputs=$3 start=$SECONDS old
  if podman image exists "$image" && [ "$(image_label "$image")" = "$inputs" ] \
     && ! { [ "$REBUILD" = 1 ] && wanted "$name"; }; then
    log "$image is up to date"
    return 0
  fi
  old=$(image_id "$image")
  log "building $image"
  "build_$name" "$inputs"
  TIMES[$name]=$((SECONDS - start))
  log "$name built in ${TIMES[$name]} s"
  if [ -n "$old" ] && [ "$(image_id "$image")" != "$old" ] \
     && [ -z "$(podman image inspect --format '{{join .RepoTags ","}}' "$old" 2>/dev/null)" ]; then
    podman rmi "$old" >/dev/null 2>&1 || true
  fi
}

# ---------------------------------------------------------------------------------------------------- main
total_start=$SECONDS
# the inputs of each image: its build recipe (this script's function, the Containerfile and files), what goes
# into it, and the base image it builds on (a new base rebuilds everything on it)
ensure debian "$BASE_IMAGE" "$( { declare -f build_debian; echo "$DEBIAN_MIRROR"; } | hash_of)"
BASE_ID=$(image_id "$BASE_IMAGE")
if [ "$RELOCK" = 1 ] || [ ! -s "$LOCK" ]; then relock; fi
if wanted airflow; then
  grep -qx "apache-airflow==$AIRFLOW_VERSION" "$LOCK" \
    || die "the Dockerfile builds FROM apache/airflow:$AIRFLOW_VERSION; pin apache-airflow==$AIRFLOW_VERSION in $REQS and run --relock"
  wheelhouse
  ensure airflow "$AIRFLOW_IMAGE" "$( { declare -f build_airflow; echo "$BASE_ID $AIRFLOW_VERSION"; \
    cat "$HERE/airflow/Containerfile" "$HERE/airflow/entrypoint.sh" "$REQS" "$LOCK" "$PROVIDER_REQS"; } | hash_of)"
fi
if wanted minio; then
  minio_binary
  ensure minio "$MINIO_IMAGE" "$( { echo "$BASE_ID"; sha256_of "$MINIO_BINARY"; cat "$HERE/minio/Containerfile"; } | hash_of)"
fi
if wanted postgres; then
  ensure postgres "$POSTGRES_IMAGE" "$( { echo "$BASE_ID"; cat "$HERE"/postgres/*; } | hash_of)"
fi
if wanted redis; then
  ensure redis "$REDIS_IMAGE" "$( { echo "$BASE_ID"; cat "$HERE"/redis/*; } | hash_of)"
fi

for name in debian airflow minio postgres redis; do
  [ -n "${TIMES[$name]:-}" ] && log "time $name: ${TIMES[$name]} s"
done
log "total: $((SECONDS - total_start)) s"
echo "PODMAN_COMPOSE=$COMPOSE_VENV/bin/podman-compose"
echo "CONTAINERS_CONF=$CONTAINERS_CONF"
