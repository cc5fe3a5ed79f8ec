# The two commands a newcomer needs:
#   make demo   — the main job on an embedded default (see README)
#   make test   — every test suite (what CI runs)
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: upgrade-test scale-bench cni-test bench-cni bench-dns dataplane-test bench-dataplane demo test setup lint unit root-test crds-check sandbox-test images chart-test kind-e2e real-apiserver-test soak

## Install what building and testing need on a fresh Debian machine (idempotent).
setup:
	bash scripts/setup.sh

## The main job on an embedded default.
demo: setup
	bash scripts/demo.sh

## Everything CI checks: formatting, lints, generated CRDs, unit and root tests.
test: setup lint crds-check unit root-test sandbox-test sandbox-e2e upgrade-test chart-test real-apiserver-test
	$(MAKE) soak SOAK_SECONDS=120

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

crds-check:
	$(CARGO) run -q --locked -p bridgenet-crds --bin crdgen -- --check

## Every test that needs neither root nor a cluster (the root tests are `#[ignore = "needs root"]`).
unit:
	$(CARGO) test --workspace --locked

## Exactly the root tests (network namespaces, netlink, nftables, containerd): every ignored test
## but the real API server's, which real-apiserver-test runs. They fail without root, and
## BRIDGENET_REQUIRE_TOOLS=1 makes a missing containerd a failure instead of a skip.
root-test: setup
	BRIDGENET_REQUIRE_TOOLS=1 $(CARGO) test --workspace --locked -- --ignored --skip real_server::

## The sandbox's Kubernetes API emulator and node plumbing, driven by real kubectl and raw HTTP.
## The kubectl plugin is built first: its tests run `kubectl bridgenet` against the emulator, and
## BRIDGENET_REQUIRE_PLUGIN=1 makes a missing binary a failure instead of a skip.
sandbox-test:
	$(CARGO) build --locked -p bridgenet-kubectl
	cd tests/sandbox && BRIDGENET_REQUIRE_PLUGIN=1 python3 -m pytest -q

## The Docker story end to end on a two-node sandbox with the real operator, agents and plugin.
sandbox-e2e: setup
	$(CARGO) build --workspace --locked
	cd tests/sandbox && python3 -m pytest -q e2e

## An upgrade in the two-node sandbox, pods pinging across it throughout: UPGRADE_FROM's CRDs,
## operator and agents (built from this clone's history by scripts/build-upgrade-from.sh), then
## this tree's CRDs, operator and agents one node at a time (tests/sandbox/upgrade).
## UPGRADE_FROM: the last commit whose NodeBridges carry the operator's peer lists.
UPGRADE_FROM ?= 097243d
upgrade-test: setup
	$(CARGO) build --workspace --locked
	from=$$(bash scripts/build-upgrade-from.sh $(UPGRADE_FROM)) && cd tests/sandbox && \
	BRIDGENET_UPGRADE_FROM=$$from BRIDGENET_REQUIRE_UPGRADE=1 python3 -m pytest -q -p no:cacheprovider upgrade

## What the cluster's size costs the API server: SCALE_NODES fake nodes × SCALE_NETWORKS networks
## with the release operator, on the emulator or, with SCALE_KUBECONFIG, a real API server
## (tests/sandbox/scale_bench.py; figures in README).
SCALE_NODES ?= 1000
SCALE_NETWORKS ?= 10
scale-bench: setup
	$(CARGO) build --release --locked -p bridgenet-operator
	cd tests/sandbox && python3 scale_bench.py --nodes $(SCALE_NODES) --networks $(SCALE_NETWORKS) \
	  $(if $(SCALE_KUBECONFIG),--kubeconfig $(abspath $(SCALE_KUBECONFIG)))

## Container images bridgenet/operator:<version> and bridgenet/agent:<version>, built offline
## with podman from the host's release binaries (see images/build.sh).
images:
	bash images/build.sh

## The Helm chart: render/lint/schema-validate with Helm's SDK, RBAC vs api-calls.yaml vs the
## sources, and the images built above run once (--version/--help, install-cni).
chart-test: images
	BRIDGENET_REQUIRE_IMAGES=1 python3 -m pytest -q -p no:cacheprovider tests/chart

## The fault soak (tests/sandbox/soak): pods on two networks across two nodes ping each other
## while faults are injected for SOAK_SECONDS; then duplicates, leaks, missing results,
## isolation violations and per-fault losses and repair times.
SOAK_SECONDS ?= 600
soak: setup
	$(CARGO) build --workspace --locked
	cd tests/sandbox && SOAK_SECONDS=$(SOAK_SECONDS) python3 -m pytest -q -s -p no:cacheprovider soak

## bridgenet on a real control plane (tests/real-apiserver): needs KUBE_APISERVER,
## KUBE_CONTROLLER_MANAGER and ETCD (binary paths); prints SKIPPED without them (as in CI).
real-apiserver-test: setup
	bash scripts/real-apiserver-test.sh

## The kind end-to-end suite (needs kind + a docker engine; skips with the reason elsewhere).
kind-e2e: setup
	bash tests/e2e/kind/run.sh

## The node agent's data plane alone: plan/apply unit tests (also in `unit`) and its root tests
## in network namespaces (also in `root-test`; as root).
dataplane-test:
	$(CARGO) test --locked -p bridgenet-agent --lib dataplane -- --include-ignored
	$(CARGO) test --locked -p bridgenet-agent --lib nodebridge
	$(CARGO) test --locked -p bridgenet-agent --test dataplane --test dataplane_agent -- --include-ignored

## Data plane timings and the agent's RSS with 50 networks (root; figures in README).
bench-dataplane:
	$(CARGO) bench -p bridgenet-agent --bench dataplane --bench dataplane_rss

## Pod attachment alone: CNI types/IPAM/install unit tests (also in `unit`), then as root the
## plugin exec tests, the crash tests (agent killed at every step of a call, and of an ADD up to
## its report), repair of pods' links deleted by hand, and containerd's CRI path with hot-plug
## (also in `root-test`).
cni-test:
	$(CARGO) test --locked -p bridgenet-agent --lib -- cni ipam
	$(CARGO) test --locked -p bridgenet-agent --test cni_plugin --test cni_sysctl --test cni_crash --test cni_report_crash --test pod_repair --test cni_containerd -- --include-ignored

## CNI latency at 200 and 1,000 pods next to the reference bridge+host-local chain, agent and
## plugin RSS, then network Ready, hot attach/detach, pods Ready and the agent's memory with 1,000
## endpoints on 50 networks in the two-node sandbox (root; about 15 minutes).
bench-cni:
	bash scripts/bench-cni.sh

## The network resolver's DNS latency, queries per second and RSS next to dnsmasq (installs
## dnsmasq-base when run as root; figures in README).
bench-dns:
	bash scripts/bench-dns.sh
