#!/usr/bin/env bash
# P1: flash a 4 GiB image (~25 % mapped) to a file target.
#   labforge flash (bmap, zeroes unmapped ranges, O_DIRECT read-back of every mapped byte checked against
#   the bmap's range sha256, unmapped ranges proven zero)
#   vs bmaptool copy (bmap, no read-back) vs dd bs=4M conv=fsync + sha256sum (full write + full read).
# Goal: labforge <= 1.0x bmaptool, <= 0.35x dd. Prints times and ratios. Needs: release build, bmaptool,
# sfdisk, mkfs.vfat. Disk: ~1 GiB base + 1 GiB image + 1+1+4 GiB targets, removed at exit.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LF=${LABFORGE:-$here/target/release/labforge}

# Fixture (p2/p5 source this file for it): a 4 GiB Raspberry-Pi-like base image, ~25 % mapped
# (MBR, 512 MiB FAT32 system-boot, 1 GiB of data in 64 x 16 MiB runs across the root partition), declared
# and pinned in a scratch copy of the example lab, plus a seed directory for host iris.
make_base() { # $1 = path
  local b=$1
  truncate -s 4G "$b"
  printf 'label: dos\nstart=2048, size=1048576, type=c, bootable\nstart=1050624, type=83\n' |
    sfdisk -q --no-reread --no-tell-kernel "$b"
  mkfs.vfat -F 32 -n system-boot --offset 2048 "$b" 524288 >/dev/null 2>&1
  local i
  for i in $(seq 0 62); do
    dd if=/dev/urandom of="$b" bs=16M count=1 seek=$((33 + i * 3)) conv=notrunc,fsync status=none
  done
}
make_lab() { # $1 = work dir
  local w=$1
  mkdir -p "$w/lab/images" "$w/seed"
  cp -r "$here/hosts" "$w/lab/hosts"
  make_base "$w/base.img"
  cat >"$w/lab/images/ubuntu-24.04-preinstalled-server-arm64-raspi.toml" <<EOT
description = "benchmark base"
source = "$w/base.img"
sha256 = "$(sha256sum "$w/base.img" | cut -d' ' -f1)"
format = "raw"
arch = "aarch64"
seed = "system-boot"
EOT
  printf '#cloud-config\nhostname: iris\n' >"$w/seed/user-data"
  printf 'instance-id: iris-1\nlocal-hostname: iris\n' >"$w/seed/meta-data"
  printf 'version: 2\nethernets:\n  eth0:\n    dhcp4: true\n' >"$w/seed/network-config"
}

p1_main() {
  [ -x "$LF" ] || { echo "build first: cargo build --release" >&2; exit 2; }
  work=$(mktemp -d "${BENCH_DIR:-/tmp}/labforge-p1.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  make_lab "$work"          # -> $work/lab (example lab + pinned 4 GiB base), $work/seed
  img=$work/iris.img
  "$LF" --spec "$work/lab/hosts" image build iris --seed-dir "$work/seed" --out "$img" >/dev/null
  cat "$img" >/dev/null     # warm the page cache for every contender alike

  now() { date +%s.%N; }
  median() { printf '%s\n' "$@" | sort -n | sed -n "$(( ($# + 1) / 2 ))p"; }
  # Three interleaved rounds (the machine is shared; the median damps the noise).
  L=(); B=(); D=()
  for round in 1 2 3; do
    t0=$(now); "$LF" flash "$img" --to "$work/t-labforge.raw" --allow-file >/dev/null; t1=$(now)
    L+=("$(echo "$t1 - $t0" | bc)"); rm -f "$work/t-labforge.raw"
    t0=$(now); bmaptool -q copy --bmap "$img.bmap" "$img" "$work/t-bmaptool.raw"; t1=$(now)
    B+=("$(echo "$t1 - $t0" | bc)"); rm -f "$work/t-bmaptool.raw"
    t0=$(now); dd if="$img" of="$work/t-dd.raw" bs=4M conv=fsync status=none; sha256sum "$work/t-dd.raw" >/dev/null; t1=$(now)
    D+=("$(echo "$t1 - $t0" | bc)"); rm -f "$work/t-dd.raw"
  done
  lf=$(median "${L[@]}"); bm=$(median "${B[@]}"); dd_=$(median "${D[@]}")
  echo "P1 rounds: labforge ${L[*]} | bmaptool ${B[*]} | dd+sha256sum ${D[*]}"
  mapped=$(grep -o '<MappedBlocksCount> [0-9]*' "$img.bmap" | grep -o '[0-9]*$')
  printf 'P1 image %s bytes, %s%% mapped\n' "$(stat -c %s "$img")" "$(echo "scale=1; $mapped*4096*100/$(stat -c %s "$img")" | bc)"
  printf 'P1 labforge flash (read-back verify): %6.2f s (median of 3)\n' "$lf"
  printf 'P1 bmaptool copy (no read-back):      %6.2f s   ratio labforge/bmaptool = %.2f (goal <= 1.0)\n' "$bm" "$(echo "$lf / $bm" | bc -l)"
  printf 'P1 dd conv=fsync + sha256sum:          %6.2f s   ratio labforge/dd       = %.2f (goal <= 0.35)\n' "$dd_" "$(echo "$lf / $dd_" | bc -l)"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then p1_main; fi
