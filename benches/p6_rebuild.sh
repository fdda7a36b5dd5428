#!/usr/bin/env bash
# P6: labforge's own time during `labforge rebuild` (image from the root file system cache, deploy, verify)
# beside the guest's boot time (QEMU TCG + OVMF: power-on → SSH with the pinned key → cloud-init done).
# Usage: benches/p6_rebuild.sh [RUNS] [HOST]   (default 1 vulcan; ceres = the aarch64 Pi image under
# qemu-system-aarch64 -M virt; root, needs scripts/install-test-deps.sh)
# The example lab is copied to a temporary directory with a fresh admin key (the operator's is not here);
# the root file system cache is target/labforge-cache (LABFORGE_CACHE), shared with tests/e2e_rebuild.rs.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-1}
host=${2:-vulcan}
cargo build --release -q
bin=$PWD/target/release/labforge
export LABFORGE_CACHE=$PWD/target/labforge-cache
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r hosts "$work/hosts"
ssh-keygen -q -t ed25519 -N '' -C labforge-p6 -f "$work/id_ed25519"
pub=$(cat "$work/id_ed25519.pub")
sed -i "s|^ssh_keys = \[.*\]|ssh_keys = [\"$pub\"]|" "$work/hosts/site.toml"
export LABFORGE_AGE_IDENTITY=$work/.age-identity.txt
cd "$work"
"$bin" --spec hosts secrets init >/dev/null
"$bin" --spec hosts render "$host" >/dev/null
# Warm the root file system cache (first run only: mmdebstrap), not timed as part of P6.
"$bin" --spec hosts image build "$host" >/dev/null
printf '%-4s %10s %10s %10s %10s %10s %12s\n' run image boot+ssh deploy verify labforge 'labforge-goal'
for i in $(seq 1 "$runs"); do
  # --rebuild-image: build from the cached root file system every run (the honest "build from cache" cost).
  "$bin" --spec hosts rebuild "$host" --boot qemu --rebuild-image --identity "$work/id_ed25519" --json \
    > "$work/r$i.json" 2> "$work/r$i.log" || { cat "$work/r$i.log" >&2; exit 1; }
  python3 - "$work/r$i.json" "$i" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
t = {p["name"]: p["seconds"] for p in r["phases"]}
own = t["image"] + t["deploy"] + t["verify"]
print(f'{sys.argv[2]:<4} {t["image"]:>9.1f}s {t["boot"]+t["ssh"]:>9.1f}s {t["deploy"]:>9.1f}s {t["verify"]:>9.1f}s {own:>9.1f}s {"ok" if own <= 30 else "OVER 30 s":>12}')
PY
done
