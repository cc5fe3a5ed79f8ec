#!/usr/bin/env bash
# Installs what bridgenet's build, demo and tests need on a fresh Debian machine. Idempotent:
# every step checks before it installs, so `make test` on a prepared machine starts at once.
set -euo pipefail

# Debian packages, by who needs them; gathered into one `apt-get install` so a fresh machine
# pays for one `apt-get update`.
APT_PACKAGES=(
    # node agent data plane and its root tests
    iproute2 nftables
    # pod attachment (node-agent CNI/IPAM): protoc builds the CRI gRPC stubs (k8s-cri); iptables
    # is what the reference bridge plugin's ipMasq needs in scripts/bench-cni.sh
    protobuf-compiler iptables util-linux
    # tests/sandbox nodes: a private containerd per node namespace, runc, the reference CNI
    # plugins (loopback in every node's bin_dir) and a static busybox for the offline images
    containerd runc containernetworking-plugins busybox-static
    # chart tests and images (tests/chart, images/build.sh): podman builds the FROM-scratch
    # images offline; busybox-static goes into the agent image
    podman
    # scripts/bench-dns.sh (make bench-dns): dnsmasq is the reference the resolver is measured
    # against
    dnsmasq-base
)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    echo "setup: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if command -v rustup >/dev/null; then
    rustup component add rustfmt clippy >/dev/null 2>&1 || true
fi

# tests/sandbox: the Kubernetes API emulator and its pytest suite (versions pinned).
SANDBOX_PIP=(aiohttp==3.14.5 pytest==9.2.0 jsonschema==4.26.0 PyYAML==6.0.3 jsonpatch==1.33 grpcio==1.85.1)
if ! python3 -c 'import aiohttp, pytest, jsonschema, yaml, jsonpatch, grpc' 2>/dev/null \
    || [ "$(python3 -c 'import aiohttp; print(aiohttp.__version__)' 2>/dev/null)" != "3.14.5" ]; then
    echo "setup: pip installing ${SANDBOX_PIP[*]}"
    python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore "${SANDBOX_PIP[@]}"
fi
command -v kubectl >/dev/null || echo "setup: kubectl not found: the sandbox's kubectl tests will be skipped" >&2

# Chart tests: Helm's SDK + offline Kubernetes schemas render and validate the chart (versions
# pinned in tests/chart/requirements.txt).
CHART_REQS="$(dirname "$0")/../tests/chart/requirements.txt"
if ! python3 - "$CHART_REQS" <<'PY' 2>/dev/null
import sys
from importlib.metadata import version
for line in open(sys.argv[1]):
    line = line.split("#")[0].strip()
    if line:
        name, want = line.split("==")
        if version(name) != want:
            sys.exit(1)
PY
then
    echo "setup: pip installing tests/chart/requirements.txt"
    python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore -r "$CHART_REQS"
fi
