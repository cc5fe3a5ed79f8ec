"""Sandbox nodes as network namespaces joined by an underlay bridge.

Layout (prefix `bnt-sb-demo-` unless told otherwise, tests use `bnt-sb-test-`; every address exists only inside these
namespaces):

    netns <prefix>underlay    bridge `underlay` (no address), one veth port per node
    netns <prefix><node>      eth0 = 10.251.0.<11+i>/24, default route via the router
    netns <prefix>internet    (optional) eth0 = 10.251.0.254/24, plus 10.251.255.1/32 on lo:
                              "the outside world" for egress tests, reached via the default route
    host link <prefix>        (optional) a veth from the host into the underlay, 10.251.0.1/24, so
                              the API server on the host is reachable from the nodes

Everything is torn down on `close()`, at interpreter exit, on SIGINT/SIGTERM, and — leftovers
of a killed run — at the next `Topology(...)` with the same prefix. The `ip` command builds the
topology; that is test plumbing, not product code.
"""

from __future__ import annotations

import atexit
import ipaddress
import json
import os
import signal
import subprocess
import threading
from dataclasses import dataclass, field
from typing import Sequence

DEFAULT_PREFIX = "bnt-sb-demo-"
UNDERLAY = ipaddress.ip_network("10.251.0.0/24")
HOST_IP = "10.251.0.1"
ROUTER_IP = "10.251.0.254"
INTERNET_IP = "10.251.255.1"
FIRST_NODE_HOST = 11


class NetnsError(RuntimeError):
    """A topology step failed; the message names the command and its stderr."""


def run(*args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
    res = subprocess.run(list(args), capture_output=True, text=True, input=input)
    if check and res.returncode != 0:
        raise NetnsError(f"{' '.join(args)}: exit {res.returncode}: {res.stderr.strip()}")
    return res


def list_netns() -> list[str]:
    out = run("ip", "-json", "netns", "list", check=False).stdout.strip()
    if not out:
        return []
    return [n["name"] for n in json.loads(out)]


def netns_pids(name: str) -> list[int]:
    out = run("ip", "netns", "pids", name, check=False).stdout.split()
    return [int(p) for p in out if p.isdigit()]


def delete_netns(name: str) -> None:
    """Kills what runs in the namespace (only ever our own processes: the namespace is ours),
    then deletes it; deleting a namespace destroys its veth ends and with them their peers."""
    for pid in netns_pids(name):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    run("ip", "netns", "delete", name, check=False)


def host_link_name(prefix: str) -> str:
    """The host's veth into the underlay: the prefix without its dash, cut to IFNAMSIZ-1."""
    return prefix.rstrip("-")[:15]


class PrefixLock:
    """Serializes whole runs that use the same namespace prefix (two `make sandbox-e2e` at once
    would otherwise clean up each other's namespaces as stale)."""

    def __init__(self, prefix: str) -> None:
        self.path = f"/run/{prefix.rstrip('-')}.lock"
        self.fd: int | None = None

    def __enter__(self) -> "PrefixLock":
        import fcntl

        self.fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class HostLinkLock(PrefixLock):
    """HOST_IP is one address on the host whatever the prefix: two host links at once would
    both claim it and route each other's replies astray. Held while a topology has one."""

    def __init__(self) -> None:
        self.path = "/run/bnt-sb-host-link.lock"
        self.fd: int | None = None


def cleanup_stale(prefix: str) -> list[str]:
    """Deletes every namespace with the prefix: leftovers of a run that was killed."""
    if not prefix.startswith("bnt-"):
        raise ValueError(f"refusing to clean namespaces with prefix {prefix!r}: not a test prefix")
    run("ip", "link", "del", host_link_name(prefix), check=False)
    stale = [n for n in list_netns() if n.startswith(prefix)]
    # Nodes first, the underlay last, so no veth is left dangling mid-way.
    for name in sorted(stale, key=lambda n: n.endswith("underlay")):
        delete_netns(name)
    return stale


@dataclass
class Node:
    name: str
    netns: str
    ip: str
    index: int
    procs: list[subprocess.Popen] = field(default_factory=list)

    def exec(self, *args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
        return run("ip", "netns", "exec", self.netns, *args, check=check, input=input)

    def popen(self, args: Sequence[str], log_path: str | None = None, env: dict | None = None,
              cwd: str | None = None) -> subprocess.Popen:
        """Starts a long-running process inside the node's network namespace; it is killed at
        teardown."""
        out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115 - owned by the child
        # nsenter, not `ip netns exec`: the latter also remounts /sys in a private mount
        # namespace, which hides the cgroup mounts that runc (under containerd) needs.
        proc = subprocess.Popen(["nsenter", f"--net=/var/run/netns/{self.netns}", *args], stdout=out,
                                stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, cwd=cwd, start_new_session=True)
        self.procs.append(proc)
        return proc

    def node_object(self, allocatable: bool = False) -> dict:
        """The `Node` a kubelet would register for this namespace; with `allocatable`, room
        for pods as a real scheduler checks it (the stand-in scheduler does not)."""
        obj = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.name, "labels": {
                "kubernetes.io/hostname": self.name, "kubernetes.io/os": "linux",
                "bridgenet.io/sandbox": "true"}},
            "status": {
                "addresses": [{"type": "InternalIP", "address": self.ip}, {"type": "Hostname", "address": self.name}],
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                                "message": "sandbox node (network namespace)"}],
                "nodeInfo": {"kubeletVersion": "v1.32.0-bnsandbox", "containerRuntimeVersion": "containerd",
                             "operatingSystem": "linux", "architecture": "amd64", "kernelVersion": os.uname().release,
                             "osImage": "bnsandbox", "kubeProxyVersion": "", "machineID": "", "systemUUID": "",
                             "bootID": ""},
            },
        }
        if allocatable:
            room = {"pods": "110", "cpu": str(os.cpu_count() or 1), "memory": "8Gi"}
            obj["status"].update(capacity=room, allocatable=room)
        return obj


class Topology:
    """N nodes on one underlay. Use as a context manager, or call `close()`."""

    def __init__(self, node_names: Sequence[str], prefix: str = DEFAULT_PREFIX, internet: bool = False,
                 mtu: int = 1500, host_link: bool = False) -> None:
        if len(node_names) > 200:
            raise ValueError("at most 200 nodes fit the underlay's /24")
        self.prefix = prefix
        self.nodes: list[Node] = []
        self.internet: Node | None = None
        self._closed = False
        self._lock = threading.Lock()
        self._host_link_lock = HostLinkLock().__enter__() if host_link else None
        cleanup_stale(prefix)
        self._install_handlers()
        try:
            self.underlay = prefix + "underlay"
            run("ip", "netns", "add", self.underlay)
            self._ns_exec(self.underlay, "ip", "link", "set", "lo", "up")
            self._ns_exec(self.underlay, "ip", "link", "add", "underlay", "type", "bridge")
            self._ns_exec(self.underlay, "ip", "link", "set", "underlay", "mtu", str(mtu), "up")
            for i, name in enumerate(node_names):
                ip = str(UNDERLAY.network_address + FIRST_NODE_HOST + i)
                self.nodes.append(self._attach(name, prefix + name, ip, i, mtu))
            self.host_link = host_link_name(prefix) if host_link else None
            if self.host_link:
                # The host joins the underlay at HOST_IP, so what runs on the host (the API
                # emulator, the operator) is reachable from every node, like a control plane.
                run("ip", "link", "add", self.host_link, "mtu", str(mtu), "type", "veth", "peer", "name", "host",
                    "netns", self.underlay)
                self._ns_exec(self.underlay, "ip", "link", "set", "host", "master", "underlay", "up")
                run("ip", "addr", "add", f"{HOST_IP}/{UNDERLAY.prefixlen}", "dev", self.host_link)
                run("ip", "link", "set", self.host_link, "up")
            if internet:
                self.internet = self._attach("internet", prefix + "internet", ROUTER_IP, len(node_names), mtu,
                                             default_route=False)
                self.internet.exec("ip", "addr", "add", f"{INTERNET_IP}/32", "dev", "lo")
                self.internet.exec("sysctl", "-qw", "net.ipv4.ip_forward=1")
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _ns_exec(ns: str, *args: str) -> None:
        run("ip", "netns", "exec", ns, *args)

    def _attach(self, name: str, netns: str, ip: str, index: int, mtu: int, default_route: bool = True) -> Node:
        run("ip", "netns", "add", netns)
        port = f"p{index}"
        # Create the pair inside the underlay namespace with its peer born in the node's, so no
        # interface ever appears in the host's namespace.
        self._ns_exec(self.underlay, "ip", "link", "add", port, "mtu", str(mtu), "type", "veth",
                      "peer", "name", "eth0", "netns", netns)
        self._ns_exec(self.underlay, "ip", "link", "set", port, "master", "underlay", "up")
        node = Node(name, netns, ip, index)
        node.exec("ip", "link", "set", "lo", "up")
        node.exec("ip", "link", "set", "eth0", "mtu", str(mtu), "up")
        node.exec("ip", "addr", "add", f"{ip}/{UNDERLAY.prefixlen}", "dev", "eth0")
        if default_route:
            node.exec("ip", "route", "add", "default", "via", ROUTER_IP, "dev", "eth0")
        return node

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def remove_node(self, name: str) -> None:
        node = self.node(name)
        self._stop(node)
        # The kernel dismantles a deleted namespace asynchronously; unplugging its underlay port
        # first makes the node unreachable at once.
        run("ip", "netns", "exec", self.underlay, "ip", "link", "del", f"p{node.index}", check=False)
        delete_netns(node.netns)
        self.nodes.remove(node)

    # -- registration with the API server ----------------------------------------------------------

    def register(self, kubectl: Sequence[str], schedulable: bool = False) -> None:
        """Creates (or updates) a `Node` per namespace through kubectl, so it works against the
        emulator and against a real API server alike; status goes through its subresource.
        `schedulable`: for a real scheduler, with room for pods and without the not-ready taint
        a real API server's admission gives every new Node (a node lifecycle controller would
        lift it, and soon taint the Node unreachable: no kubelet renews its Lease)."""
        for node in self.nodes:
            obj = node.node_object(allocatable=schedulable)
            status = obj.pop("status")
            run(*kubectl, "apply", "-f", "-", input=json.dumps(obj))
            run(*kubectl, "patch", "node", node.name, "--subresource=status", "--type=merge",
                "-p", json.dumps({"status": status}))
            if schedulable:
                run(*kubectl, "taint", "node", node.name, "node.kubernetes.io/not-ready:NoSchedule-", check=False)

    def unregister(self, kubectl: Sequence[str]) -> None:
        for node in self.nodes:
            run(*kubectl, "delete", "node", node.name, "--ignore-not-found", "--wait=false", check=False)

    # -- teardown -------------------------------------------------------------------------------

    def _stop(self, node: Node) -> None:
        for proc in node.procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    continue
        for proc in node.procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        for node in [*self.nodes, *([self.internet] if self.internet else [])]:
            self._stop(node)
        cleanup_stale(self.prefix)
        if self._host_link_lock is not None:
            self._host_link_lock.__exit__(None, None, None)
        atexit.unregister(self.close)
        # Hand the signals back: a long-lived process (pytest) must not keep our handlers.
        if threading.current_thread() is threading.main_thread():
            for sig, previous in self._previous_handlers.items():
                signal.signal(sig, previous)
        self._previous_handlers = {}

    def __enter__(self) -> "Topology":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _install_handlers(self) -> None:
        atexit.register(self.close)
        self._previous_handlers: dict = {}
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be installed from the main thread
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            previous = signal.getsignal(sig)
            self._previous_handlers[sig] = previous

            def handler(signum, frame, previous=previous):
                self.close()
                if callable(previous) and previous not in (signal.SIG_IGN, signal.SIG_DFL):
                    previous(signum, frame)
                else:
                    raise SystemExit(128 + signum)

            signal.signal(sig, handler)
