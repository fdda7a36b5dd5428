#!/usr/bin/env bash
# P5: peak RSS of labforge image build (4 GiB base) and labforge flash (4 GiB image, read-back verify),
# measured with /usr/bin/time -v; bmaptool copy alongside for scale. Goal: <= 64 MiB each.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$here/benches/p1_flash.sh"
rss() { grep 'Maximum resident set size' "$1" | grep -o '[0-9]*$'; }
p5_main() {
  [ -x "$LF" ] || { echo "build first: cargo build --release" >&2; exit 2; }
  work=$(mktemp -d "${BENCH_DIR:-/tmp}/labforge-p5.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  make_lab "$work"
  /usr/bin/time -v -o "$work/build.time" "$LF" --spec "$work/lab/hosts" image build iris --seed-dir "$work/seed" --out "$work/iris.img" >/dev/null
  /usr/bin/time -v -o "$work/flash.time" "$LF" flash "$work/iris.img" --to "$work/t.raw" --allow-file >/dev/null
  rm -f "$work/t.raw"
  /usr/bin/time -v -o "$work/bmap.time" bmaptool -q copy --bmap "$work/iris.img.bmap" "$work/iris.img" "$work/t2.raw"
  b=$(rss "$work/build.time"); f=$(rss "$work/flash.time"); m=$(rss "$work/bmap.time")
  printf 'P5 peak RSS labforge image build: %6.1f MiB (goal <= 64)\n' "$(echo "$b/1024" | bc -l)"
  printf 'P5 peak RSS labforge flash:       %6.1f MiB (goal <= 64)\n' "$(echo "$f/1024" | bc -l)"
  printf 'P5 peak RSS bmaptool copy:        %6.1f MiB (for scale)\n' "$(echo "$m/1024" | bc -l)"
}
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then p5_main; fi
