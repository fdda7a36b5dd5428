#!/usr/bin/env bash
# Benchmark: `labforge check` (and plan, render --check) on a generated 1,000-host spec, against the peer
# baseline of parsing the same TOML with Python's tomllib (no validation at all). Prints times and ratios.
# Goal (issue 2): check ≤ 1 s including rendering.   Usage: bash benches/check_1000.sh [HOSTS]
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-1000}
cargo build --release --quiet
bin=$PWD/target/release/labforge
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/hosts"
python3 - "$work/hosts" "$n" <<'PY'
import sys
d, n = sys.argv[1], int(sys.argv[2])
key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMq6g46zwcO7W4DJfo086reA7Odhd/6F/VM/xA+b3l5T ops@ws"
site = f'''[site]
name = "bench"
domain = "bench.example.net"
timezone = "UTC"
[[site.admins]]
name = "ops"
ssh_keys = ["{key}"]
[networks.mgmt]
vlan = 99
cidr = "10.99.0.0/16"
gateway = "10.99.0.1"
role = "management"
[networks.servers]
vlan = 60
cidr = "10.60.0.0/16"
gateway = "10.60.0.1"
role = "servers"
[secrets.pw]
source = "store"
generate = "password"
[roles.worker]
packages = ["htop", "tmux", "curl"]
[stacks.agent]
[stacks.agent.networks.agent]
[stacks.agent.services.agent]
image = "portainer/agent:2.39.2@sha256:dc0e8285f8b4c105c3237f1cc0022f92dd265c53ced5f53b9ce7c9741144e879"
platforms = ["linux/amd64", "linux/arm64"]
networks = ["agent"]
ports = [{{ host = 9001, network = "servers" }}]
[stacks.web]
volumes = ["data"]
[stacks.web.networks.front]
[stacks.web.services.app]
image = "nginx:1.27.3@sha256:0a399eb16751829e1af26fea27b20c3ec28d7ab1fb72182879dcae1cca21206a"
platforms = ["linux/amd64", "linux/arm64"]
networks = ["front"]
volumes = ["data:/data"]
ports = [{{ host = 8080, container = 80, network = "servers" }}]
expose = [9113]
metrics = {{ port = 9113 }}
environment = {{ PW = "secret:pw" }}
'''
open(f"{d}/site.toml", "w").write(site)
for chunk in range(0, n, 100):
    out = []
    for i in range(chunk, min(n, chunk + 100)):
        a, b = divmod(i + 10, 250)
        os_ = "nixos" if i % 3 == 0 else ("debian" if i % 3 == 1 else "ubuntu")
        arch = "aarch64" if i % 5 == 0 else "x86_64"
        board = "rpi4" if arch == "aarch64" else "generic-uefi"
        out.append(f'''[hosts.node{i:04d}]
os = "{os_}"
arch = "{arch}"
board = "{board}"
role = "worker"
stacks = ["agent", "web"]
[hosts.node{i:04d}.interfaces.eth0]
mac = "52:54:{i >> 8 & 255:02x}:{i & 255:02x}:00:01"
network = "mgmt"
address = "10.99.{a}.{b + 2}"
[hosts.node{i:04d}.interfaces.eth1]
mac = "52:54:{i >> 8 & 255:02x}:{i & 255:02x}:00:02"
network = "servers"
address = "10.60.{a}.{b + 2}"
''')
    open(f"{d}/hosts-{chunk:04d}.toml", "w").write("\n".join(out))
PY
files=$(ls "$work/hosts" | wc -l)
bytes=$(cat "$work"/hosts/*.toml | wc -c)
echo "spec: $n hosts in $files files, $bytes bytes"

ms() { local s e; s=$(date +%s%N); "$@" >/dev/null 2>&1 || { echo "FAILED: $*" >&2; "$@" >&2; exit 1; }; e=$(date +%s%N); echo $(( (e - s) / 1000000 )); }
best() { local b=999999 t; for _ in 1 2 3 4 5; do t=$(ms "$@"); [ "$t" -lt "$b" ] && b=$t; done; echo "$b"; }

peer=$(best python3 -c 'import sys,tomllib,pathlib; [tomllib.loads(p.read_text()) for p in sorted(pathlib.Path(sys.argv[1]).glob("*.toml"))]' "$work/hosts")
check=$(best "$bin" --spec "$work/hosts" check)
plan=$(best "$bin" --spec "$work/hosts" plan --json)
export LABFORGE_AGE_IDENTITY="$work/identity.txt"
"$bin" --spec "$work/hosts" secrets init >/dev/null 2>&1
render_first=$(ms "$bin" --spec "$work/hosts" render --out "$work")
render=$(best "$bin" --spec "$work/hosts" render --out "$work")
rendered=$(find "$work" -path "$work/hosts" -prune -o -type f -print | wc -l)
rss=$( { /usr/bin/time -f '%M' "$bin" --spec "$work/hosts" check >/dev/null; } 2>&1 | tail -1 || true)
printf '%-40s %6s ms\n' "python tomllib parse (peer)" "$peer" "labforge check" "$check" "labforge plan --json" "$plan" "labforge render (first: $rendered files)" "$render_first" "labforge render (re-render, unchanged)" "$render"
awk -v c="$check" -v p="$peer" -v r="$render_first" 'BEGIN { printf "ratio check / tomllib-parse: %.2fx\ncheck + first render: %d ms (goal <= 1000 ms)\n", c / p, c + r }'
echo "peak RSS of check: ${rss} KiB"
