"""Docker-like embedded DNS per network (issue 12), as a user checks it: busybox `nslookup` in
pods, asking their network's gateway — the agent's resolver, on every node at the same address.

What the resolver promises: `<pod>` (same namespace), `<pod>.<namespace>` and every alias (any
namespace) of the network answer with the pod's addresses on that network, a shared alias with
all of them; PTR of an attached address names `<pod>.<namespace>`; a single-label name the network
does not know is NXDOMAIN (nothing leaks from other networks); other names go upstream (the
sandbox's `bnsandbox.upstream_dns`); a deleted or detached pod stops resolving within about a
second on every node; `dns: false` means no resolver at all.

One set of networks and pods serves the module (pods start in parallel; the whole module takes
about half a minute). Lookups are run with `nsenter` from a command line resolved once per pod,
so polling every 0.1 s measures the resolver, not a Python start-up.

busybox 1.35's nslookup (Debian's), which these tests parse: without `-type` it sends A and AAAA
(a PTR query for an address); `-timeout=N` bounds the wait (default 5 s, resent halfway); given no
server it reads /etc/resolv.conf, and a name without a dot is then asked only with each `search`
domain appended — never bare, whatever `ndots` says — while a name with a dot (or ending in one)
is asked as it is; with a server argument there is no search at all. The header's `Address:` has
a tab and the server's port, an answer's `Address: IP` a space; NXDOMAIN prints `** server can't
find NAME: NXDOMAIN` and exits 1; no reply at all prints `;; connection timed out; no servers could
be reached` and exits 1 (at once when the port is closed: the ICMP error fails its write).
"""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess
import time
from dataclasses import dataclass, field

import pytest

from conftest import eventually, unique

from bnsandbox import upstream_dns

SUBNET, OTHER_SUBNET, NODNS_SUBNET = "172.20.0.0/24", "172.20.1.0/24", "172.20.2.0/24"
DUAL_SUBNET, DUAL_SUBNET6 = "172.20.3.0/24", "fd00:20:3::/64"
# The contract: a deleted or detached pod's name stops resolving within about a second.
GONE_WITHIN = 2.0
POLL = 0.1
# Once the resolver answers at all, how long a lookup may take to show what is expected: records
# follow attach within about a second; this leaves room for a loaded 2-core CI machine.
RECORDS_WITHIN = 3.0
# How long the module waits for the resolver to answer at all before its tests run (each test
# then makes a single attempt per lookup if it never did: no answer is no answer).
RESOLVER_WITHIN = 10.0
# Pods that ask for aliases (or IPv6), and hot attach: an agent that does not know `aliases`
# refuses the annotation (its parser is strict), and such a pod never becomes Ready or attached.
# The tests that need them wait this long, once, then fail naming the pod's Warning events.
ATTACH_WITHIN = 20.0


def first_host(subnet: str) -> str:
    """The gateway BridgeNetwork defaults to: the subnet's first host address."""
    return str(next(ipaddress.ip_network(subnet).hosts()))


@dataclass
class Lookup:
    """One busybox nslookup run, parsed."""

    what: str
    rc: int
    out: str
    err: str
    took: float

    @property
    def replied(self) -> bool:
        # busybox prints the server block when the first reply arrives.
        return "Server:" in self.out

    @property
    def addresses(self) -> set[str]:
        return set(re.findall(r"^Address: (\S+)$", self.out, re.M))

    @property
    def names(self) -> set[str]:
        """PTR answers, without the trailing dot."""
        return {n.rstrip(".") for n in re.findall(r"\tname = (\S+)$", self.out, re.M)}

    @property
    def rcodes(self) -> list[str]:
        return re.findall(r"^\*\* server can't find \S+: (\w+)$", self.out, re.M)

    @property
    def nxdomain(self) -> bool:
        return bool(self.rcodes) and set(self.rcodes) == {"NXDOMAIN"} and not self.addresses

    def __str__(self) -> str:
        text = " | ".join(line for line in (self.out + self.err).splitlines() if line.strip())
        return f"`{self.what}` (exit {self.rc}, {self.took:.2f} s): {text or 'no output'}"


class Asker:
    """A pod that runs nslookup: in its network namespace with the host's busybox, or in its
    container (its /etc/resolv.conf) with `container=True`."""

    def __init__(self, cluster, pod: str, namespace: str = "default", container: bool = False) -> None:
        self.pod, self.namespace = pod, namespace
        self.argv = cluster.exec_argv(pod, namespace=namespace, container=container)

    def lookup(self, name: str, server: str | None = None, qtype: str | None = None, timeout: int = 1) -> Lookup:
        args = ["nslookup", f"-timeout={timeout}", *([f"-type={qtype}"] if qtype else []), name,
                *([server] if server else [])]
        started = time.monotonic()
        res = subprocess.run([*self.argv, *args], capture_output=True, text=True, timeout=timeout * 3 + 10)
        return Lookup(f"{self.pod}$ {' '.join(args)}", res.returncode, res.stdout, res.stderr,
                      time.monotonic() - started)


@dataclass
class World:
    cluster: object
    net: str
    other: str
    dual: str
    ns2: str
    gw: str
    other_gw: str
    pods: dict[str, str] = field(default_factory=dict)
    ips: dict[str, str] = field(default_factory=dict)
    # Whether the resolver answered during setup, and pods' readiness failures (by pod).
    resolver_seen: bool = False
    not_ready: dict[str, str] = field(default_factory=dict)
    askers: dict[tuple, Asker] = field(default_factory=dict)
    created: list[tuple[str, str]] = field(default_factory=list)

    def asker(self, role: str, container: bool = False) -> Asker:
        key = (role, container)
        if key not in self.askers:
            self.askers[key] = Asker(self.cluster, self.pods[role], self.namespace(role), container)
        return self.askers[key]

    def namespace(self, role: str) -> str:
        return self.ns2 if role == "x1" else "default"

    def patience(self) -> float:
        return RECORDS_WITHIN if self.resolver_seen else 0.0

    def ready(self, *roles: str) -> None:
        """Waits (once per pod, for the whole module) until the pods are Ready; fails naming
        their Warning Events — e.g. the agent refusing their annotation — if they are not."""
        for role in roles:
            if role in self.not_ready:
                continue
            pod = self.pods[role]
            res = self.cluster.kubectl("wait", "-n", self.namespace(role), "--for=condition=Ready", f"pod/{pod}",
                                       f"--timeout={ATTACH_WITHIN:.0f}s", check=False)
            self.not_ready[role] = "" if res.returncode == 0 else (
                f"pod {pod} not Ready within {ATTACH_WITHIN:.0f} s; its Warning events: "
                f"{warnings(self.cluster, pod, self.namespace(role))}")
        failed = [self.not_ready[r] for r in roles if self.not_ready[r]]
        assert not failed, "; ".join(failed)


def warnings(cluster, pod: str, namespace: str = "default") -> list[str]:
    events = json.loads(cluster.kubectl("get", "events", "-n", namespace, "--field-selector",
                                        f"involvedObject.name={pod}", "-o", "json").stdout)["items"]
    return [f"{e.get('reason')}: {e.get('message')}" for e in events if e.get("type") == "Warning"]


def resolves(world: World, role: str, name: str, expect: set[str], server: str | None = None,
             container: bool = False) -> Lookup:
    """Asks until the answer holds exactly the `expect`ed addresses (a bounded wait: records may
    lag the pod by a moment), and fails with the last answer otherwise."""
    asker = world.asker(role, container)
    server = world.gw if server is None and not container else server
    deadline = time.monotonic() + world.patience()
    while True:
        got = asker.lookup(name, server)
        if got.addresses == expect or time.monotonic() > deadline:
            break
        time.sleep(POLL)
    assert got.addresses == expect, f"{name} should be {sorted(expect)}: {got}"
    return got


def nxdomain(world: World, role: str, name: str, server: str | None = None) -> Lookup:
    asker = world.asker(role)
    deadline = time.monotonic() + world.patience()
    while True:
        got = asker.lookup(name, server or world.gw)
        if got.nxdomain or time.monotonic() > deadline:
            break
        time.sleep(POLL)
    assert got.nxdomain, f"{name} should be NXDOMAIN: {got}"
    return got


def json_networks(net: str, aliases: list[str]) -> list[dict]:
    return [{"name": net, "aliases": aliases}]


@pytest.fixture(scope="module")
def world(cluster):
    net, other, dual, ns2 = unique("dns"), unique("dns-other"), unique("dns-dual"), unique("dns-ns")
    w = World(cluster, net, other, dual, ns2, first_host(SUBNET), first_host(OTHER_SUBNET))
    cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns2}})
    cluster.network(net, SUBNET)
    cluster.network(other, OTHER_SUBNET)
    cluster.network(dual, DUAL_SUBNET, ipv6={"subnet": DUAL_SUBNET6})
    cluster_form = {"nameservers": [w.gw], "searches": ["default.svc.cluster.local", "svc.cluster.local",
                                                         "cluster.local"],
                    "options": [{"name": "ndots", "value": "5"}]}
    # role: (node, networks annotation, extra pod fields)
    plan: dict[str, tuple] = {
        "a1": ("node1", net, {}), "a2": ("node1", net, {}), "b1": ("node2", net, {}),
        "x1": ("node2", net, {}),  # in the second namespace
        "o1": ("node1", other, {}),
        "gone": ("node2", net, {}), "detach": ("node1", net, {}), "late": ("node1", None, {}),
        "c1": ("node2", net, {"dns_policy": "None", "dns_config": cluster_form}),
        "db1": ("node1", json_networks(net, ["db", "shared"]), {}),
        "db2": ("node2", json_networks(net, ["shared"]), {}),
        "v6a": ("node1", dual, {}), "v6b": ("node2", dual, {}),
    }
    for role, (node, networks, extra) in plan.items():
        w.pods[role] = unique(role)
        cluster.pod(w.pods[role], networks, node=node, namespace=w.namespace(role), **extra)
        w.created.append((w.namespace(role), w.pods[role]))
    try:
        # Waited for by their own tests: a refusal of theirs fails those tests, not the module.
        plain = [r for r in plan if r not in ("db1", "db2", "v6a", "v6b")]
        cluster.wait_ready(*[w.pods[r] for r in plain if r != "x1"])
        cluster.wait_ready(w.pods["x1"], namespace=ns2)
        for role in plain:
            if role != "late":
                w.ips[role] = cluster.ip(w.pods[role], other if role == "o1" else net, namespace=w.namespace(role))
        gateway = cluster.attachments(w.pods["a1"])[net]["gateway"][0]
        assert gateway == w.gw, f"the network's gateway is {gateway}, not {w.gw}"

        # Anything at all from the resolver on each node: its own pod's name.
        def answered() -> bool:
            return all(w.asker(role).lookup(w.pods[role], w.gw, qtype="a").replied for role in ("a1", "b1"))

        try:
            eventually(answered, timeout=RESOLVER_WITHIN, what="the resolvers to answer")
            w.resolver_seen = True
        except AssertionError as err:
            print(f"{err}: every lookup gets one attempt")
        yield w
    finally:
        # Pods that never start (a refused annotation) would have the kubelet retry them through
        # the rest of the suite: delete the module's pods now. The networks go with the session.
        by_ns: dict[str, list[str]] = {}
        for namespace, pod in w.created:
            by_ns.setdefault(namespace, []).append(pod)
        for namespace, pods in by_ns.items():
            cluster.kubectl("delete", "pod", "-n", namespace, *pods, "--ignore-not-found", "--wait=false",
                            check=False)


def test_each_node_reports_its_resolver_ready(world, cluster):
    seen: dict[str, dict | None] = {}

    def serving() -> bool:
        seen.clear()
        for nb in cluster.get("nodebridges", "-l", f"bridgenet.io/network={world.net}")["items"]:
            conds = (nb.get("status") or {}).get("conditions") or []
            seen[nb["spec"]["node"]] = next((c for c in conds if c["type"] == "ResolverReady"), None)
        return len(seen) == 2 and all(c and (c["status"], c.get("reason")) == ("True", "Serving")
                                      for c in seen.values())

    try:
        eventually(serving, timeout=10, what="ResolverReady=True/Serving on both NodeBridges")
    except AssertionError as err:
        raise AssertionError(f"{err}; ResolverReady by node: {seen}") from None


def test_pods_resolve_each_other_by_name_on_one_node_and_across_nodes(world):
    p = world.pods
    for asker, target, where in (("a1", "a2", "same node"), ("a1", "b1", "node1 -> node2"),
                                 ("b1", "a1", "node2 -> node1")):
        for name in (p[target], f"{p[target]}.default"):
            got = resolves(world, asker, name, {world.ips[target]})
            # An existing name has no AAAA here, which is NOERROR with no data: NXDOMAIN would
            # tell caches (and happy-eyeballs clients) that the name does not exist at all.
            assert not got.rcodes, f"{where}: {name} exists, yet: {got}"


def test_a_bare_pod_name_is_looked_up_in_the_askers_namespace(world):
    p, ns2 = world.pods, world.ns2
    resolves(world, "a1", f"{p['x1']}.{ns2}", {world.ips["x1"]})
    nxdomain(world, "a1", p["x1"])
    resolves(world, "x1", f"{p['a1']}.default", {world.ips["a1"]})
    resolves(world, "x1", p["x1"], {world.ips["x1"]})


def test_aliases_resolve_network_wide_and_a_shared_alias_gives_every_address(world, cluster):
    world.ready("db1", "db2")
    for role in ("db1", "db2"):
        world.ips[role] = cluster.ip(world.pods[role], world.net)
    for asker in ("a1", "b1", "x1"):  # node1, node2, and another namespace
        resolves(world, asker, "db", {world.ips["db1"]})
        resolves(world, asker, "shared", {world.ips["db1"], world.ips["db2"]})


def test_a_dual_stack_network_answers_a_and_aaaa_at_both_gateways(world, cluster):
    world.ready("v6a", "v6b")

    def addresses(role: str) -> set[str] | None:
        entry = cluster.attachments(world.pods[role]).get(world.dual) or {}
        ips = {ip.split("/")[0] for ip in entry.get("ips") or []}
        return ips if len(ips) == 2 else None

    want = {role: eventually(lambda r=role: addresses(r), timeout=ATTACH_WITHIN, what=f"{role}'s two addresses")
            for role in ("v6a", "v6b")}
    gw4, gw6 = first_host(DUAL_SUBNET), first_host(DUAL_SUBNET6)
    for server in (gw4, gw6):
        resolves(world, "v6a", world.pods["v6b"], want["v6b"], server=server)
        resolves(world, "v6b", world.pods["v6a"], want["v6a"], server=server)
    v6 = next(ip for ip in want["v6b"] if ":" in ip)
    got = world.asker("v6a").lookup(v6, gw6)
    assert got.names == {f"{world.pods['v6b']}.default"}, f"PTR of {v6}: {got}"


def test_reverse_lookup_names_the_pod(world):
    p = world.pods
    for asker, target in (("a1", "b1"), ("b1", "a2"), ("a1", "x1")):
        want = f"{p[target]}.{world.namespace(target)}"
        got = world.asker(asker).lookup(world.ips[target], world.gw)
        deadline = time.monotonic() + world.patience()
        while want not in got.names and time.monotonic() < deadline:
            time.sleep(POLL)
            got = world.asker(asker).lookup(world.ips[target], world.gw)
        assert got.names == {want}, f"PTR of {world.ips[target]} should be {want}: {got}"


def test_another_network_does_not_see_these_names(world):
    p = world.pods
    for name in (p["a1"], f"{p['a1']}.default", "db"):
        nxdomain(world, "o1", name, server=world.other_gw)
    # Nor by asking this network's gateway from outside its subnet (the pod's primary address).
    got = world.asker("o1").lookup(p["a1"], world.gw, qtype="a")
    assert world.ips["a1"] not in got.addresses, f"answered a query from outside {SUBNET}: {got}"


def test_dns_config_points_a_pod_at_its_gateway(world, cluster):
    conf = cluster.exec(world.pods["c1"], "cat", "/etc/resolv.conf", container=True)
    assert conf.returncode == 0, conf.stderr
    lines = [line.split() for line in conf.stdout.splitlines() if line.strip()]
    assert ["nameserver", world.gw] in lines, conf.stdout
    assert ["search", "default.svc.cluster.local", "svc.cluster.local", "cluster.local"] in lines, conf.stdout
    assert ["options", "ndots:5"] in lines, conf.stdout
    # No server given: nslookup asks the resolv.conf's nameserver, the gateway. busybox asks a
    # bare `NAME` only as NAME.<each search domain> (see the module's docstring): the first,
    # NAME.default.svc.cluster.local, is unknown upstream, so the network answers it with its
    # pod. Named absolutely and as `NAME.NAMESPACE` it is asked as it is.
    for name in (world.pods["a1"], f"{world.pods['a1']}.", f"{world.pods['a1']}.default"):
        got = resolves(world, "c1", name, {world.ips["a1"]}, container=True)
        assert re.search(rf"^Server:\s+{re.escape(world.gw)}$", got.out, re.M), got


def test_other_names_are_forwarded_upstream(world, cluster):
    name = "www.upstream.test"
    resolves(world, "a1", name, {upstream_dns.ZONE[name]})
    resolves(world, "b1", name, {upstream_dns.ZONE[name]})
    nxdomain(world, "a1", "missing.upstream.test")
    # Asked by the agents, from the nodes' underlay addresses (the pods could not reach it).
    log = cluster.sb.upstream_dns_queries.read_text().splitlines()
    sources = {line.split()[2].rsplit(":", 1)[0] for line in log if f" {name} A " in line}
    underlay = ipaddress.ip_network("10.251.0.0/24")
    assert sources and all(ipaddress.ip_address(s) in underlay for s in sources), log[-10:]


def stops_resolving(world: World, role: str, askers: tuple[str, ...], started: float) -> dict[str, float]:
    """Polls every POLL seconds from each asker until its answer for `role`'s name is NXDOMAIN;
    returns the seconds from `started` per asker (a bounded wait: twice the promise)."""
    name, took, last = world.pods[role], {}, {}
    deadline = started + 2 * GONE_WITHIN + 1
    while len(took) < len(askers) and time.monotonic() < deadline:
        for asker in askers:
            if asker not in took:
                last[asker] = world.asker(asker).lookup(name, world.gw, qtype="a")
                if last[asker].nxdomain:
                    took[asker] = time.monotonic() - started
        time.sleep(POLL)
    missing = {a: str(last[a]) for a in askers if a not in took}
    assert not missing, f"{name} still resolves {2 * GONE_WITHIN + 1:.0f} s later: {missing}"
    return took


def test_a_deleted_pods_name_stops_resolving_on_every_node(world, cluster):
    for asker in ("a1", "b1"):
        resolves(world, asker, world.pods["gone"], {world.ips["gone"]})
    cluster.kubectl("delete", "pod", world.pods["gone"])
    took = stops_resolving(world, "gone", ("a1", "b1"), time.monotonic())
    print(f"deleted pod unresolvable after {took}")
    assert max(took.values()) <= GONE_WITHIN, f"took {took} s (node1 asker a1, node2 asker b1)"


def test_a_detached_pods_name_stops_resolving_on_every_node(world, cluster):
    for asker in ("a1", "b1"):
        resolves(world, asker, world.pods["detach"], {world.ips["detach"]})
    cluster.kubectl("annotate", "pod", world.pods["detach"], "bridgenet.io/networks-")
    took = stops_resolving(world, "detach", ("a1", "b1"), time.monotonic())
    print(f"detached pod unresolvable after {took}")
    assert max(took.values()) <= GONE_WITHIN, f"took {took} s (node1 asker a1, node2 asker b1)"


def test_hot_attach_with_an_alias_resolves_from_the_other_node(world, cluster):
    late = world.pods["late"]
    cluster.kubectl("annotate", "pod", late,
                    f"bridgenet.io/networks={json.dumps(json_networks(world.net, ['late-alias']))}")

    def attached():
        entry = cluster.attachments(late).get(world.net)
        return entry["ips"][0].split("/")[0] if entry and entry.get("ips") else None

    try:
        ip = eventually(attached, timeout=ATTACH_WITHIN, what=f"{late} to be attached to {world.net}")
    except AssertionError as err:
        raise AssertionError(f"{err}; its Warning events: {warnings(cluster, late)}") from None
    resolves(world, "b1", "late-alias", {ip})
    resolves(world, "b1", late, {ip})


def test_a_network_without_dns_has_no_resolver(world, cluster):
    net, pod = unique("nodns"), unique("quiet")
    gw = first_host(NODNS_SUBNET)
    cluster.network(net, NODNS_SUBNET, dns=False)
    cluster.pod(pod, net, node="node1")
    world.created.append(("default", pod))
    cluster.wait_ready(pod)
    cluster.ip(pod, net)
    got = Asker(cluster, pod).lookup(pod, gw, qtype="a", timeout=2)
    assert not got.replied and "no servers could be reached" in got.out, f"something answers on {gw}: {got}"
    nbs = cluster.get("nodebridges", "-l", f"bridgenet.io/network={net}")["items"]
    serving = [nb["spec"]["node"] for nb in nbs for c in (nb.get("status") or {}).get("conditions") or []
               if c["type"] == "ResolverReady" and c["status"] == "True"]
    assert not serving, f"ResolverReady=True on {serving} for a network with dns: false"
