"""End-to-end fixtures: one two-node sandbox with the real operator and agents per session.

The sandbox runs the API emulator unless `SANDBOX_KUBECONFIG` names an existing API server's
kubeconfig (as for `make demo`); with one, `SANDBOX_REAL_KUBELET`, `SANDBOX_REAL_SCHEDULER` and
`SANDBOX_REAL_CONTROLLER_MANAGER` put real Kubernetes components in place of the stand-ins.
Either way, every object the tests create carries this run's `RUN_LABEL`, and at the end of the
session the suite deletes them by that label — Pods, then BridgeNetworks, then Namespaces — while
the operator and agents still run, and fails naming whatever is left; then the sandbox's Nodes
are unregistered. Plain `KUBECONFIG` is deliberately not enough: the suite registers Nodes and
creates objects, which must not happen to whatever cluster a shell happens to point at."""

from __future__ import annotations

import copy
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import time
import uuid

import pytest
import yaml

SANDBOX = pathlib.Path(__file__).resolve().parents[1]
REPO = SANDBOX.parents[1]
sys.path.insert(0, str(SANDBOX))

from bnsandbox import podexec, poll, realk8s, up  # noqa: E402

BIN_DIR = pathlib.Path(os.environ.get("BRIDGENET_BIN_DIR", REPO / "target" / "debug"))
EXTERNAL = os.environ.get("SANDBOX_KUBECONFIG") or None
REAL = realk8s.RealComponents.from_env()
PREFIX = "bnt-sb-e2e-"
# On every object `Cluster.apply` creates (all the suite's Pods, BridgeNetworks and Namespaces),
# valued with the run's id: the end of the session deletes by this selector, so nothing needs
# tracking, and whatever a test already deleted itself is simply not found.
RUN_LABEL = "e2e.bnsandbox.io/run"
# The normal deletion path must finish within this; a slower one is a bug, not a tight bound.
# It takes about 5 s on the emulator, 10–11 s on a real control plane (with the stand-ins or real
# kubelets, which honour the test pods' 5 s grace period: they exit at SIGTERM).
CLEANUP_SECONDS = 30.0
# After it, what is left gets the last resort (force) for this long, and the suite still fails.
FORCE_SECONDS = 15.0


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, containerd)"
    for tool in ("containerd", "runc", "kubectl"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (scripts/setup.sh)"
    for binary in ("bridgenet-operator", "bridgenet-agent", "bridgenet"):
        if not (BIN_DIR / binary).exists():
            return f"{BIN_DIR / binary} is missing: run `cargo build --workspace` first"
    return None


class Cluster:
    def __init__(self, sandbox: up.Sandbox) -> None:
        self.sb = sandbox
        self.state = sandbox.state
        self.run = uuid.uuid4().hex[:12]
        self.selector = f"{RUN_LABEL}={self.run}"
        # Networks applied, also those the tests deleted again: their NodeBridges must be gone too.
        self.networks: set[str] = set()

    def kubectl(self, *args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
        res = subprocess.run([*self.sb.kubectl, *args], capture_output=True, text=True, input=input, timeout=120)
        if check and res.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)}: {res.stderr}")
        return res

    def apply(self, obj: dict | str) -> None:
        """`kubectl apply` of one object or a YAML stream, each labelled with this run."""
        docs = [copy.deepcopy(d) for d in (yaml.safe_load_all(obj) if isinstance(obj, str) else [obj]) if d]
        for doc in docs:
            doc.setdefault("metadata", {}).setdefault("labels", {})[RUN_LABEL] = self.run
            if doc.get("kind") == "BridgeNetwork":
                self.networks.add(doc["metadata"]["name"])
        self.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs, sort_keys=False))

    def get(self, *args: str) -> dict:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def exec(self, pod: str, *cmd: str, namespace: str = "default",
             container: bool | str = False) -> subprocess.CompletedProcess:
        """`cmd` in the pod, through `bnsandbox.podexec`: by default the host's busybox in the
        pod's network namespace; with `container` (True: the first container, or its name) in
        the container's mount and network namespaces — its files, its /etc/resolv.conf."""
        which = ["-c", container] if isinstance(container, str) else ["--in-container"] if container else []
        return subprocess.run([sys.executable, "-m", "bnsandbox.podexec", "--state-dir", str(self.state), "-n",
                               namespace, *which, pod, "--", *cmd], cwd=SANDBOX, capture_output=True, text=True,
                              timeout=60)

    def exec_argv(self, pod: str, *cmd: str, namespace: str = "default", container: bool | str = False) -> list[str]:
        """The command line `exec` would run, resolved once (CRI calls, in this process): a test
        that runs many short commands in one pod — a query every 0.1 s — appends to it and
        runs it itself, without a Python start-up per command."""
        return podexec.exec_argv(self.state, namespace, pod, list(cmd), container)

    def ping(self, pod: str, ip: str, namespace: str = "default") -> bool:
        """Whether `pod` reaches `ip`: at most three packets within three seconds (the first may
        wait for ARP across the overlay), success on any reply. Bounded, and only to addresses
        inside the sandbox. Judged by the replies counted, not the exit status: with a deadline
        busybox ping exits 1 unless every one of its packets was answered."""
        out = self.exec(pod, "ping", "-c", "3", "-w", "3", "-W", "1", ip, namespace=namespace).stdout
        received = re.search(r"(\d+) packets received", out)
        return bool(received and int(received.group(1)) > 0)

    def network(self, name: str, subnet: str, **spec) -> None:
        self.apply({"apiVersion": "bridgenet.io/v1alpha1", "kind": "BridgeNetwork", "metadata": {"name": name},
                    "spec": {"subnet": subnet, **spec}})

    def pod(self, name: str, networks: str | list | None = None, node: str | None = None, namespace: str = "default",
            dns_policy: str | None = None, dns_config: dict | None = None,
            annotations: dict[str, str] | None = None) -> None:
        """A busybox pod; `networks` is the `bridgenet.io/networks` annotation, as a string or as
        the JSON list form (`[{"name": net, "aliases": [...]}]`); `dns_policy` and `dns_config`
        are the pod's `dnsPolicy` and `dnsConfig`; `annotations` are more annotations it is
        created with."""
        meta: dict = {"name": name, "namespace": namespace, "annotations": dict(annotations or {})}
        if networks is not None:
            value = networks if isinstance(networks, str) else json.dumps(networks)
            meta["annotations"]["bridgenet.io/networks"] = value
        if not meta["annotations"]:
            del meta["annotations"]
        # PID 1 ignores signals it has no handler for: a bare `sleep` would make a real kubelet
        # wait out the grace period on every deletion. This one exits on SIGTERM within a second.
        spec: dict = {"containers": [{"name": "main", "image": "busybox:1.36",
                                      "command": ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]}],
                      "terminationGracePeriodSeconds": 5}
        if node:
            spec["nodeSelector"] = {"kubernetes.io/hostname": node}
        if dns_policy:
            spec["dnsPolicy"] = dns_policy
        if dns_config:
            spec["dnsConfig"] = dns_config
        self.apply({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec})

    def wait_ready(self, *pods: str, namespace: str = "default", timeout: str = "60s") -> None:
        self.kubectl("wait", "-n", namespace, "--for=condition=Ready", *[f"pod/{p}" for p in pods],
                     f"--timeout={timeout}")

    def attachments(self, pod: str, namespace: str = "default") -> dict[str, dict]:
        ann = self.get("pod", pod, "-n", namespace)["metadata"].get("annotations") or {}
        raw = ann.get("bridgenet.io/network-status")
        return {e["name"]: e for e in json.loads(raw)} if raw else {}

    def ip(self, pod: str, network: str, namespace: str = "default") -> str:
        def found():
            entry = self.attachments(pod, namespace).get(network)
            return entry["ips"][0].split("/")[0] if entry and entry.get("ips") else None

        return eventually(found, what=f"{pod}'s address on {network}")

    # -- the end of the session ----------------------------------------------------------------

    def labelled(self, resource: str) -> list[dict]:
        """This run's objects of `resource` that are still there, in any namespace."""
        scope = ["-A"] if resource == "pods" else []
        return self.get(resource, *scope, "-l", self.selector)["items"]

    def node_bridges(self, networks: set[str]) -> list[dict]:
        """The NodeBridges the operator made for `networks`."""
        return [nb for nb in self.get("nodebridges")["items"]
                if (nb["metadata"].get("labels") or {}).get("bridgenet.io/network") in networks]

    def leftovers(self, networks: set[str]) -> list[str]:
        """What of this run is still there: its Pods, BridgeNetworks (with why they are held),
        the NodeBridges of `networks` and its Namespaces."""
        left = []
        for pod in self.labelled("pods"):
            m = pod["metadata"]
            left.append(f"Pod {m['namespace']}/{m['name']} (node {pod['spec'].get('nodeName')}, "
                        f"{'terminating' if m.get('deletionTimestamp') else 'not deleted'})")
        for net in self.labelled("bridgenetworks"):
            conds = {c["type"]: c for c in net.get("status", {}).get("conditions", [])}
            # Its first clause names the pods holding it; the rest is advice for users.
            why = (conds.get("Ready", {}).get("message") or "no Ready message").split("; ")[0]
            state = "terminating" if net["metadata"].get("deletionTimestamp") else "not deleted"
            left.append(f"BridgeNetwork {net['metadata']['name']} ({state}; {why})")
        live = {n.name for n in self.sb.topo.nodes} if self.sb.topo else set()
        for nb in self.node_bridges(networks):
            node = (nb["metadata"].get("labels") or {}).get("bridgenet.io/node")
            left.append(f"NodeBridge {nb['metadata']['name']} (finalizers {nb['metadata'].get('finalizers') or []}"
                        f"{', endpoints attached' if attached(nb) else ''}"
                        f"{'' if node in live else f', its node {node} is gone'})")
        left += [f"Namespace {ns['metadata']['name']}" for ns in self.labelled("namespaces")]
        return left

    @staticmethod
    def _until(done, deadline: float) -> bool:
        while not done():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.25)
        return True

    def delete_created(self) -> list[str]:
        """Deletes what this run created, in the order in which deletion can finish, while the
        operator and agents still run: Pods first, and then waits until the agents have reported
        their interfaces detached (what the operator's finalizer on a BridgeNetwork waits for);
        then BridgeNetworks (the operator deletes their NodeBridges, and goes once the agents have
        torn the bridges down and removed their finalizer); then Namespaces. Returns what went
        wrong: what was left after `CLEANUP_SECONDS`, then what even force could not remove."""
        networks = self.networks | {n["metadata"]["name"] for n in self.labelled("bridgenetworks")}
        deadline = time.monotonic() + CLEANUP_SECONDS
        live = {n.name for n in self.sb.topo.nodes} if self.sb.topo else set()
        self.kubectl("delete", "pods", "-A", "-l", self.selector, "--wait=false")
        # No kubelet finishes a Pod on a node that is gone: a real control plane's pod garbage
        # collector force-deletes those; the emulator has none.
        for pod in self.labelled("pods"):
            if pod["spec"].get("nodeName") and pod["spec"]["nodeName"] not in live:
                self.kubectl("delete", "pod", pod["metadata"]["name"], "-n", pod["metadata"]["namespace"], "--force",
                             "--grace-period=0", "--wait=false", check=False)
        done = self._until(lambda: not self.labelled("pods"), deadline)
        # A Pod is gone from the API before its agent has reported the detach (at once on the
        # emulator): deleting the networks now would only have the operator hold them, and warn.
        done &= self._until(lambda: not any(attached(nb) for nb in self.node_bridges(networks)), deadline)
        for resource in ("bridgenetworks", "namespaces"):
            self.kubectl("delete", resource, "-l", self.selector, "--wait=false")
            done &= self._until(lambda r=resource: not self.labelled(r), deadline)
        left = self.leftovers(networks)
        problems = []
        if not done and not left:
            problems.append(f"deletion took longer than {CLEANUP_SECONDS:.0f} s")
        if left:
            problems.append(f"left after {CLEANUP_SECONDS:.0f} s: " + "; ".join(left))
            # Last resort, so that a failed run does not leave its objects on someone's cluster;
            # the suite fails all the same.
            for pod in self.labelled("pods"):
                self.kubectl("delete", "pod", pod["metadata"]["name"], "-n", pod["metadata"]["namespace"], "--force",
                             "--grace-period=0", "--wait=false", check=False)
            for net in self.labelled("bridgenetworks"):
                self.kubectl("annotate", "--overwrite", "bridgenetwork", net["metadata"]["name"],
                             "bridgenet.io/force-delete=true", check=False)
            for resource in ("bridgenetworks", "namespaces"):
                self.kubectl("delete", resource, "-l", self.selector, "--wait=false", check=False)
            self._until(lambda: not self.leftovers(networks), time.monotonic() + FORCE_SECONDS)
            left = self.leftovers(networks)
            problems.append(f"still there after forcing for {FORCE_SECONDS:.0f} s more: " + "; ".join(left)
                            if left else "forcing removed them")
        return problems


def attached(nb: dict) -> bool:
    """Whether a NodeBridge's agent reports pod interfaces attached."""
    st = nb.get("status") or {}
    return bool(st.get("endpointCount") or st.get("endpoints"))


def eventually(pred, timeout: float = 60.0, what: str = "condition"):
    return poll.until(pred, timeout, 0.25, what)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:5]}"


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    try:
        # A wrong setting fails, even where the suite would skip: it was asked for explicitly.
        REAL.check(existing_api_server=bool(EXTERNAL))
    except realk8s.RealComponentError as err:
        pytest.fail(str(err), pytrace=False)
    reason = _missing()
    if reason:
        pytest.skip(reason)
    # Sandbox holds the prefix's lock: a concurrent run waits for this one.
    sandbox = up.Sandbox(2, tmp_path_factory.mktemp("sandbox"), prefix=PREFIX, kubeconfig=EXTERNAL, bin_dir=BIN_DIR,
                         log=lambda m: None, real=REAL)
    nodes = [n.name for n in sandbox.topo.nodes] if sandbox.topo else []
    problems: list[str] = []
    try:
        cluster = Cluster(sandbox)
        yield cluster
        started = time.monotonic()
        problems = cluster.delete_created()
        # The run's own measure of the cleanup: `pytest -rP` shows it.
        print(f"cleanup of run {cluster.run}: {time.monotonic() - started:.1f} s")
    finally:
        sandbox.close()
    if EXTERNAL:
        # The emulator is gone with the sandbox; an existing server must have lost the Nodes.
        still = subprocess.run([*sandbox.kubectl, "get", "nodes", *nodes, "--ignore-not-found", "-o", "name"],
                               capture_output=True, text=True, timeout=60)
        if still.returncode != 0 or still.stdout.strip():
            problems.append(f"Nodes not unregistered: {still.stdout.strip() or still.stderr.strip()}")
    if problems:
        pytest.fail("the suite did not delete what it created: " + " | ".join(problems), pytrace=False)
