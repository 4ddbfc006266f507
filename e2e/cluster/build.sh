#!/usr/bin/env bash
# Build (once) the pinned upstream control plane for Ferry's local e2e cluster.
#
# Binaries: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl and the
# node's kubelet and kube-proxy (from the Go module in e2e/cluster/go), helm (go install at
# HELM_VERSION).
# They land in a cache OUTSIDE the work tree, keyed by the pins, so every clone on
# this machine reuses them and a pin change builds a fresh set:
#   ${FERRY_CACHE:-~/.cache/ferry}/k8s-<version>-<hash>/bin
# Idempotent; prints the bin dir as the last line of stdout. Logs go to stderr.
set -euo pipefail

K8S_VERSION=v1.37.0     # keep in sync with e2e/cluster/go/go.mod
HELM_VERSION=v3.22.0    # built against client-go v0.37.0
BUILD_PARALLELISM=${FERRY_BUILD_JOBS:-2}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mod="$here/go"
cache_root=${FERRY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ferry}

log() { printf '[build.sh] %s\n' "$*" >&2; }

source "$here/find-go.sh"

ensure_apt() {
    # Runtime tools the cluster and node agent use (util-linux: unshare, mount, umount).
    local missing=()
    command -v unshare >/dev/null || missing+=(util-linux)
    command -v mount >/dev/null || missing+=(mount)
    command -v curl >/dev/null || missing+=(curl)
    if ((${#missing[@]})); then
        log "apt-get install ${missing[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
    fi
}

key() {
    # Everything that decides the binaries' bytes goes into the key.
    {
        echo "$K8S_VERSION $HELM_VERSION"
        cat "$mod/go.mod" "$mod/go.sum"
        find "$mod/cmd" -name '*.go' -print0 | sort -z | xargs -0 cat
        sed -n '/^K8S_VERSION=/p;/^HELM_VERSION=/p;/^ldflags_k8s()/,/^}/p' "${BASH_SOURCE[0]}"
    } | sha256sum | cut -c1-12
}

ldflags_k8s() {
    local v=${K8S_VERSION#v} pkg=k8s.io/component-base/version
    local major=${v%%.*} rest=${v#*.}
    echo "-s -w -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=$major -X $pkg.gitMinor=${rest%%.*} -X $pkg.gitTreeState=clean -X $pkg.buildDate=2026-01-01T00:00:00Z"
}

main() {
    ensure_apt
    local go; go=$(find_go) || exit 1
    local dest="$cache_root/k8s-$K8S_VERSION-$(key)"
    local bin="$dest/bin"
    local want=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy helm)
    mkdir -p "$cache_root"
    exec 9>"$cache_root/.build.lock"
    flock 9   # one build at a time; a second caller waits and then reuses it
    local ok=1 b
    for b in "${want[@]}"; do [[ -x "$bin/$b" ]] || ok=0; done
    if ((ok)); then
        log "cached: $bin"
        echo "$bin"
        return 0
    fi
    local tmp="$dest.tmp.$$"
    rm -rf "$tmp"; mkdir -p "$tmp/bin"
    trap 'rm -rf "$tmp"' EXIT
    local start=$SECONDS
    export GOFLAGS="-mod=mod" CGO_ENABLED=0 GOTOOLCHAIN=local
    log "go build control plane ($("$go" version), -p $BUILD_PARALLELISM) -> $bin"
    (cd "$mod" && "$go" build -p "$BUILD_PARALLELISM" -trimpath -ldflags "$(ldflags_k8s)" \
        -o "$tmp/bin/" ./cmd/...) >&2
    log "go install helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
    (cd "$tmp" && GOBIN="$tmp/bin" "$go" install -p "$BUILD_PARALLELISM" -trimpath \
        -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
        "helm.sh/helm/v3/cmd/helm@$HELM_VERSION") >&2
    for b in "${want[@]}"; do [[ -x "$tmp/bin/$b" ]] || { log "missing $b after build"; exit 1; }; done
    echo "$K8S_VERSION helm=$HELM_VERSION built in $((SECONDS - start))s" > "$tmp/BUILD-INFO"
    rm -rf "$dest"; mv "$tmp" "$dest"
    trap - EXIT
    log "built in $((SECONDS - start))s: $bin"
    echo "$bin"
}

main "$@"
