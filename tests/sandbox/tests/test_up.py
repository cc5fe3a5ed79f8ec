"""`python3 -m bnsandbox.up`: the sandbox bring-up the demo and the end-to-end suite start from,
with the emulator by default and with an existing API server given by kubeconfig."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest
import yaml

from bnsandbox import netns, upstream_dns
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
        # The outside world's DNS server answers every node at its own address, and logs who asked.
        asked = subprocess.run(["ip", "netns", "exec", PREFIX + "node2", "busybox", "nslookup", "-timeout=2",
                                "www.upstream.test", upstream_dns.ADDRESS], capture_output=True, text=True)
        assert asked.returncode == 0 and "Address: 198.51.100.7" in asked.stdout, asked
        queries = (tmp_path / "state" / "upstream-dns.queries").read_text()
        assert " 10.251.0.12:" in queries and " www.upstream.test A NOERROR" in queries, queries
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
    # The upstream DNS server went with it.
    assert subprocess.run(["pgrep", "-f", f"bnsandbox.upstream_dns .*{tmp_path}"]).returncode != 0


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


AGENT = pathlib.Path(os.environ.get("BRIDGENET_BIN_DIR", SANDBOX.parents[1] / "target" / "debug")) / "bridgenet-agent"


def in_node(node, *args, timeout=30):
    return subprocess.run(["ip", "netns", "exec", PREFIX + node, *args], capture_output=True, text=True,
                          timeout=timeout)


def test_an_existing_https_server_on_the_hosts_loopback_is_relayed_into_the_nodes(tmp_path):
    # The "existing" server: the emulator started on its own (not by the sandbox), HTTPS on the
    # host's 127.0.0.1 — which inside a node namespace is the node's own loopback.
    (tmp_path / "existing").mkdir()
    existing = Emulator(tmp_path / "existing", "--tls-dir", str(tmp_path / "existing" / "tls"))
    try:
        assert existing.url.startswith("https://127.0.0.1:")
        proc, kc = bring_up(tmp_path, "--kubeconfig", str(existing.kubeconfig), "--no-runtime")
        agent = None
        try:
            assert kc == str(existing.kubeconfig)  # the host side keeps the original
            node_kc = tmp_path / "state" / "node-kubeconfig"
            assert node_kc.stat().st_mode & 0o077 == 0
            cfg = yaml.safe_load(node_kc.read_text())
            cluster = cfg["clusters"][0]["cluster"]
            assert cluster["server"].startswith("https://10.251.0.1:"), cluster
            assert cluster["tls-server-name"] == "127.0.0.1"
            assert cluster["certificate-authority-data"]  # the CA is kept: verification stays on

            # Directly, the server is out of the nodes' reach ...
            direct = in_node("node1", "kubectl", "--kubeconfig", kc, "get", "nodes", "--request-timeout=5s")
            assert direct.returncode != 0
            # ... through the forwarder, kubectl (Go TLS, CA-verified against the original name) gets it.
            got = in_node("node1", "kubectl", "--kubeconfig", str(node_kc), "get", "nodes", "-o", "name")
            assert got.returncode == 0, got.stderr
            assert got.stdout.split() == ["node/node1", "node/node2"]
            # Verification is real: without tls-server-name the certificate (issued for 127.0.0.1)
            # does not match 10.251.0.1 and is refused.
            del cluster["tls-server-name"]
            bad_kc = tmp_path / "no-server-name"
            bad_kc.write_text(yaml.safe_dump(cfg))
            bad = in_node("node2", "kubectl", "--kubeconfig", str(bad_kc), "get", "nodes", "--request-timeout=5s")
            assert bad.returncode != 0 and "certificate" in bad.stderr, bad.stderr
            # The sandbox's own client (the kubelet stand-in's) honours tls-server-name as well.
            script = ("import asyncio, sys\nfrom bnsandbox.kube import Kube\n"
                      "async def main():\n    async with Kube(sys.argv[1]) as k:\n"
                      "        print(' '.join(n['metadata']['name'] for n in (await k.request('GET', '/api/v1/nodes'))['items']))\n"
                      "asyncio.run(main())\n")
            py = subprocess.run(["ip", "netns", "exec", PREFIX + "node2", sys.executable, "-c", script, str(node_kc)],
                                cwd=SANDBOX, capture_output=True, text=True, timeout=30)
            assert py.returncode == 0 and py.stdout.split() == ["node1", "node2"], py.stderr

            if AGENT.exists():
                # The real agent (kube-rs, rustls) inside node1: ready means it listed its
                # NodeBridges from the server through the forwarder, TLS verified.
                state = tmp_path / "agent"
                log = open(tmp_path / "agent.log", "wb")  # noqa: SIM115 - closed with the process
                agent = subprocess.Popen(
                    ["nsenter", f"--net=/var/run/netns/{PREFIX}node1", str(AGENT), "--node-name", "node1",
                     "--state-dir", str(state / "lib"), "--socket", str(state / "cni.sock"),
                     "--cni-bin-dir", str(state / "bin"), "--cni-conf-dir", str(state / "net.d"),
                     "--cri-endpoint", f"unix://{state / 'no-cri.sock'}", "--health-addr", "10.251.0.11:9091"],
                    env={**os.environ, "KUBECONFIG": str(node_kc)}, stdout=log, stderr=subprocess.STDOUT)
                deadline = time.monotonic() + 30
                while True:
                    ready = in_node("node1", sys.executable, "-c", "import urllib.request; "
                                    "urllib.request.urlopen('http://10.251.0.11:9091/readyz', timeout=2)")
                    if ready.returncode == 0:
                        break
                    assert agent.poll() is None, (tmp_path / "agent.log").read_text()
                    assert time.monotonic() < deadline, (tmp_path / "agent.log").read_text()
                    time.sleep(0.5)
        finally:
            if agent is not None:
                agent.terminate()
                agent.wait(15)
            code, out = shut_down(proc)
        assert code == 0, out
        assert "nodes reach it through the forwarder" in out
        assert kubectl(kc, "get", "nodes", "-o", "name").strip() == ""
        # The forwarder went with the sandbox: nothing listens on the host link's address any more.
        listening = subprocess.run(["ss", "-Htln", "src", netns.HOST_IP], capture_output=True, text=True).stdout
        assert listening.strip() == ""
    finally:
        existing.stop()
