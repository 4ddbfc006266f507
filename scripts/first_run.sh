# Sourced by scripts/demo.sh and scripts/test.sh before they build anything: on a run that
# finds pieces missing from the cache (a fresh machine, a changed pin), say what will be
# built and about how long it takes on 2 cores, so a long first run is not a surprise.
# Usage: first_run_notice demo|test
first_run_notice() {
    local what=$1 cache=${FERRY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ferry} todo=() minutes=0
    if [ ! -f .venv/.ferry-installed ]; then
        todo+=("the virtualenv with the pinned Python packages (~3 min)"); minutes=$((minutes + 3))
    fi
    if [ "$what" = test ] && ! compgen -G "$cache/versitygw-*/bin/versitygw" >/dev/null; then
        todo+=("the test servers: versitygw from the Go module proxy, sshd and smbd from apt (~4 min)")
        minutes=$((minutes + 4))
    fi
    if [ "$what" = test ] || [ "${FERRY_DEMO_CLUSTER:-1}" != 0 ]; then
        if ! compgen -G "$cache/k8s-*/bin/kube-apiserver" >/dev/null; then
            todo+=("the Kubernetes control plane, kubelet, kube-proxy and helm from the upstream Go modules (~20-25 min)")
            minutes=$((minutes + 22))
        fi
        if ! compgen -G "$cache/node-*/bin/containerd" >/dev/null; then
            todo+=("containerd and the pause image for the cluster's nodes (~4 min)")
            minutes=$((minutes + 4))
        fi
        if ! compgen -G "$cache/image/ferry-*.oci.tar" >/dev/null; then
            todo+=("the Ferry image from the Dockerfile with buildah (~4 min)")
            minutes=$((minutes + 4))
        fi
    fi
    [ ${#todo[@]} -gt 0 ] || return 0
    printf '\n== first run: building what is not cached yet (in %s; later runs reuse it)\n' "$cache"
    printf '   - %s\n' "${todo[@]}"
    printf '   about %d min in all on 2 cores.\n\n' "$minutes"
}
