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
