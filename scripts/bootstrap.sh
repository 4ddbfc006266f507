#!/usr/bin/env bash
# Set up a fresh machine for Ferry: system tools, then the virtualenv with pinned dependencies.
# Idempotent and quick when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for pair in rsync:rsync rclone:rclone sshd:openssh-server smbd:samba smbclient:smbclient \
            hyperfine:hyperfine setfattr:attr strace:strace; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || [ -x "/usr/sbin/${pair%%:*}" ] || need+=("${pair#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "bootstrap: installing ${need[*]}"
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
stamp=.venv/.ferry-installed
want=$(cat pyproject.toml | sha256sum | cut -c1-16)
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "bootstrap: installing Python dependencies into .venv"
  .venv/bin/python -m pip install -q --upgrade pip
  # "compat" editable mode is a plain path entry: no import hook to pay for at every start.
  .venv/bin/python -m pip install -q -e '.[dev]' --config-settings editable_mode=compat
  echo "$want" > "$stamp"
fi
