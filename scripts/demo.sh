#!/usr/bin/env bash
# The main job on an embedded default. Until the local sandbox cluster lands (issue 7), this is
# the smallest real thing: build everything and print the CRDs a cluster would install, with an
# example network validated by the same CEL rules the API server runs.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --workspace --locked
cargo run -q --locked -p bridgenet-crds --bin crdgen -- --check
echo "== kubectl get crds (what bridgenet installs)"
grep -h '^  name:' crds/yaml/*.yaml
