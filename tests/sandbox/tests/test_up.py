"""`python3 -m bnsandbox.up`: the sandbox bring-up the demo and the end-to-end suite start from,
with the emulator by default and with an existing API server given by kubeconfig."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from bnsandbox import netns
from conftest import SANDBOX, Emulator, requires_kubectl

PREFIX = "bnt-sb-test-up-"

pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"), requires_kubectl]


def bring_up(tmp_path, *extra):
    ready = tmp_path / "ready"
    proc = subprocess.Popen(
        [sys.executable, "-m", "bnsandbox.up", "--nodes", "2", "--prefix", PREFIX, "--state-dir", str(tmp_path / "state"),
         "--ready-file", str(ready), *extra],
        cwd=SANDBOX, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    deadline = time.monotonic() + 60
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"sandbox did not come up:\n{proc.stdout.read()}")
        time.sleep(0.1)
    return proc, ready.read_text().strip()


def kubectl(kubeconfig, *args):
    res = subprocess.run(["kubectl", "--kubeconfig", kubeconfig, *args], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    return res.stdout


def shut_down(proc):
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    return proc.returncode, out


def test_up_with_the_emulator_then_down(tmp_path):
    proc, kc = bring_up(tmp_path, "--emulator")
    try:
        nodes = json.loads(kubectl(kc, "get", "nodes", "-o", "json"))["items"]
        assert {n["metadata"]["name"] for n in nodes} == {"node1", "node2"}
        assert "bridgenetworks.bridgenet.io" in kubectl(kc, "get", "crd", "-o", "name")
        assert sorted(n for n in netns.list_netns() if n.startswith(PREFIX)) == [
            PREFIX + "internet", PREFIX + "node1", PREFIX + "node2", PREFIX + "underlay"]
        # The API server answers on the host's underlay address, where node agents reach it.
        assert "server: http://10.251.0.1:" in open(kc).read()
        # A Pod for node2 is scheduled there and runs through the kubelet stand-in and containerd.
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "default"},
               "spec": {"nodeSelector": {"kubernetes.io/hostname": "node2"},
                        "containers": [{"name": "c", "image": "busybox:1.36", "command": ["sleep", "3600"]}]}}
        subprocess.run(["kubectl", "--kubeconfig", kc, "apply", "-f", "-"], input=json.dumps(pod), text=True,
                       check=True, capture_output=True)
        kubectl(kc, "wait", "--for=condition=Ready", "pod/p", "--timeout=60s")
        got = json.loads(kubectl(kc, "get", "pod", "p", "-o", "json"))
        assert got["spec"]["nodeName"] == "node2"
        ip = got["status"]["podIP"]
        assert ip.startswith("10.250.2.")
        ping = subprocess.run(["ip", "netns", "exec", PREFIX + "node2", "busybox", "ping", "-c", "1", "-W", "1", ip],
                              capture_output=True)
        assert ping.returncode == 0
        # podexec runs in the Pod's own network namespace: it sees the Pod's address on eth0.
        inside = subprocess.run([sys.executable, "-m", "bnsandbox.podexec", "--state-dir", str(tmp_path / "state"),
                                 "p", "--", "ip", "-4", "-o", "addr", "show", "eth0"],
                                cwd=SANDBOX, capture_output=True, text=True)
        assert inside.returncode == 0 and f"inet {ip}/24" in inside.stdout, inside
    finally:
        code, out = shut_down(proc)
    assert code == 0, out
    assert "sandbox down" in out
    assert not [n for n in netns.list_netns() if n.startswith(PREFIX)]


def test_up_against_an_existing_api_server_unregisters_its_nodes(tmp_path):
    existing = Emulator(tmp_path / "existing") if (tmp_path / "existing").mkdir() is None else None
    try:
        proc, kc = bring_up(tmp_path, "--kubeconfig", str(existing.kubeconfig), "--no-runtime")
        try:
            assert kc == str(existing.kubeconfig)
            assert kubectl(kc, "get", "nodes", "-o", "name").split() == ["node/node1", "node/node2"]
        finally:
            code, out = shut_down(proc)
        assert code == 0, out
        assert kubectl(kc, "get", "nodes", "-o", "name").strip() == ""
    finally:
        existing.stop()
