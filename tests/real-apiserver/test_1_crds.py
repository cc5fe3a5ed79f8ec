"""The CRDs as a user installs them: `kubectl apply -f crds/yaml/` on a real API server, which
also estimates every CEL rule's cost (the client-side evaluator of the unit tests does not).
Then every example is accepted and every example in examples/invalid/ refused with the message
its `# expect:` line names."""

from __future__ import annotations

import re
import time

import pytest
import yaml

from conftest import REPO

CRDS = REPO / "crds" / "yaml"
CHART_CRDS = REPO / "charts" / "bridgenet" / "crds"
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
INVALID = sorted((REPO / "examples" / "invalid").glob("*.yaml"))


def no_warnings(res) -> None:
    # e.g. `Warning: unrecognized format "uint32"`: every user would see it on every apply.
    assert "Warning" not in res.stderr, res.stderr


@pytest.mark.parametrize("folder", [CRDS, CHART_CRDS], ids=["crds/yaml", "chart crds"])
def test_crds_install_on_the_real_server(kubectl, folder):
    no_warnings(kubectl("apply", "--dry-run=server", "-f", str(folder)))
    no_warnings(kubectl("apply", "-f", str(folder)))
    kubectl("wait", "--for=condition=Established", "crd/bridgenetworks.bridgenet.io",
            "crd/nodebridges.bridgenet.io", "crd/addressclaims.bridgenet.io",
            "crd/networkoverlays.bridgenet.io", "--timeout=60s")
    # Applying the same again changes nothing (idempotent install / upgrade).
    again = kubectl("apply", "-f", str(folder))
    assert "unchanged" in again.stdout and "configured" not in again.stdout, again.stdout


def test_kubectl_knows_the_kinds(kubectl):
    names = kubectl("api-resources", "--api-group=bridgenet.io", "-o", "name").stdout.split()
    assert sorted(names) == ["addressclaims.bridgenet.io", "bridgenetworks.bridgenet.io",
                             "networkoverlays.bridgenet.io", "nodebridges.bridgenet.io"]
    # The server publishes a new CRD's OpenAPI a moment after it is Established.
    deadline = time.monotonic() + 60
    while (explained := kubectl("explain", "bridgenetwork.spec.subnet", check=False)).returncode != 0:
        assert time.monotonic() < deadline, explained.stderr
        time.sleep(1)
    assert "--subnet" in explained.stdout, explained.stdout


def test_an_address_claim_names_an_address_and_keeps_it(kubectl):
    def claim(address: str) -> str:
        return yaml.safe_dump({
            "apiVersion": "bridgenet.io/v1alpha1", "kind": "AddressClaim",
            "metadata": {"name": "real-claim-test"},
            "spec": {"network": "claim-net", "address": address, "node": "node1",
                     "pod": {"namespace": "default", "name": "p", "uid": "u"}},
        })

    bad = kubectl("apply", "-f", "-", stdin=claim("300.1.1.1"), check=False)
    assert bad.returncode != 0 and "address must be an IP address" in bad.stderr, bad.stderr
    kubectl("apply", "-f", "-", stdin=claim("172.41.0.77"))
    try:
        moved = kubectl("apply", "-f", "-", stdin=claim("172.41.0.78"), check=False)
        assert moved.returncode != 0 and "address is immutable" in moved.stderr, moved.stderr
        table = kubectl("get", "bnac", "real-claim-test").stdout.splitlines()
        assert table[0].split() == ["NAME", "NETWORK", "ADDRESS", "NAMESPACE", "POD", "NODE", "PHASE", "AGE"]
    finally:
        kubectl("delete", "addressclaim", "real-claim-test", "--wait=true")


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_every_example_is_accepted(kubectl, path):
    no_warnings(kubectl("apply", "--dry-run=server", "-f", str(path)))


def test_examples_apply_for_real_and_delete(kubectl):
    networks = [p for p in EXAMPLES
                if all(d and d.get("kind") == "BridgeNetwork" for d in yaml.safe_load_all(p.read_text()))]
    assert networks, "no BridgeNetwork-only example"
    for path in networks:
        no_warnings(kubectl("apply", "-f", str(path)))
    listed = kubectl("get", "bridgenetworks", "-o", "name").stdout
    for path in networks:
        for doc in yaml.safe_load_all(path.read_text()):
            assert f"bridgenetwork.bridgenet.io/{doc['metadata']['name']}" in listed, listed
    # No operator runs here, so no finalizer holds them.
    for path in networks:
        kubectl("delete", "-f", str(path), "--timeout=60s")


@pytest.mark.parametrize("path", INVALID, ids=[p.name for p in INVALID])
def test_every_invalid_example_is_refused_with_its_message(kubectl, path):
    expected = re.search(r"^# expect: (.+)$", path.read_text(), re.M)
    assert expected, f"{path.name} has no `# expect:` line"
    want = expected.group(1).strip()
    if want.startswith("/"):
        # A JSON pointer: an OpenAPI bound, which the server reports on that field's path.
        want = want.strip("/").replace("/", ".") + ": "
    for mode in (["--dry-run=server"], []):
        res = kubectl("apply", *mode, "-f", str(path), check=False)
        assert res.returncode != 0, f"{path.name} was accepted ({mode})"
        assert want in res.stderr, res.stderr
