#!/usr/bin/env bash
# Build the Ferry image from the project's Dockerfile on this machine, with no registry.
#
#   bash e2e/node/image.sh          # build (or reuse) the image; prints the OCI archive path
#   bash e2e/node/image.sh rootfs   # build, then print a root filesystem unpacked from the archive
#   bash e2e/node/image.sh lock     # regenerate requirements/image.lock (with hashes) from pyproject.toml
#
# 1. Base: a Debian bookworm root filesystem (python3.11, python3-venv, ca-certificates,
#    tzdata) made by mmdebstrap from the Debian mirrors apt is configured with (main,
#    updates, security: what python:3.11-slim-bookworm holds), imported with buildah.
# 2. Wheelhouse: `pip wheel` of requirements/image.lock on the host (python3.11), put in
#    the build context so pip inside the build runs with --no-index (and --network none).
# 3. `buildah bud` of the Dockerfile with BASE set to that base; pushed as an OCI archive
#    named $FERRY_IMAGE (default ghcr.io/ferry-dev/ferry:dev) for containerd to import.
#
# Everything is cached under ${FERRY_CACHE:-~/.cache/ferry}/image/, keyed by a hash of what
# decides it (the archive: Dockerfile + lock + ferry sources + this script); buildah's own
# storage lives there too (vfs driver), so the host's container storage is never touched.
# Needs root (apt-get install of mmdebstrap/buildah/runc, mmdebstrap --mode=root).
# Idempotent; the archive path is the last line of stdout. Logs go to stderr.
set -euo pipefail

IMAGE_NAME=${FERRY_IMAGE:-ghcr.io/ferry-dev/ferry:dev}
SUITE=bookworm
INCLUDE=python3.11,python3-venv,ca-certificates,tzdata

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
lockfile="$repo/requirements/image.lock"
cache=${FERRY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ferry}/image
PY=${PYTHON:-python3.11}

log() { printf '[image.sh] %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

bah() { buildah --root "$cache/storage" --runroot "$cache/run" --storage-driver vfs "$@"; }

check_python() {
    command -v "$PY" >/dev/null || die "$PY not found (set PYTHON to a Python 3.11)"
    "$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
        || die "$PY is not Python 3.11 (the image's Python); set PYTHON"
}

ensure_apt() {
    local missing=()
    command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
    command -v buildah >/dev/null || missing+=(buildah)
    command -v runc >/dev/null || missing+=(runc)
    if ((${#missing[@]})); then
        [[ $(id -u) == 0 ]] || die "needs root to apt-get install ${missing[*]}"
        log "apt-get install ${missing[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
    fi
}

mirrors() {
    # One "deb URI SUITE main" per configured Debian repository of $SUITE (never a fixed host).
    apt-get indextargets --format '$(REPO_URI) $(RELEASE)' 'Identifier: Packages' \
        | awk -v s="$SUITE" '$2 == s || index($2, s "-") == 1 { print "deb " $1 " " $2 " main" }' \
        | sort -u
}

lock() {
    # A clean venv with only the runtime dependencies; its freeze is the lock. setuptools is
    # pinned too: the image installs ferry with --no-build-isolation (no index in the build).
    # Each line carries the sha256 of the wheel pip downloads for this host's platform (the
    # image's: CPython 3.11, manylinux x86_64), and the Dockerfile installs with --require-hashes.
    check_python
    local venv; venv=$(mktemp -d)
    trap 'rm -rf "$venv"' RETURN
    "$PY" -m venv "$venv/venv"
    "$venv/venv/bin/pip" install -q --upgrade pip >&2
    # The versions the lock already holds stay (a pin changed in pyproject.toml moves only
    # that package); FERRY_LOCK_UPGRADE=1 resolves everything afresh.
    local constraints=()
    if [[ -f "$lockfile" && ${FERRY_LOCK_UPGRADE:-0} != 1 ]]; then
        grep -E '^[A-Za-z0-9]' "$lockfile" | sed 's/ .*//' > "$venv/old.txt"
        constraints=(-c "$venv/old.txt")
    fi
    "$venv/venv/bin/pip" install -q "$repo" 'setuptools>=77' "${constraints[@]}" >&2 \
        || die "pip could not resolve pyproject.toml within the lock's pins (FERRY_LOCK_UPGRADE=1 re-resolves)"
    "$venv/venv/bin/pip" freeze --all --exclude ferry --exclude pip > "$venv/freeze.txt"
    "$venv/venv/bin/pip" download -q --no-deps --only-binary=:all: -r "$venv/freeze.txt" \
        -d "$venv/files" >&2
    mkdir -p "$(dirname "$lockfile")"
    "$PY" - "$venv/freeze.txt" "$venv/files" > "$lockfile" <<'PY'
import hashlib, pathlib, re, sys

def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()

files = {norm(f.name.split("-")[0]): f for f in pathlib.Path(sys.argv[2]).iterdir()}
print("# The Ferry image's Python packages (Dockerfile), exact versions and the sha256 of each")
print("# wheel for CPython 3.11 on manylinux x86_64 (the image's platform); pip --require-hashes.")
print("# Generated from pyproject.toml by: bash e2e/node/image.sh lock")
for line in pathlib.Path(sys.argv[1]).read_text().splitlines():
    name = line.split("==")[0]
    digest = hashlib.sha256(files[norm(name)].read_bytes()).hexdigest()
    print(f"{line} \\\n    --hash=sha256:{digest}")
PY
    log "wrote $lockfile"
}

base_image() {
    # Prints the name of the base image, importing it first if needed.
    local srcs; srcs=$(mirrors)
    [[ -n "$srcs" ]] || die "apt has no Debian $SUITE repository configured (apt-get indextargets)"
    local key; key=$(printf '%s\n' "$SUITE" "$INCLUDE" merged-usr-hook "$srcs" | sha256sum | cut -c1-12)
    local name="localhost/ferry-base:$SUITE-$key"
    if bah inspect --type image "$name" >/dev/null 2>&1; then
        log "base cached: $name"
        echo "$name"; return 0
    fi
    local rootfs="$cache/base-$key.tar"
    if [[ ! -s "$rootfs" ]]; then
        local start=$SECONDS
        log "mmdebstrap $SUITE ($INCLUDE) from: $(echo "$srcs" | awk '{print $2, $3}' | paste -sd' ')"
        local args=() line
        while read -r line; do args+=("$line"); done <<< "$srcs"
        mmdebstrap --quiet --mode=root --format=tar --variant=minbase --include="$INCLUDE" \
            --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
            "$SUITE" "$rootfs.tmp" "${args[@]}" >&2
        mv "$rootfs.tmp" "$rootfs"
        log "base root filesystem in $((SECONDS - start))s: $(du -h "$rootfs" | cut -f1)"
    fi
    local ctr; ctr=$(bah from scratch)
    bah add "$ctr" "$rootfs" / >&2
    bah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        --env LANG=C.UTF-8 --cmd python3.11 "$ctr" >&2
    bah commit --quiet --rm "$ctr" "$name" >&2
    log "base imported: $name"
    echo "$name"
}

wheelhouse() {
    # Prints the wheelhouse dir for the lock (built once per lock).
    local dir="$cache/wheels-$(sha256sum < "$lockfile" | cut -c1-12)"
    if [[ ! -f "$dir/.complete" ]]; then
        check_python
        log "pip wheel -r requirements/image.lock -> $dir"
        rm -rf "$dir.tmp"
        "$PY" -m pip wheel -q --disable-pip-version-check -r "$lockfile" -w "$dir.tmp" >&2
        touch "$dir.tmp/.complete"
        rm -rf "$dir"; mv "$dir.tmp" "$dir"
    fi
    echo "$dir"
}

sources() {
    # The build context's files (NUL-separated, sorted), relative to the repo.
    (cd "$repo" && {
        printf '%s\0' Dockerfile .dockerignore pyproject.toml README.md LICENSE \
            requirements/image.lock image/slim.py
        find ferry -type f ! -path '*/__pycache__/*' ! -name '*.pyc' -print0
    } | sort -z)
}

key() {
    {
        echo "$IMAGE_NAME"
        (cd "$repo" && sources | xargs -0 sha256sum)
        sha256sum < "${BASH_SOURCE[0]}"
    } | sha256sum | cut -c1-12
}

take_lock() {
    # One build at a time; a second caller waits, then reuses it.
    if [[ -z ${locked:-} ]]; then
        mkdir -p "$cache"
        exec 9>"$cache/.lock"
        flock 9
        locked=1
    fi
}

build() {
    [[ -f "$lockfile" ]] || die "no $lockfile (bash e2e/node/image.sh lock)"
    take_lock
    local archive; archive="$cache/ferry-$(key).oci.tar"
    if [[ -s "$archive" ]]; then
        log "cached: $archive"
        echo "$archive"; return 0
    fi
    ensure_apt
    local start=$SECONDS base wheels
    base=$(base_image)
    wheels=$(wheelhouse)
    ctx=$(mktemp -d)   # global: the EXIT trap runs after build() returns
    trap 'rm -rf "$ctx"' EXIT
    (cd "$repo" && sources | tar --null -T - -cf -) | tar -xf - -C "$ctx"
    cp -r "$wheels" "$ctx/requirements/wheels"
    local bstart=$SECONDS
    log "buildah bud (BASE=$base, --network none) -> $IMAGE_NAME"
    bah bud --pull=never --network none --build-arg "BASE=$base" \
        -t "$IMAGE_NAME" -f "$ctx/Dockerfile" "$ctx" >&2
    log "built in $((SECONDS - bstart))s"
    bah push --quiet "$IMAGE_NAME" "oci-archive:$archive.tmp:$IMAGE_NAME" >&2
    mv "$archive.tmp" "$archive"
    # Keep the cache small: older archives and images nothing refers to.
    find "$cache" -maxdepth 1 -name 'ferry-*.oci.tar' ! -path "$archive" -delete
    bah rmi --prune >/dev/null 2>&1 || true
    log "image $IMAGE_NAME ($(du -h "$archive" | cut -f1) archive) in $((SECONDS - start))s"
    echo "$archive"
}

rootfs() {
    # The archive imported into a buildah container (kept, one per archive), for runc to run
    # with a read-only root: the tests get a rootfs without copying 500 MB each time.
    take_lock
    local archive; archive=$(build | tail -n1)
    local name; name="ferry-rootfs-$(basename "$archive" .oci.tar | cut -d- -f2)"
    if ! bah inspect --type container "$name" >/dev/null 2>&1; then
        local old
        for old in $(bah containers --noheading --format '{{.ContainerName}}'); do
            if [[ $old == ferry-rootfs-* ]]; then bah rm "$old" >/dev/null; fi
        done
        bah rmi --prune >/dev/null 2>&1 || true
        log "importing $archive as $name"
        bah from --quiet --name "$name" "oci-archive:$archive" >/dev/null
    fi
    bah mount "$name"
}

case "${1:-build}" in
    build) build ;;
    rootfs) rootfs ;;
    lock) lock ;;
    *) die "usage: image.sh [build|rootfs|lock]" ;;
esac
