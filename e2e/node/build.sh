#!/usr/bin/env bash
# Build (once) what a real node needs besides kubelet and kube-proxy (those come from the
# control plane's module, e2e/cluster/build.sh):
#
#   containerd, containerd-shim-runc-v2, ctr   go install github.com/containerd/containerd/v2@CONTAINERD_VERSION
#   pause + its image (OCI archive)           pause.c from the pinned k8s.io/kubernetes module, static,
#                                             as registry.k8s.io/pause:PAUSE_TAG (no registry is reachable)
#   runc, CNI plugins, iptables, conntrack    Debian packages (apt-get)
#
# Cached in ${FERRY_CACHE:-~/.cache/ferry}/node-<containerd>-<hash of the pins>/, keyed by this
# script and the control plane's go.sum. Idempotent; prints the directory as the last line of
# stdout (bin/, pause.oci.tar and its name in pause.ref inside). Logs go to stderr. Needs root for apt-get.
set -euo pipefail

CONTAINERD_VERSION=v2.4.2
PAUSE_TAG=3.10.2          # build/pause/Makefile of k8s.io/kubernetes v1.37.0
BUILD_PARALLELISM=${FERRY_BUILD_JOBS:-2}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mod="$here/../cluster/go"
cache_root=${FERRY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ferry}

log() { printf '[node/build.sh] %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

source "$here/../cluster/find-go.sh"

ensure_apt() {
    local missing=() p
    declare -A provides=([runc]=runc [iptables]=iptables [conntrack]=conntrack [buildah]=buildah
        [gcc]=gcc [ip]=iproute2)
    for p in "${!provides[@]}"; do command -v "$p" >/dev/null || missing+=("${provides[$p]}"); done
    [[ -x /usr/lib/cni/bridge ]] || missing+=(containernetworking-plugins)
    [[ -f /usr/lib/x86_64-linux-gnu/libc.a || -f /usr/lib/libc.a ]] || missing+=(libc6-dev)
    if ((${#missing[@]})); then
        [[ $(id -u) == 0 ]] || die "needs root to apt-get install ${missing[*]}"
        log "apt-get install ${missing[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
    fi
}

key() {
    { echo "$CONTAINERD_VERSION $PAUSE_TAG"; cat "$mod/go.sum" "${BASH_SOURCE[0]}"; } \
        | sha256sum | cut -c1-12
}

pause_image() {
    # $1: output dir. A static pause binary in an image of its own, as upstream builds it.
    local out=$1 src
    src=$(cd "$mod" && GOFLAGS=-mod=mod GOTOOLCHAIN=local "$go" list -m -f '{{.Dir}}' k8s.io/kubernetes)
    gcc -Os -Wall -Werror -static -DVERSION="v$PAUSE_TAG-ferry" -o "$out/bin/pause" \
        "$src/build/pause/linux/pause.c"
    strip "$out/bin/pause"
    local store="$out/buildah" ctr name="registry.k8s.io/pause:$PAUSE_TAG"
    bah() { buildah --root "$store/storage" --runroot "$store/run" --storage-driver vfs "$@"; }
    ctr=$(bah from scratch)
    bah copy "$ctr" "$out/bin/pause" /pause >&2
    bah config --entrypoint '["/pause"]' --user 65535:65535 "$ctr" >&2
    bah commit --quiet --rm "$ctr" "$name" >&2
    bah push --quiet "$name" "oci-archive:$out/pause.oci.tar:$name" >&2
    echo "$name" > "$out/pause.ref"   # the name containerd's config pins as the sandbox image
    rm -rf "$store"
}

main() {
    ensure_apt
    go=$(find_go) || exit 1
    local dest; dest="$cache_root/node-$CONTAINERD_VERSION-$(key)"
    mkdir -p "$cache_root"
    exec 9>"$cache_root/.node-build.lock"
    flock 9
    if [[ -f "$dest/BUILD-INFO" ]]; then
        log "cached: $dest"
        echo "$dest"
        return 0
    fi
    local tmp="$dest.tmp.$$" start=$SECONDS
    rm -rf "$tmp"; mkdir -p "$tmp/bin"
    trap 'rm -rf "$tmp"' EXIT
    log "go install containerd $CONTAINERD_VERSION ($("$go" version), -p $BUILD_PARALLELISM)"
    (cd "$tmp" && GOBIN="$tmp/bin" GOFLAGS=-mod=mod CGO_ENABLED=0 GOTOOLCHAIN=local \
        "$go" install -p "$BUILD_PARALLELISM" -trimpath \
        -tags "no_btrfs no_zfs no_devmapper no_aufs" \
        -ldflags "-s -w -X github.com/containerd/containerd/v2/version.Version=$CONTAINERD_VERSION" \
        "github.com/containerd/containerd/v2/cmd/containerd@$CONTAINERD_VERSION" \
        "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@$CONTAINERD_VERSION" \
        "github.com/containerd/containerd/v2/cmd/ctr@$CONTAINERD_VERSION") >&2
    log "pause $PAUSE_TAG"
    pause_image "$tmp"
    echo "containerd=$CONTAINERD_VERSION pause=$PAUSE_TAG runc=$(runc --version | head -1) built in $((SECONDS - start))s" \
        > "$tmp/BUILD-INFO"
    rm -rf "$dest"; mv "$tmp" "$dest"
    trap - EXIT
    log "built in $((SECONDS - start))s: $dest"
    echo "$dest"
}

main "$@"
