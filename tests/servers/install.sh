#!/usr/bin/env bash
# Install the real servers and reference clients the backend tests and benchmarks use.
# Idempotent: installs only what is missing; runs `apt-get update` only then.
set -euo pipefail
need=()
for pair in sshd:openssh-server smbd:samba smbclient:smbclient rclone:rclone rsync:rsync; do
  bin=${pair%%:*}; pkg=${pair##*:}
  if ! command -v "$bin" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$bin" ]; then need+=("$pkg"); fi
done
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update
  apt-get install -y --no-install-recommends "${need[@]}"
fi
mkdir -p /run/sshd
# moto (the S3 API server) comes from the project's `dev` extra: pip install -e '.[dev]'
