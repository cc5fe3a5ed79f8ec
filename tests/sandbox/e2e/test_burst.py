"""A burst of pods on one node: the agent's NodeBridge status (its endpoint list) is written about
once a second while they attach, whatever their rate, and ends with every one of them listed."""

import json
import subprocess
import time

from conftest import eventually, unique

PODS = 16


def _documents(text: str) -> list[dict]:
    """The JSON documents `kubectl get --watch -o json` printed one after another."""
    decoder, docs, i = json.JSONDecoder(), [], 0
    while True:
        while i < len(text) and text[i].isspace():
            i += 1
        if i >= len(text):
            return docs
        doc, i = decoder.raw_decode(text, i)
        docs.append(doc)


def test_status_writes_are_coalesced_under_a_burst(cluster):
    net = unique("burst")
    cluster.network(net, "172.46.0.0/24")
    name = f"{net}.node1"

    def ready():
        nbs = [nb for nb in cluster.node_bridges({net}) if nb["spec"]["node"] == "node1"]
        return nbs and any(c["type"] == "Ready" and c["status"] == "True"
                           for c in (nbs[0].get("status") or {}).get("conditions") or [])

    eventually(ready, what=f"NodeBridge {name} Ready")
    watch = subprocess.Popen([*cluster.sb.kubectl, "get", "nodebridge", name, "--watch", "--output-watch-events",
                              "-o", "json"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        time.sleep(1)
        started = time.monotonic()
        pods = [unique(f"b{i}") for i in range(PODS)]
        for pod in pods:
            cluster.pod(pod, net, node="node1")

        def listed():
            nbs = [nb for nb in cluster.node_bridges({net}) if nb["spec"]["node"] == "node1"]
            return nbs and len((nbs[0].get("status") or {}).get("endpoints") or []) == PODS

        eventually(listed, 120, f"all {PODS} endpoints listed")
        burst = time.monotonic() - started
        time.sleep(2)
    finally:
        watch.terminate()
        out, _ = watch.communicate(timeout=15)
    writes = [e for e in _documents(out) if e.get("type") == "MODIFIED"]
    # Each write carries the full status: the last one lists every pod (no result lost), and
    # together they are far fewer than the pods, at most about one per second of the burst.
    final = writes[-1]["object"]["status"]
    assert sorted(e["pod"] for e in final["endpoints"]) == sorted(pods)
    assert len(writes) < PODS, f"{len(writes)} status writes for {PODS} pods attached in {burst:.1f} s"
    assert len(writes) <= burst + 3, f"{len(writes)} status writes in a {burst:.1f} s burst"
    print(f"{PODS} pods attached in {burst:.1f} s with {len(writes)} status writes")
    cluster.kubectl("delete", "pod", *pods, "--timeout=120s")
    cluster.kubectl("delete", "bridgenetwork", net, "--timeout=60s")
