#!/usr/bin/env bash
# Benchmark P3: `labforge verify` of 50 real sshd hosts (network namespaces) vs Ansible (-f 50) running the
# same remote probe commands on the same hosts, in one run: as one shell task per probe command (the goal's
# comparison), as labforge's batched script via `raw`, and `raw: true`. Needs root. Prints wall times,
# ratios and CPU seconds (machine, labforge, the hosts). Takes about 2 minutes.
#   bash benches/p3_verify.sh            (P3_HOSTS=50 by default)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
[ "$(id -u)" = 0 ] || { echo "P3 needs root (network namespaces)" >&2; exit 2; }
venv="$here/.venv"
if [ ! -x "$venv/bin/ansible-playbook" ]; then
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check ansible-core
fi
"$venv/bin/ansible-playbook" --version > /tmp/p3-ansible-version.txt; echo "ansible: $(head -1 /tmp/p3-ansible-version.txt)"
export P3_ANSIBLE="$venv/bin/ansible-playbook"
export P3_HOSTS="${P3_HOSTS:-50}"
# Release build: the numbers are for the binary an operator runs.
nice cargo test --release --test verify_bench -- --ignored --nocapture --test-threads=1 2>&1 | grep -E '^(P3|lab of|test |thread|  left|  right|goal)' || true
