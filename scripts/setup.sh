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

if command -v rustup >/dev/null; then
    rustup component add rustfmt clippy >/dev/null 2>&1 || true
fi
