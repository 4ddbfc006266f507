#!/usr/bin/env bash
# Install the real servers and reference clients the backend tests and benchmarks use.
# Idempotent: installs only what is missing; runs `apt-get update` only then.
set -euo pipefail
need=()
for pair in sshd:openssh-server smbd:samba smbclient:smbclient rclone:rclone rsync:rsync openssl:openssl; do
  bin=${pair%%:*}; pkg=${pair##*:}
  if ! command -v "$bin" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$bin" ]; then need+=("$pkg"); fi
done
# The SMB fsync tests read smbd's request log from the full_audit VFS module, which Debian
# ships apart from smbd (samba-vfs-modules, only recommended by samba).
smbd=$(command -v smbd || echo /usr/sbin/smbd)
modules=$({ [ -x "$smbd" ] && "$smbd" -b | awk '/MODULESDIR:/ {print $2}'; } || true)
[ -n "$modules" ] && [ -f "$modules/vfs/full_audit.so" ] || need+=(samba-vfs-modules)
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update
  apt-get install -y --no-install-recommends "${need[@]}"
fi
mkdir -p /run/sshd
# moto (the S3 API server) comes from the project's `dev` extra: pip install -e '.[dev]'

# versitygw (a real S3 server, Go) from the Go module proxy, once per pin, into Ferry's cache
# outside the work tree (as e2e/cluster/build.sh does for the control plane).
VERSITYGW_VERSION=v1.8.0  # keep in sync with tests/servers/versitygw.py
vgw_bin=${FERRY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ferry}/versitygw-$VERSITYGW_VERSION/bin
if [ ! -x "$vgw_bin/versitygw" ]; then
  echo "install.sh: building versitygw $VERSITYGW_VERSION" >&2
  go=$(command -v go || echo /usr/local/go/bin/go)  # where this machine kind installs Go
  GOBIN=$vgw_bin GOFLAGS=-trimpath "$go" install "github.com/versity/versitygw/cmd/versitygw@$VERSITYGW_VERSION" >&2
fi

# promtool (checks and unit-tests the chart's Prometheus rules, e2e/test_chart_monitoring.py):
# Debian's prometheus package ships it; only the binary is unpacked, so no server is installed
# or started. Into Ferry's cache, as above.
promtool_dir=${FERRY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ferry}/promtool
if [ ! -x "$promtool_dir/promtool" ]; then
  echo "install.sh: unpacking promtool from Debian's prometheus package" >&2
  tmp=$(mktemp -d)
  (cd "$tmp" && { apt-get download prometheus >&2 2>/dev/null || { apt-get update >&2 && apt-get download prometheus >&2; }; })
  dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/x"
  mkdir -p "$promtool_dir"
  install -m 0755 "$tmp/x/usr/bin/promtool" "$promtool_dir/promtool"
  rm -rf "$tmp"
fi
