"""The kubelet stand-in on a sandbox node: a Pod bound to the node runs through CRI (sandbox +
busybox container, primary network from the reference bridge plugin), reports Ready with its IP,
answers ping from the node, gets the resolv.conf its dnsPolicy/dnsConfig ask for (seen from inside
its container through podexec), and is removed when deleted; a sandbox that cannot be created
gives the Pod a FailedCreatePodSandBox Event. Needs root and containerd."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from bnsandbox import containerd, cri, images, netns
from conftest import SANDBOX, requires_kubectl, wait_for

PREFIX = "bnt-sb-test-kl-"

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="containerd needs root"),
    pytest.mark.skipif(shutil.which("containerd") is None, reason="containerd is not installed (scripts/setup.sh)"),
    requires_kubectl,
]


def pod(name, node, ns, **spec):
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns},
            "spec": {"nodeName": node, "containers": [{"name": "main", "image": "busybox:1.36",
                                                        "command": ["sleep", "3600"]}], **spec}}


DNS = {"dnsPolicy": "None", "dnsConfig": {"nameservers": ["172.20.0.1"], "searches": ["ns1.svc.cluster.local",
                                                                                       "cluster.local"],
                                          "options": [{"name": "ndots", "value": "5"}]}}


def podexec(state, *args):
    return subprocess.run([sys.executable, "-m", "bnsandbox.podexec", "--state-dir", str(state), *args],
                          cwd=SANDBOX, capture_output=True, text=True, timeout=30)


def test_pods_bound_to_the_node_run_report_and_go(emulator, tmp_path):
    ns = "kl-" + os.urandom(3).hex()
    emulator.kubectl("create", "namespace", ns)
    with netns.Topology(["k1"], prefix=PREFIX) as topo:
        node = topo.nodes[0]
        ctr = containerd.Containerd(node, tmp_path / "k1")
        kubelet = None
        try:
            ctr.start()
            ctr.import_images(images.build_archive(tmp_path / "images.tar"))
            conf = ctr.primary_network("10.250.1.0/24")
            kubelet = subprocess.Popen(
                [sys.executable, "-m", "bnsandbox.kubelet", "--node-name", "k1", "--node-ip", node.ip,
                 "--kubeconfig", str(emulator.kubeconfig), "--cri-endpoint", ctr.endpoint,
                 "--log-dir", str(tmp_path / "k1" / "pods"), "--resync", "1"],
                cwd=SANDBOX, stdout=open(tmp_path / "kubelet.log", "w"), stderr=subprocess.STDOUT)
            emulator.kubectl("apply", "-f", "-", input=json.dumps(pod("web", "k1", ns, **DNS)))
            emulator.kubectl("wait", "-n", ns, "--for=condition=Ready", "pod/web", "--timeout=60s")
            got = json.loads(emulator.kubectl("get", "-n", ns, "pod", "web", "-o", "json").stdout)
            ip = got["status"]["podIP"]
            assert ip.startswith("10.250.1.") and got["status"]["hostIP"] == node.ip
            assert got["status"]["containerStatuses"][0]["state"].get("running") is not None
            assert node.exec("busybox", "ping", "-c", "1", "-W", "1", ip, check=False).returncode == 0
            runtime = cri.RuntimeClient(ctr.endpoint)
            [sandbox] = runtime.list_pod_sandbox({"bnsandbox.io/pod-uid": got["metadata"]["uid"]})
            assert (sandbox.meta.name, sandbox.meta.namespace) == ("web", ns)
            # The runtime wrote the Pod's dnsConfig; its container sees it, podexec's default
            # (the host's busybox in the pod's netns only) sees the host's file.
            inside = podexec(tmp_path, "-n", ns, "--in-container", "web", "--", "cat", "/etc/resolv.conf")
            assert inside.returncode == 0, inside.stderr
            assert inside.stdout.split("\n")[:3] == ["search ns1.svc.cluster.local cluster.local",
                                                      "nameserver 172.20.0.1", "options ndots:5"], inside.stdout
            assert podexec(tmp_path, "-n", ns, "-c", "main", "web", "--", "cat", "/etc/hostname").stdout == "web\n"
            host = podexec(tmp_path, "-n", ns, "web", "--", "cat", "/etc/resolv.conf")
            assert host.stdout == open("/etc/resolv.conf").read()

            emulator.kubectl("delete", "-n", ns, "pod", "web")
            wait_for(lambda: not runtime.list_pod_sandbox({"bnsandbox.io/node": "k1"}), timeout=30,
                     what="the sandbox to be removed")
            assert node.exec("busybox", "ping", "-c", "1", "-W", "1", ip, check=False).returncode != 0

            # A primary network that cannot work: the Pod gets an Event saying why.
            broken = json.loads(conf.read_text())
            broken["plugins"][0]["type"] = "no-such-plugin"
            conf.write_text(json.dumps(broken))
            emulator.kubectl("apply", "-f", "-", input=json.dumps(pod("broken", "k1", ns)))
            wait_for(lambda: "FailedCreatePodSandBox" in emulator.kubectl(
                "get", "events", "-n", ns, "--field-selector", "involvedObject.name=broken").stdout,
                timeout=30, what="a FailedCreatePodSandBox event")
            desc = emulator.kubectl("describe", "-n", ns, "pod", "broken").stdout
            assert "no-such-plugin" in desc
            # Retries bump one Event's count instead of adding Events.
            wait_for(lambda: [e.get("count") for e in json.loads(emulator.kubectl(
                "get", "events", "-n", ns, "--field-selector", "involvedObject.name=broken", "-o", "json").stdout
            )["items"]] in ([2], [3], [4]), timeout=30, what="the event count to grow")
            runtime.close()
        finally:
            if kubelet is not None:
                kubelet.terminate()
                kubelet.wait(10)
            ctr.stop()
    emulator.kubectl("delete", "namespace", ns, "--wait=false")
