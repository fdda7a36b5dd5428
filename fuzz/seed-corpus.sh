#!/usr/bin/env bash
# Seed the fuzz corpus with the example lab: all of hosts/ joined into one input (0xFF between files),
# and each file alone.
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p corpus/spec_loader
i=0
for f in ../hosts/*.toml ../hosts/stacks/*.toml ../tests/fixtures/bad-specs/*.toml; do
  [ -f "$f" ] || continue
  cp "$f" "corpus/spec_loader/seed-$i"; i=$((i+1))
done
{ cat ../hosts/site.toml; printf '\xff'; cat ../hosts/prometheus.toml ../hosts/atlas.toml; printf '\xff'; cat ../hosts/stacks/*.toml ../hosts/domum.toml ../hosts/pis.toml ../hosts/hermes.toml ../hosts/platform.toml ../hosts/forge.toml; } > corpus/spec_loader/seed-all
echo "seeded $((i+1)) inputs"
