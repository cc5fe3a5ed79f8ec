#!/usr/bin/env bash
# The kind end-to-end suite: `make kind-e2e`. Creates a kind cluster (1 control plane,
# 2 workers), builds and loads the images, installs the chart, runs `helm test`, applies
# examples/ and runs the user stories (tests/e2e/kind/test_user_stories.py). Needs kind, a working docker engine,
# kubectl and python3 with tests/chart/requirements.txt; skips with one line where they are
# missing. KEEP_CLUSTER=1 leaves the cluster up for inspection.
set -euo pipefail
cd "$(dirname "$0")/../../.."

skip() { echo "kind-e2e: SKIPPED: $*"; exit 0; }
command -v kind >/dev/null || skip "no kind binary on PATH"
command -v docker >/dev/null || skip "no docker client on PATH"
docker info >/dev/null 2>&1 || skip "docker client present but no docker engine answers (docker info failed)"
command -v kubectl >/dev/null || skip "no kubectl on PATH"

exec python3 -m pytest -v -p no:cacheprovider tests/e2e/kind "$@"
