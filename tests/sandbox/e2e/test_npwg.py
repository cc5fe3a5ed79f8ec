"""The Network Plumbing Working Group's status convention (issue 17): what Multus-aware tools read
in a pod's `k8s.v1.cni.cncf.io/network-status`.

Chained after the primary network, the agent writes an entry per bridgenet interface there, named
`bridgenet.io/<network>`, beside whatever others wrote — the sandbox's primary (the reference
bridge plugin) writes nothing there, so the "others" are written here with kubectl, before the
pod starts and while it runs — and keeps theirs byte for byte through attach, detach and resyncs.

As a Multus delegate (a NetworkAttachmentDefinition's `{"type": "bridgenet", "network": ...}`)
there is no Multus binary in the sandbox: the test runs the `bridgenet` plugin the way Multus
does, inside the node's namespace with the CNI environment for the pod's sandbox, and writes the
status Multus would write from the result. The agent must leave that annotation to Multus and
only say when it disagrees with the node."""

import json
import os
import subprocess
import time

from conftest import eventually, unique

from bnsandbox import podexec

NPWG = "k8s.v1.cni.cncf.io/network-status"
SELECTION = "k8s.v1.cni.cncf.io/networks"
# The agents' --resync-interval in the sandbox (the default): hot-plug looks at every pod this
# often, the status writer every second.
RESYNC = 10.0


def annotations(cluster, pod: str) -> dict[str, str]:
    return cluster.get("pod", pod)["metadata"].get("annotations") or {}


def shared(cluster, pod: str) -> tuple[str | None, str]:
    """The pod's NPWG status annotation as stored (text), and the pod's resourceVersion."""
    meta = cluster.get("pod", pod)["metadata"]
    return (meta.get("annotations") or {}).get(NPWG), meta["resourceVersion"]


def entries(cluster, pod: str) -> list[dict]:
    raw = shared(cluster, pod)[0]
    return json.loads(raw) if raw else []


def bridgenet_entries(cluster, pod: str) -> dict[str, dict]:
    return {e["name"]: e for e in entries(cluster, pod) if e["name"].startswith("bridgenet.io/")}


def write_shared(cluster, pod: str, change) -> str:
    """Another writer that merges: reads the annotation, writes `change(text)` onto the version it
    read (`kubectl annotate --resource-version`), again on a conflict. Returns what it wrote."""
    for _ in range(5):
        text, rv = shared(cluster, pod)
        new = change(text)
        res = cluster.kubectl("annotate", "--overwrite", f"--resource-version={rv}", "pod", pod, f"{NPWG}={new}",
                              check=False)
        if res.returncode == 0:
            return new
        assert "conflict" in res.stderr.lower() or "modified" in res.stderr.lower(), res.stderr
    raise AssertionError(f"{pod}: five conflicts in a row writing {NPWG}")


def steady(cluster, pod: str, seconds: float) -> tuple[str | None, str]:
    """Waits `seconds` and asserts nobody wrote the pod meanwhile (the API server keeps the
    resourceVersion on a write that changes nothing, so any real write shows)."""
    before = shared(cluster, pod)
    time.sleep(seconds)
    after = shared(cluster, pod)
    assert after == before, f"{pod} was written while steady: {before} -> {after}"
    return after


def test_chained_entries_go_beside_others_through_attach_detach_and_resyncs(cluster):
    a, b = unique("npa"), unique("npb")
    cluster.network(a, "172.16.0.0/24")
    cluster.network(b, "172.16.1.0/24")
    p = unique("np")
    # An entry someone else wrote before the pod started, in a formatting of its own (Multus'
    # MarshalIndent), for an interface bridgenet knows nothing of.
    other = json.dumps({"name": "team/sriov-nad", "interface": "net9", "ips": ["192.0.2.9/24"],
                        "mac": "02:11:22:33:44:55", "default": False, "dns": {}}, indent=4)
    cluster.pod(p, a, node="node2", annotations={NPWG: f"[{other}]"})
    cluster.wait_ready(p)
    ip = cluster.ip(p, a)
    own = cluster.attachments(p)[a]

    mine = eventually(lambda: bridgenet_entries(cluster, p).get(f"bridgenet.io/{a}"), what="bridgenet's entry")
    assert mine == {"name": f"bridgenet.io/{a}", "interface": own["interface"], "ips": [ip], "mac": own["mac"],
                    "default": False, "dns": {"nameservers": ["172.16.0.1"]}, "io.bridgenet.network": a}
    raw = shared(cluster, p)[0]
    assert raw.startswith(f"[{other},"), raw

    # The primary network's entry, added by a writer that merges properly, in front of the list.
    primary = json.dumps({"name": "cbr0", "interface": "eth0", "ips": ["10.250.2.9"], "default": True})
    write_shared(cluster, p, lambda text: f"[{primary}, {text.strip()[1:]}")
    # Steady: nothing to write over a hot-plug resync and ten report passes.
    raw, _ = steady(cluster, p, RESYNC + 2)
    assert raw.index(primary) < raw.index(other) < raw.index(f'"bridgenet.io/{a}"'), raw

    def others_kept(text: str) -> bool:
        return text.startswith(f"[{primary}, {other},") or text.startswith(f"[{primary},{other},")

    # Hot attach: the new entry goes after the others'; theirs and the first one stay.
    cluster.kubectl("annotate", "--overwrite", "pod", p, f"bridgenet.io/networks={a},{b}")
    both = eventually(lambda: (lambda e: e if len(e) == 2 else None)(bridgenet_entries(cluster, p)),
                      what="both networks' entries")
    assert both[f"bridgenet.io/{b}"]["ips"] == [cluster.ip(p, b)]
    assert both[f"bridgenet.io/{b}"]["interface"] == cluster.attachments(p)[b]["interface"]
    raw = shared(cluster, p)[0]
    assert others_kept(raw), raw
    assert raw.index(f'"bridgenet.io/{a}"') < raw.index(f'"bridgenet.io/{b}"'), raw

    # Hot detach: only its entry goes.
    cluster.kubectl("annotate", "--overwrite", "pod", p, f"bridgenet.io/networks={b}")
    eventually(lambda: list(bridgenet_entries(cluster, p)) == [f"bridgenet.io/{b}"], what="a's entry removed")
    assert others_kept(shared(cluster, p)[0])

    # A writer that does not merge drops bridgenet's entry: the next pass puts it back.
    cluster.kubectl("annotate", "--overwrite", "pod", p, f"{NPWG}=[{primary},{other}]")
    eventually(lambda: list(bridgenet_entries(cluster, p)) == [f"bridgenet.io/{b}"], what="b's entry restored")
    assert shared(cluster, p)[0].startswith(f"[{primary},{other},")

    # Everything detached: the others' entries are all that is left, exactly as they wrote them.
    cluster.kubectl("annotate", "pod", p, "bridgenet.io/networks-")
    eventually(lambda: shared(cluster, p)[0] == f"[{primary},{other}]", what="only the others' entries")
    eventually(lambda: not cluster.attachments(p), what="bridgenet.io/network-status emptied")
    steady(cluster, p, 3)


def delegate(cluster, node: str, command: str, conf: dict, pod: str, sandbox: str, netns: str, uid: str,
             ifname: str = "net5") -> subprocess.CompletedProcess:
    """The `bridgenet` plugin run as Multus runs a delegate: inside the node's network namespace,
    the NetworkAttachmentDefinition's config on stdin, the pod's sandbox in the CNI environment."""
    ctr = next(c for c in cluster.sb.runtimes if c.node.name == node)
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "CNI_COMMAND": command,
           "CNI_CONTAINERID": sandbox, "CNI_NETNS": netns, "CNI_IFNAME": ifname, "CNI_PATH": str(ctr.cni_bin),
           "CNI_ARGS": f"IgnoreUnknown=true;K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod};"
                       f"K8S_POD_INFRA_CONTAINER_ID={sandbox};K8S_POD_UID={uid}"}
    netns_path = f"/var/run/netns/{cluster.sb.topo.node(node).netns}"
    return subprocess.run(["nsenter", f"--net={netns_path}", str(ctr.cni_bin / "bridgenet")],
                          input=json.dumps(conf), env=env, capture_output=True, text=True, timeout=60)


def mismatch_events(cluster, pod: str) -> list[dict]:
    events = json.loads(cluster.kubectl("get", "events", "--field-selector", f"involvedObject.name={pod}",
                                        "-o", "json").stdout)["items"]
    return [e for e in events if e.get("reason") == "NetworkStatusMismatch"]


def test_delegate_config_end_to_end_with_the_status_left_to_multus(cluster):
    net = unique("deleg")
    cluster.network(net, "172.16.2.0/24")
    nad = f"{net}-nad"
    p, peer = unique("mp"), unique("mpeer")
    # The pod selects the NAD as a Multus user would; bridgenet.io/networks is not involved.
    cluster.pod(p, None, node="node1", annotations={SELECTION: nad})
    cluster.pod(peer, net, node="node1")
    cluster.wait_ready(p, peer)
    peer_ip = cluster.ip(peer, net)
    sandbox = podexec.sandbox_id(cluster.state, "default", p)
    netns = podexec.pod_netns(cluster.state, "default", p)
    uid = cluster.get("pod", p)["metadata"]["uid"]
    ctr = next(c for c in cluster.sb.runtimes if c.node.name == "node1")
    # The NAD's config; the socket only because the sandbox's agents listen off the default path.
    conf = {"cniVersion": "1.0.0", "name": nad, "type": "bridgenet", "network": net,
            "socket": str(ctr.sock_dir / "cni.sock")}

    add = delegate(cluster, "node1", "ADD", conf, p, sandbox, netns, uid)
    assert add.returncode == 0, add.stdout + add.stderr
    result = json.loads(add.stdout)
    assert result["cniVersion"] == "1.0.0"
    [iface] = result["interfaces"]
    assert (iface["name"], iface["sandbox"]) == ("net5", netns), result
    [addr] = result["ips"]
    ip, prefix = addr["address"].split("/")
    assert ip.startswith("172.16.2.") and prefix == "24" and addr["gateway"] == "172.16.2.1", result
    assert addr["interface"] == 0, result
    assert result["dns"] == {"nameservers": ["172.16.2.1"]}, result
    shown = cluster.exec(p, "ip", "addr", "show", "net5")
    assert shown.returncode == 0 and ip in shown.stdout and iface["mac"] in shown.stdout, shown.stdout + shown.stderr
    assert cluster.ping(p, peer_ip), "the delegate's interface reaches a pod of its network"
    assert cluster.ping(p, "172.16.2.1"), "and its gateway"
    check = delegate(cluster, "node1", "CHECK", {**conf, "prevResult": result}, p, sandbox, netns, uid)
    assert check.returncode == 0, check.stdout + check.stderr

    # bridgenet's own annotation shows it; the shared one is Multus's to write: not written.
    eventually(lambda: cluster.attachments(p).get(net, {}).get("interface") == "net5", what="network-status")
    assert NPWG not in annotations(cluster, p)

    # What Multus writes after the ADD: the default network's entry and the delegate's, from the
    # CNI result, under the NAD's name.
    multus = [{"name": "cbr0", "interface": "eth0", "ips": ["10.250.1.9"], "default": True, "dns": {}},
              {"name": f"default/{nad}", "interface": "net5", "ips": [ip], "mac": iface["mac"], "default": False,
               "dns": result["dns"]}]
    text = json.dumps(multus, indent=4)
    cluster.kubectl("annotate", "--overwrite", "pod", p, f"{NPWG}={text}")
    # Over a hot-plug resync and many report passes: nobody writes the pod, the interface stays
    # (hot-plug does not take it for a network the annotation dropped), nothing to complain of.
    steady(cluster, p, RESYNC + 3)
    assert shared(cluster, p)[0] == text
    assert cluster.exec(p, "ip", "link", "show", "net5").returncode == 0, "hot-plug removed the delegate's interface"
    assert not mismatch_events(cluster, p)

    # Multus' entry disagreeing with the node: a Warning Event, and still no write.
    wrong = text.replace(f'"{ip}"', '"172.16.2.250"')
    cluster.kubectl("annotate", "--overwrite", "pod", p, f"{NPWG}={wrong}")
    events = eventually(lambda: mismatch_events(cluster, p), what="a NetworkStatusMismatch Event")
    assert events[0]["type"] == "Warning" and "net5" in events[0]["message"], events
    assert shared(cluster, p)[0] == wrong

    # DEL as Multus sends it, then again (a repeated DEL succeeds).
    for _ in range(2):
        gone = delegate(cluster, "node1", "DEL", {**conf, "prevResult": result}, p, sandbox, netns, uid)
        assert gone.returncode == 0, gone.stdout + gone.stderr
    eventually(lambda: cluster.exec(p, "ip", "link", "show", "net5").returncode != 0, what="net5 removed")
    eventually(lambda: net not in cluster.attachments(p), what="the detach reported")
    assert shared(cluster, p)[0] == wrong, "the agent never wrote Multus' annotation"
    assert cluster.ping(peer, "172.16.2.1"), "the network still serves its other pods"
