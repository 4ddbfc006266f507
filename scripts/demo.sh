#!/usr/bin/env bash
# `make demo`: Ferry's main job end to end on a local default.
#  1. generate a sample tree; 2. `ferry copy` with live progress and inline verification;
#  3. `ferry verify`; 4. change a few files; 5. `ferry plan --sync` and `ferry sync` move only
#  what changed; 6. on the local Kubernetes control plane, a TransferJob applied with kubectl
#  runs to Succeeded under the operator's shipped RBAC (skipped with FERRY_DEMO_CLUSTER=0).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/first_run.sh
first_run_notice demo
bash scripts/bootstrap.sh
ferry=.venv/bin/ferry
demo=${FERRY_DEMO_DIR:-${TMPDIR:-/tmp}/ferry-demo}
progress=json; [ -t 2 ] && progress=bar
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

mkdir -p "$demo"
# Fresh names each run: no rm -rf of a big tree right before writing a new one.
run=$(date +%s)
src="$demo/src-$run"; dst="$demo/dst-$run"
say "generating a sample tree in $src"
.venv/bin/python - "$src" <<'PY'
import os, random, sys
root = sys.argv[1]
rnd = random.Random(42)
for d in range(10):
    os.makedirs(f"{root}/project/module{d}", exist_ok=True)
    for f in range(30):
        with open(f"{root}/project/module{d}/file{f}.txt", "wb") as fh:
            fh.write(rnd.randbytes(rnd.randint(100, 20_000)))
os.makedirs(f"{root}/media", exist_ok=True)
for i in range(3):
    with open(f"{root}/media/video{i}.bin", "wb") as fh:
        for _ in range(48):
            fh.write(rnd.randbytes(1 << 20))
os.symlink("media/video0.bin", f"{root}/latest-video")
os.makedirs(f"{root}/empty-dir")
PY

say "ferry copy (verification on, progress: $progress)"
$ferry copy "$src" "$dst" --progress "$progress" --bwlimit 200M
say "ferry verify: both trees compared by content"
$ferry verify "$src" "$dst"

say "changing three files, adding one, deleting one"
echo "an edit" >> "$src/project/module1/file3.txt"
echo "an edit" >> "$src/project/module7/file9.txt"
head -c 1000000 /dev/urandom >> "$src/media/video2.bin"
echo "new" > "$src/project/NEW.md"
rm "$src/project/module0/file0.txt"

say "ferry plan --sync: what would change"
$ferry plan --sync "$src" "$dst"
say "ferry sync: only the changes move; the deleted file goes last"
$ferry sync "$src" "$dst" --json | .venv/bin/python -m json.tool
$ferry verify "$src" "$dst"

if [ "${FERRY_DEMO_CLUSTER:-1}" != "0" ]; then
  say "the same engine on Kubernetes: a local cluster with real nodes (built once: upstream modules, the image from the Dockerfile)"
  bash e2e/cluster/build.sh >/dev/null
  bash e2e/node/build.sh >/dev/null
  bash e2e/node/image.sh >/dev/null
  .venv/bin/python -m e2e.cluster up
  say "a TransferJob applied with kubectl, the operator running under its chart's RBAC"
  set +e
  .venv/bin/python -m e2e.demo_cluster
  rc=$?
  set -e
  if [ "${FERRY_DEMO_KEEP:-0}" = "1" ]; then
    echo "the cluster stays up: kubeconfig in ~/.cache/ferry/cluster/kubeconfig; stop it with: .venv/bin/python -m e2e.cluster down"
  else
    .venv/bin/python -m e2e.cluster down
  fi
  [ "$rc" -eq 0 ] || { echo "demo: the TransferJob did not succeed (exit $rc)"; exit "$rc"; }
fi
say "done: $dst"
