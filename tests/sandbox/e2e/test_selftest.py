"""`helm test`'s check, run for real: the built `bridgenet-operator self-test` on the host
against the sandbox (as the sandbox runs the operator itself), with the busybox image the
suite's pods use. It must pass, print a line per check, and leave nothing of its own behind;
and a run whose second network overlaps the first must fail, saying why, and clean up too."""

from __future__ import annotations

import os
import subprocess

from conftest import BIN_DIR

SELFTEST_LABEL = "bridgenet.io/self-test"


def self_test(cluster, *flags: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "KUBECONFIG": str(cluster.sb.kubeconfig)}
    env.pop("POD_NAMESPACE", None)
    return subprocess.run([str(BIN_DIR / "bridgenet-operator"), "self-test", "--namespace", "default",
                           "--image", "busybox:1.36", "--timeout", "120", *flags],
                          capture_output=True, text=True, env=env, timeout=400)


def leftovers(cluster) -> list[str]:
    pods = cluster.get("pods", "-A", "-l", SELFTEST_LABEL)["items"]
    nets = cluster.get("bridgenetworks", "-l", SELFTEST_LABEL)["items"]
    return [f"{o['kind']} {o['metadata']['name']}" for o in pods + nets]


def test_self_test_passes_and_leaves_nothing(cluster):
    res = self_test(cluster)
    out = res.stdout + res.stderr
    print(out)  # `pytest -rP` shows the run
    assert res.returncode == 0, out
    for check in ("PASS networks:", "PASS attach:", "PASS ping:", "across nodes", "PASS isolation:", "PASS cleanup:"):
        assert check in res.stdout, f"no {check!r} in:\n{out}"
    assert "FAIL" not in res.stdout, out
    assert leftovers(cluster) == []


def test_a_refused_network_fails_the_self_test_clearly(cluster):
    res = self_test(cluster, "--subnet", "172.31.250.0/24", "--isolation-subnet", "172.31.250.0/25")
    out = res.stdout + res.stderr
    print(out)  # `pytest -rP` shows the run
    assert res.returncode == 1, out
    assert "FAIL" in res.stdout and "refused: SubnetOverlap" in res.stdout, out
    assert "PASS cleanup:" in res.stdout, out
    assert leftovers(cluster) == []
