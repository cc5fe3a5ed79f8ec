# The two commands a newcomer needs:
#   make demo   — the main job on an embedded default (see README)
#   make test   — every test suite (what CI runs)
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: demo test setup lint unit crds-check sandbox-test

## Install what building and testing need on a fresh Debian machine (idempotent).
setup:
	bash scripts/setup.sh

## The main job on an embedded default.
demo: setup
	bash scripts/demo.sh

## Everything CI checks: formatting, lints, generated CRDs, unit and root tests.
test: setup lint crds-check unit sandbox-test

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

crds-check:
	$(CARGO) run -q --locked -p bridgenet-crds --bin crdgen -- --check

unit:
	$(CARGO) test --workspace --locked

## The sandbox's Kubernetes API emulator and node plumbing, driven by real kubectl and raw HTTP.
sandbox-test:
	cd tests/sandbox && python3 -m pytest -q

## The Docker story end to end on a two-node sandbox with the real operator, agents and plugin.
sandbox-e2e: setup
	$(CARGO) build --workspace --locked
	cd tests/sandbox && python3 -m pytest -q e2e
