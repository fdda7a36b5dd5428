#!/usr/bin/env bash
# P2: a per-host image from a 4 GiB base (~25 % mapped, raw, pinned).
#   labforge image build iris (base checked against its sha256 on a second thread, or by the verified-base
#   cache; reflink, else copy up to the end of system-boot, seed into that FAT, then the rest copied while
#   the result's sha256 is computed behind the copy; bmap with per-range sha256; manifest)
#   vs cp --sparse=always + mcopy of the three seed files (no verification, no hashes, no bmap).
# labforge runs twice per round: "cold" (verified-base cache emptied first: the base is hashed, on a second
# thread) and "warm" (the cache confirms the unchanged base: no base hash). Goal: labforge <= 1 s.
# Prints times and the ratios.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$here/benches/p1_flash.sh"
p2_main() {
  [ -x "$LF" ] || { echo "build first: cargo build --release" >&2; exit 2; }
  work=$(mktemp -d "${BENCH_DIR:-/tmp}/labforge-p2.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  make_lab "$work"
  cat "$work/base.img" >/dev/null
  now() { date +%s.%N; }
  median() { printf '%s\n' "$@" | sort -n | sed -n "$(( ($# + 1) / 2 ))p"; }
  C=(); L=(); P=()
  for round in 1 2 3; do
    rm -rf "$work/lab/out/cache/verified-bases"
    t0=$(now)
    "$LF" --spec "$work/lab/hosts" image build iris --seed-dir "$work/seed" --out "$work/iris.img" >/dev/null
    t1=$(now); C+=("$(echo "$t1 - $t0" | bc)"); rm -f "$work"/iris.img*
    t0=$(now)
    "$LF" --spec "$work/lab/hosts" image build iris --seed-dir "$work/seed" --out "$work/iris.img" >/dev/null
    t1=$(now); L+=("$(echo "$t1 - $t0" | bc)"); rm -f "$work"/iris.img*
    t0=$(now)
    cp --sparse=always "$work/base.img" "$work/peer.img"
    MTOOLS_SKIP_CHECK=1 mcopy -o -i "$work/peer.img@@1048576" "$work/seed/user-data" "$work/seed/meta-data" "$work/seed/network-config" ::
    t1=$(now); P+=("$(echo "$t1 - $t0" | bc)"); rm -f "$work/peer.img"
  done
  cold=$(median "${C[@]}"); lf=$(median "${L[@]}"); peer=$(median "${P[@]}")
  echo "P2 rounds: labforge cold ${C[*]} | labforge warm ${L[*]} | cp+mcopy ${P[*]}"
  printf 'P2 labforge image build, cold:    %6.2f s (base hashed)   ratio to peer = %.2f\n' "$cold" "$(echo "$cold / $peer" | bc -l)"
  printf 'P2 labforge image build, warm:    %6.2f s (base cached)   ratio to peer = %.2f (goal <= 1 s)\n' "$lf" "$(echo "$lf / $peer" | bc -l)"
  printf 'P2 cp --sparse=always + mcopy:    %6.2f s\n' "$peer"
  # For scale, the floor of any build that records the whole image's SHA-256: hashing 4 GiB once with
  # OpenSSL's SHA-256 (SHA-NI where the CPU has it; coreutils sha256sum is a slower software hash).
  t0=$(now); openssl dgst -sha256 "$work/base.img" >/dev/null; t1=$(now)
  printf 'P2 openssl dgst -sha256 of the 4 GiB base (floor of one full SHA-256 pass): %6.2f s\n' "$(echo "$t1 - $t0" | bc)"
}
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then p2_main; fi
