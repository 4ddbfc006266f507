# Sourced by the build scripts: find_go prints the Go toolchain to build with.
find_go() {
    local g
    for g in "$(command -v go || true)" /usr/local/go/bin/go /usr/lib/go/bin/go; do
        if [[ -n "$g" && -x "$g" ]]; then echo "$g"; return 0; fi
    done
    echo "Go not found (need Go >= 1.26 at /usr/local/go/bin/go or on PATH)" >&2
    return 1
}
