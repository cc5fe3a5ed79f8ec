#!/usr/bin/env bash
# Installs what bridgenet's build, demo and tests need on a fresh Debian machine. Idempotent:
# every step checks before it installs, so `make test` on a prepared machine starts at once.
set -euo pipefail

APT_PACKAGES=(iproute2 nftables)

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

# Pod attachment (node-agent CNI/IPAM): protoc builds the CRI gRPC stubs (k8s-cri); iptables is
# what the reference bridge plugin's ipMasq needs in scripts/bench-cni.sh. containerd, runc, the
# reference plugins and busybox-static (the CNI tests' runtime and ping) come with the sandbox's.
CNI_APT=(protobuf-compiler iptables util-linux)
cni_missing=()
for pkg in "${CNI_APT[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || cni_missing+=("$pkg")
done
if ((${#cni_missing[@]})); then
    echo "setup: installing ${cni_missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${cni_missing[@]}" >/dev/null
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
# tests/sandbox nodes: a private containerd per node namespace, runc, the reference CNI plugins
# (loopback in every node's bin_dir) and a static busybox for the offline images.
SANDBOX_APT=(containerd runc containernetworking-plugins busybox-static)
sandbox_missing=()
for pkg in "${SANDBOX_APT[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || sandbox_missing+=("$pkg")
done
if ((${#sandbox_missing[@]})); then
    echo "setup: installing ${sandbox_missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${sandbox_missing[@]}" >/dev/null
fi

# Chart tests and images (tests/chart, images/build.sh): podman builds the FROM-scratch images
# offline, busybox-static goes into the agent image, Helm's SDK + offline Kubernetes schemas
# render and validate the chart (versions pinned in tests/chart/requirements.txt).
CHART_APT=(podman runc busybox-static)
chart_missing=()
for pkg in "${CHART_APT[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || chart_missing+=("$pkg")
done
if ((${#chart_missing[@]})); then
    echo "setup: installing ${chart_missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${chart_missing[@]}" >/dev/null
fi
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
