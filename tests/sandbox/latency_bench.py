"""What a user waits for, timed in the two-node sandbox with the real operator and agents:

- a new BridgeNetwork Ready on every node, from the create call's answer to `Ready=True` with
  every node counted;
- hot attach (`docker network connect`): from the pod's annotation patch to the new interface
  being up with its address inside the pod and announced (the node has learned the address
  at the interface's MAC from its gratuitous ARP: the bench lets the bridge accept those);
- hot detach (`docker network disconnect`): from the patch to the interface being gone;
- N pods asking for a network, from the first create to every one of them Ready;
- the first node's agent's memory with 1,000 endpoints on 50 networks (50 pods on 20 networks
  each), once every endpoint is reported.

Every figure is read off the outside (the API and the pod's network namespace, polled every
5 ms), as a user would see it, never off the agents' own timings. Root (network namespaces,
containerd). Usage, from tests/sandbox:

    python3 latency_bench.py [--bin-dir ../../target/release] [--rounds 10] [--pods 30]
"""

from __future__ import annotations

import argparse
import asyncio
import pathlib
import re
import statistics
import subprocess
import sys
import tempfile
import time

SANDBOX = pathlib.Path(__file__).resolve().parent
REPO = SANDBOX.parents[1]
sys.path.insert(0, str(SANDBOX))

from bnsandbox import images, kube, podexec, up  # noqa: E402

PREFIX = "bnt-sb-bench-"
NETS = "/apis/bridgenet.io/v1alpha1/bridgenetworks"
PODS = "/api/v1/namespaces/default/pods"
POLL = 0.005
TIMEOUT = 60.0


class Timeout(RuntimeError):
    pass


async def until(pred, what: str) -> float:
    """Seconds until `pred()` (async) is truthy, polling every POLL; fails after TIMEOUT."""
    started = time.monotonic()
    while not await pred():
        if time.monotonic() - started > TIMEOUT:
            raise Timeout(f"timed out after {TIMEOUT:.0f} s waiting for {what}")
        await asyncio.sleep(POLL)
    return time.monotonic() - started


def network(name: str, subnet: str) -> dict:
    return {"apiVersion": "bridgenet.io/v1alpha1", "kind": "BridgeNetwork", "metadata": {"name": name},
            "spec": {"subnet": subnet}}


def pod(name: str, networks: str, node: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "annotations": {"bridgenet.io/networks": networks}},
            "spec": {"nodeSelector": {"kubernetes.io/hostname": node}, "terminationGracePeriodSeconds": 1,
                     "containers": [{"name": "main", "image": "busybox:1.36",
                                     "command": ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]}]}}


def ready(obj: dict) -> bool:
    conds = (obj.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)


async def network_ready(k: kube.Kube, name: str, nodes: int) -> bool:
    try:
        net = await k.request("GET", f"{NETS}/{name}")
    except kube.KubeError:
        return False
    return ready(net) and (net.get("status") or {}).get("readyNodes") == nodes


def summary(label: str, samples: list[float]) -> str:
    ms = sorted(s * 1000 for s in samples)
    p50 = statistics.median(ms)
    return f"| {label} | {len(ms)} | {p50:.0f} ms | {ms[-1]:.0f} ms | {ms[0]:.0f} ms |"


class Bench:
    def __init__(self, sb: up.Sandbox, k: kube.Kube, nodes: list[str]) -> None:
        self.sb, self.k, self.nodes = sb, k, nodes
        self.busybox = str(images.find_static_busybox())

    async def networks(self, rounds: int) -> list[float]:
        times = []
        for r in range(rounds):
            name = f"bench-net-{r}"
            await self.k.request("POST", NETS, network(name, f"172.61.{r}.0/24"))
            times.append(await until(lambda: network_ready(self.k, name, len(self.nodes)), f"{name} Ready"))
        return times

    def ip(self, netns: str, *args: str) -> str:
        return subprocess.run(["nsenter", f"--net={netns}", self.busybox, "ip", "-o", *args],
                              capture_output=True, text=True).stdout

    def announced(self, netns: str, ifname: str, node_netns: str, bridge: str) -> bool:
        """Whether `ifname` is up (administratively and its carrier) with an IPv4 address, and
        the node has that address at the interface's MAC on `bridge` (from its gratuitous ARP:
        the pod sends nothing else)."""
        addr = re.search(r" inet ([0-9.]+)/", self.ip(netns, "addr", "show", "dev", ifname))
        link = self.ip(netns, "link", "show", "dev", ifname)
        flags = re.search(r"<([^>]*)>", link)
        mac = re.search(r"link/ether ([0-9a-f:]+)", link)
        if not (addr and flags and mac and {"UP", "LOWER_UP"} <= set(flags.group(1).split(","))):
            return False
        neigh = self.ip(node_netns, "neigh", "show", addr.group(1), "dev", bridge)
        return f"lladdr {mac.group(1)}" in neigh

    def gone(self, netns: str, ifname: str) -> bool:
        return subprocess.run(["nsenter", f"--net={netns}", self.busybox, "ip", "link", "show", "dev", ifname],
                              capture_output=True).returncode != 0

    async def annotate(self, name: str, value: str) -> None:
        await self.k.request("PATCH", f"{PODS}/{name}",
                             {"metadata": {"annotations": {"bridgenet.io/networks": value}}},
                             content_type="application/merge-patch+json")

    async def hotplug(self, rounds: int) -> tuple[list[float], list[float]]:
        name = "bench-hot"
        await self.k.request("POST", PODS, pod(name, "bench-net-0", self.nodes[0]))
        await until(lambda: self.pod_ready(name), f"{name} Ready")
        netns = await asyncio.to_thread(podexec.pod_netns, self.sb.state, "default", name)
        node = self.sb.topo.node(self.nodes[0])
        node_netns = f"/run/netns/{node.netns}"
        bridge = (await self.k.request("GET", f"{NETS}/bench-net-1"))["status"]["bridge"]
        # The node learns a neighbour from a gratuitous ARP only where the interface accepts them.
        node.exec("sysctl", "-qw", f"net.ipv4.conf.{bridge}.arp_accept=1")
        attach, detach = [], []
        for r in range(rounds):
            await self.annotate(name, "bench-net-0,bench-net-1")
            attach.append(await until(
                lambda: asyncio.to_thread(self.announced, netns, "net2", node_netns, bridge),
                f"net2 with its address in {name}, announced (round {r})"))
            await self.annotate(name, "bench-net-0")
            detach.append(await until(lambda: asyncio.to_thread(self.gone, netns, "net2"),
                                      f"net2 gone from {name} (round {r})"))
        await self.k.request("DELETE", f"{PODS}/{name}")
        return attach, detach

    async def pod_ready(self, name: str) -> bool:
        try:
            return ready(await self.k.request("GET", f"{PODS}/{name}"))
        except kube.KubeError:
            return False

    async def many(self, count: int) -> float:
        names = [f"bench-many-{i}" for i in range(count)]
        started = time.monotonic()
        for i, name in enumerate(names):
            await self.k.request("POST", PODS, pod(name, "bench-net-0", self.nodes[i % len(self.nodes)]))

        async def all_ready() -> bool:
            items = (await self.k.request("GET", PODS))["items"]
            return sum(1 for p in items if p["metadata"]["name"] in names and ready(p)) == count

        await until(all_ready, f"{count} pods Ready")
        elapsed = time.monotonic() - started
        for name in names:
            await self.k.request("DELETE", f"{PODS}/{name}")
        return elapsed


    async def rss(self, networks: int, pods: int, per_pod: int) -> tuple[int, dict[str, int]]:
        """The agent of the first node with `pods` pods there, each on `per_pod` of `networks`
        new networks (pods × per_pod endpoints in all): endpoints reported, and its VmRSS and
        VmHWM in KiB once every pod is Ready and its NodeBridges report them."""
        names = [f"bench-rss-{i}" for i in range(networks)]
        for i, name in enumerate(names):
            await self.k.request("POST", NETS, network(name, f"172.62.{i}.0/24"))
        for name in names:
            await until(lambda name=name: network_ready(self.k, name, len(self.nodes)), f"{name} Ready")
        pod_names = [f"bench-rss-{i}" for i in range(pods)]
        for i, name in enumerate(pod_names):
            wanted = ",".join(names[(i + j) % networks] for j in range(per_pod))
            await self.k.request("POST", PODS, pod(name, wanted, self.nodes[0]))

        async def all_ready() -> bool:
            items = (await self.k.request("GET", PODS))["items"]
            return sum(1 for p in items if p["metadata"]["name"] in pod_names and ready(p)) == pods

        await until(all_ready, f"{pods} pods on {per_pod} networks each Ready")

        async def reported() -> int:
            items = (await self.k.request("GET", "/apis/bridgenet.io/v1alpha1/nodebridges"))["items"]
            return sum((nb.get("status") or {}).get("endpointCount", 0) for nb in items
                       if nb["spec"]["node"] == self.nodes[0] and nb["spec"]["network"] in names)

        await until(lambda: _at_least(reported(), pods * per_pod), "every endpoint reported")
        endpoints = await reported()
        # A few report passes with everything attached, then the agent's memory as it stays.
        await asyncio.sleep(3)
        agent = next(p for n, p in self.sb.procs if n == f"agent/{self.nodes[0]}")
        status = pathlib.Path(f"/proc/{agent.pid}/status").read_text()
        memory = {line.split(":")[0]: int(line.split()[1]) for line in status.splitlines()
                  if line.startswith(("VmRSS:", "VmHWM:"))}
        for name in pod_names:
            await self.k.request("DELETE", f"{PODS}/{name}")
        return endpoints, memory


async def _at_least(value, target: int) -> bool:
    return await value >= target


async def measure(sb: up.Sandbox, args) -> list[str]:
    nodes = [n.name for n in sb.topo.nodes]
    async with kube.Kube(str(sb.kubeconfig)) as k:
        b = Bench(sb, k, nodes)
        nets = await b.networks(args.rounds)
        attach, detach = await b.hotplug(args.rounds)
        many = await b.many(args.pods)
        endpoints, memory = await b.rss(args.rss_networks, args.rss_pods, args.rss_per_pod)
    return [
        "| what | samples | p50 | max | min |",
        "|---|---|---|---|---|",
        summary(f"network created → Ready on all {len(nodes)} nodes", nets),
        summary("hot attach: annotation patched → interface up with its address, announced", attach),
        summary("hot detach: annotation patched → interface gone", detach),
        f"| {args.pods} pods created → all Ready | 1 | {many * 1000:.0f} ms | | |",
        "",
        f"agent of {nodes[0]} with {endpoints} endpoints on {args.rss_networks} networks "
        f"({args.rss_pods} pods, {args.rss_per_pod} networks each): "
        f"VmRSS {memory.get('VmRSS', 0) / 1024:.1f} MiB, peak (VmHWM) {memory.get('VmHWM', 0) / 1024:.1f} MiB",
    ]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bin-dir", type=pathlib.Path, default=REPO / "target" / "release")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--pods", type=int, default=30)
    p.add_argument("--rss-networks", type=int, default=50)
    p.add_argument("--rss-pods", type=int, default=50)
    p.add_argument("--rss-per-pod", type=int, default=20)
    args = p.parse_args()
    for binary in ("bridgenet-operator", "bridgenet-agent", "bridgenet"):
        if not (args.bin_dir / binary).exists():
            print(f"latency-bench: {args.bin_dir / binary} is missing (cargo build --release)", file=sys.stderr)
            return 1
    with tempfile.TemporaryDirectory(prefix="bnt-bench-") as state:
        with up.Sandbox(2, pathlib.Path(state), prefix=PREFIX, bin_dir=args.bin_dir, log=lambda m: None) as sb:
            try:
                lines = asyncio.run(measure(sb, args))
            except Timeout as e:
                for log in sorted(pathlib.Path(state).glob("*/agent.log")) + [pathlib.Path(state) / "operator.log"]:
                    tail = log.read_text(errors="replace").splitlines()[-15:] if log.exists() else []
                    print(f"--- {log.relative_to(state)}", *tail, sep="\n", file=sys.stderr)
                print(f"latency-bench: {e}", file=sys.stderr)
                return 1
    print(f"latency in the two-node sandbox ({args.bin_dir.name} build)")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
