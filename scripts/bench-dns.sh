#!/usr/bin/env bash
# DNS answers of bridgenet's network resolver next to dnsmasq, in one run: latency p50/p99 of one
# client for local and forwarded names, queries per second of 16 concurrent clients with the
# server's CPU per query, and RSS with no names, 1,000 and 10,000 pods. Loopback only; no root
# needed except to install dnsmasq. Usage: scripts/bench-dns.sh [SECONDS of throughput, default 3]
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v dnsmasq >/dev/null && [ ! -x /usr/sbin/dnsmasq ]; then
    if [ "$(id -u)" = 0 ]; then
        echo "bench-dns: installing dnsmasq-base (the reference)" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends dnsmasq-base >/dev/null
    else
        echo "bench-dns: needs dnsmasq (apt-get install dnsmasq-base, or make setup)" >&2
        exit 1
    fi
fi
BNT_BENCH_DNS_SECONDS="${1:-3}" exec cargo bench -q -p bridgenet-agent --bench dns
