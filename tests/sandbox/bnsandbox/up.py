"""Brings the sandbox up: an API server (the emulator, or an existing one from a kubeconfig),
N nodes as network namespaces registered as `Node`s — each with a private containerd, the
reference `bridge` plugin as primary pod network and a kubelet stand-in — bridgenet's CRDs, and,
when their binaries are given, the node agent on every node and the operator; then waits until
SIGINT/SIGTERM and tears everything down. With an existing API server, real kubelets,
kube-scheduler and kube-controller-manager can replace the stand-ins (`bnsandbox.realk8s`).

    python3 -m bnsandbox.up --nodes 2 --state-dir /tmp/bnt-sb [--bin-dir target/debug]
    export KUBECONFIG=/tmp/bnt-sb/kubeconfig   # printed on start
"""

from __future__ import annotations

import argparse
import base64
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time
from typing import Any

import yaml

from . import containerd, forward, images, netns, poll, realk8s, upstream_dns

REPO = pathlib.Path(__file__).resolve().parents[3]
SANDBOX = REPO / "tests" / "sandbox"


# Stopped after everything else: what the others talk to.
_LAST = ("apiserver", "forwarder")
# The sandbox operator's leader Lease, in the namespace `default`.
_LEASE = "bridgenet-operator"


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _wait_file(path: pathlib.Path, proc: subprocess.Popen, what: str, timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.read_text().strip()):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start")
        time.sleep(0.05)
    return path.read_text().strip()


class Sandbox:
    """The whole sandbox as one object; `close()` (or leaving the `with`) takes it down."""

    def __init__(self, nodes: int, state_dir: pathlib.Path, prefix: str = netns.DEFAULT_PREFIX,
                 kubeconfig: str | None = None, runtime: bool = True, bin_dir: pathlib.Path | None = None,
                 log=print, real: realk8s.RealComponents | None = None,
                 crds: pathlib.Path = REPO / "crds" / "yaml") -> None:
        self.real = real or realk8s.RealComponents()
        # Before anything is started: real components need an existing API server.
        self.real.check(existing_api_server=bool(kubeconfig), runtime=runtime)
        self.state = state_dir
        self.state.mkdir(parents=True, exist_ok=True)
        self.external = kubeconfig
        self.log = log
        self.procs: list[tuple[str, subprocess.Popen]] = []
        # How each process was started, so that it can be restarted the same way.
        self.recipes: dict[str, Any] = {}
        self.runtimes: list[containerd.Containerd] = []
        self.kubelets: list[realk8s.RealKubelet] = []
        self.host_state: realk8s.HostState | None = None
        self.topo: netns.Topology | None = None
        # Whether our operator created its leader Lease on an existing server (deleted at close).
        self.lease_created = False
        self.kubeconfig = pathlib.Path(kubeconfig) if kubeconfig else self.state / "kubeconfig"
        # The outside world's DNS server (HOST:PORT, reachable from every node) and its query log.
        self.upstream_dns = f"{upstream_dns.ADDRESS}:{upstream_dns.PORT}"
        self.upstream_dns_queries = self.state / "upstream-dns.queries"
        # What processes inside the node namespaces use: the same file with the emulator (it
        # listens on the host link), a copy pointing at the forwarder with an existing server.
        self.node_kubeconfig = self.kubeconfig
        # The existing server's kubeconfig, flattened (its CA for a controller manager of ours).
        self.flat_kubeconfig: dict = {}
        # A second sandbox with the same prefix waits here instead of tearing this one down as
        # "stale" (and fighting over 10.251.0.1).
        self.lock = netns.PrefixLock(prefix).__enter__()
        try:
            names = [f"node{i + 1}" for i in range(nodes)]
            # Also kills whatever still runs in a killed run's namespaces: its kubelets too.
            self.topo = netns.Topology(names, prefix=prefix, internet=True, host_link=True)
            if realk8s.STATE_FILE.exists():
                # What real kubelets of a killed run with this prefix left on the host.
                realk8s.HostState(prefix).release()
            self._start_upstream_dns()
            if kubeconfig:
                self._start_forwarder(kubeconfig)
            else:
                self._start_emulator()
            self.kubectl = [shutil.which("kubectl") or "kubectl", "--kubeconfig", str(self.kubeconfig)]
            if not self.real.kubelet:
                # A real kubelet registers its Node itself.
                self.topo.register(self.kubectl, schedulable=bool(self.real.scheduler))
            self.apply_crds(crds)
            if self.real.controller_manager:
                self._start_controller_manager(self.real.controller_manager)
            if runtime:
                if self.real.kubelet:
                    self.host_state = realk8s.HostState(prefix)
                    self.host_state.acquire()
                self._start_runtimes()
                if self.real.scheduler:
                    self._spawn("scheduler", [self.real.scheduler, "--kubeconfig", str(self.kubeconfig),
                                              "--leader-elect=false", "--secure-port=0", "--v=2"], "scheduler.log")
                else:
                    self._spawn("scheduler", [sys.executable, "-m", "bnsandbox.scheduler", "--kubeconfig",
                                              str(self.kubeconfig)], "scheduler.log", cwd=SANDBOX)
                if self.real.kubelet:
                    self._wait_nodes_ready()
            if bin_dir is not None:
                self._start_bridgenet(bin_dir)
        except BaseException:
            self.close()
            raise

    # -- parts ----------------------------------------------------------------------------------

    def apply_crds(self, crds: pathlib.Path) -> None:
        """Applies the CRDs in directory `crds` (as an upgrade does before the new binaries)."""
        netns.run(*self.kubectl, "apply", "-f", str(crds))
        netns.run(*self.kubectl, "wait", "--for=condition=Established", "crd", "--all", "--timeout=30s")

    def _spawn(self, name: str, args: list[str], log_name: str, env: dict | None = None,
               cwd: pathlib.Path | None = None) -> subprocess.Popen:
        log = open(self.state / log_name, "ab")  # noqa: SIM115 - lives as long as the child
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, cwd=cwd)
        self.procs.append((name, proc))
        self.recipes[name] = lambda: self._spawn(name, args, log_name, env, cwd)
        return proc

    def _start_emulator(self) -> None:
        ready = self.state / "apiserver.url"
        ready.unlink(missing_ok=True)
        # On the host's underlay address, so agents inside the node namespaces reach it too.
        proc = self._spawn("apiserver", [sys.executable, "-m", "bnsandbox.apiserver", "--host", netns.HOST_IP,
                                         "--port", "0", "--kubeconfig", str(self.kubeconfig), "--ready-file",
                                         str(ready)], "apiserver.log", cwd=SANDBOX)
        _wait_file(ready, proc, f"the API emulator (see {self.state / 'apiserver.log'})")

    def _start_upstream_dns(self) -> None:
        """The outside world's DNS server (`bnsandbox.upstream_dns`) in the internet namespace,
        on an address of its own; the agents' resolvers forward to it. Queries are logged to
        `upstream_dns_queries`."""
        assert self.topo is not None and self.topo.internet is not None
        internet = self.topo.internet
        internet.exec("ip", "addr", "add", f"{upstream_dns.ADDRESS}/32", "dev", "lo")
        ready = self.state / "upstream-dns.addr"
        ready.unlink(missing_ok=True)
        self.upstream_dns_queries.unlink(missing_ok=True)
        proc = internet.popen([sys.executable, "-m", "bnsandbox.upstream_dns", "--listen", self.upstream_dns,
                               "--log", str(self.upstream_dns_queries), "--ready-file", str(ready)],
                              log_path=str(self.state / "upstream-dns.log"), cwd=str(SANDBOX))
        self.procs.append(("upstream-dns", proc))
        _wait_file(ready, proc, f"the upstream DNS server (see {self.state / 'upstream-dns.log'})")

    def _start_forwarder(self, kubeconfig: str) -> None:
        """An existing API server is usually not routed into the node namespaces (it may even be
        on the host's loopback): relay it from the host's underlay address instead."""
        # Flattened and minified: one context, files embedded, several KUBECONFIG files merged.
        res = subprocess.run([shutil.which("kubectl") or "kubectl", "config", "view", "--raw", "--flatten",
                              "--minify"], capture_output=True, text=True, env={**os.environ, "KUBECONFIG": kubeconfig})
        if res.returncode != 0:
            raise RuntimeError(f"cannot read the kubeconfig {kubeconfig}: {res.stderr.strip()}")
        flat = yaml.safe_load(res.stdout)
        if os.pathsep in kubeconfig:
            # `kubectl --kubeconfig` takes one file: the host side uses the merged view.
            self.kubeconfig = self.state / "kubeconfig"
            self._write_private(self.kubeconfig, res.stdout)
        _, target = forward.node_kubeconfig(flat, netns.HOST_IP, 0)
        ready = self.state / "forwarder.port"
        ready.unlink(missing_ok=True)
        proc = self._spawn("forwarder", [sys.executable, "-m", "bnsandbox.forward", "--listen", f"{netns.HOST_IP}:0",
                                         "--to", f"{target[0]}:{target[1]}", "--ready-file", str(ready)],
                           "forwarder.log", cwd=SANDBOX)
        port = int(_wait_file(ready, proc, f"the API forwarder (see {self.state / 'forwarder.log'})"))
        derived, _ = forward.node_kubeconfig(flat, netns.HOST_IP, port)
        self.node_kubeconfig = self.state / "node-kubeconfig"
        self._write_private(self.node_kubeconfig, yaml.safe_dump(derived, sort_keys=False))
        self.flat_kubeconfig = flat

    @staticmethod
    def _write_private(path: pathlib.Path, text: str) -> None:
        # Credentials: readable by the owner only.
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)

    def _start_runtimes(self) -> None:
        assert self.topo is not None
        archive = images.build_archive(self.state / "images.tar")
        for node in self.topo.nodes:
            ndir = self.state / node.name
            ctr = containerd.Containerd(node, ndir)
            self.runtimes.append(ctr)
            ctr.start()
            ctr.import_images(archive)
            ctr.primary_network(f"10.250.{node.index + 1}.0/24")
            if self.real.kubelet:
                self._start_real_kubelet(self.real.kubelet, node, ctr)
                continue
            self._spawn(f"kubelet/{node.name}", [
                sys.executable, "-m", "bnsandbox.kubelet", "--node-name", node.name, "--node-ip", node.ip,
                "--kubeconfig", str(self.kubeconfig), "--cri-endpoint", ctr.endpoint,
                "--log-dir", str(ndir / "pods"), "--resync", "2"], f"{node.name}/kubelet.log", cwd=SANDBOX)

    def _start_real_kubelet(self, binary: str, node: netns.Node, ctr: containerd.Containerd) -> None:
        """Inside the node's namespace (its address, its containerd), so it reaches the API
        server through the forwarder, with the node kubeconfig."""
        assert self.host_state is not None
        kubelet = realk8s.RealKubelet(binary, node, ctr.endpoint, self.state / node.name, self.node_kubeconfig)
        kubelet.prepare()
        self.kubelets.append(kubelet)
        self.host_state.add_kubelet(kubelet)

        def start(kubelet=kubelet, name=f"kubelet/{node.name}"):
            proc = kubelet.start()
            self.procs.append((name, proc))
            return proc

        start()
        self.recipes[f"kubelet/{node.name}"] = start

    def _wait_nodes_ready(self, timeout: float = 120) -> None:
        """Until every kubelet's Node is Ready and rid of the not-ready taint it registered with
        (lifted by the control plane's node lifecycle controller)."""
        assert self.topo is not None
        names = {n.name for n in self.topo.nodes}

        def nodes() -> dict[str, dict]:
            res = netns.run(*self.kubectl, "get", "nodes", "-o", "json", check=False)
            items = yaml.safe_load(res.stdout)["items"] if res.returncode == 0 else []
            return {n["metadata"]["name"]: n for n in items if n["metadata"]["name"] in names}

        def ready(node: dict) -> bool:
            return any(c.get("type") == "Ready" and c.get("status") == "True"
                       for c in (node.get("status") or {}).get("conditions") or [])

        def tainted(node: dict) -> bool:
            return any(t.get("key") == realk8s.NOT_READY_TAINT for t in (node.get("spec") or {}).get("taints") or [])

        def exited() -> str:
            return ", ".join(n for n, p in self.procs if n.startswith("kubelet/") and p.poll() is not None)

        def all_ready() -> bool:
            found = nodes()
            return len(found) == len(names) and all(map(ready, found.values()))

        try:
            poll.until(lambda: exited() or all_ready(), timeout, 0.5, "the real kubelets' Nodes to be Ready")
            if exited():
                raise RuntimeError(f"kubelet exited: {exited()} (see {self.state}/node*/kubelet.log)")
            poll.until(lambda: not any(map(tainted, nodes().values())), 60, 0.5,
                       f"the {realk8s.NOT_READY_TAINT} taint to be lifted")
        except AssertionError as err:
            still = {name: (ready(n), tainted(n)) for name, n in nodes().items()}
            hint = (" — the control plane's kube-controller-manager must run the nodelifecycle controller "
                    f"(or set {realk8s.ENV['controller_manager']})" if any(t for _, t in still.values()) else "")
            raise RuntimeError(f"{err}; Nodes (ready, tainted): {still}{hint}; "
                               f"see {self.state}/node*/kubelet.log") from None

    def _start_controller_manager(self, binary: str) -> None:
        """For a control plane without one: the controllers real nodes need, on the host."""
        args = [binary, "--kubeconfig", str(self.kubeconfig), "--leader-elect=false", "--secure-port=0",
                "--use-service-account-credentials=false", "--v=2",
                "--controllers", ",".join(realk8s.controllers(binary, real_kubelets=bool(self.real.kubelet),
                                                              token_controller=False))]
        ca = _cluster_of(self.flat_kubeconfig).get("certificate-authority-data")
        if ca:
            # What the root CA publisher puts into every namespace's kube-root-ca.crt.
            path = self.state / "cluster-ca.crt"
            path.write_bytes(base64.b64decode(ca))
            args += ["--root-ca-file", str(path)]
        proc = self._spawn("controller-manager", args, "controller-manager.log")
        # Admission refuses every pod of a namespace until its `default` ServiceAccount exists.
        try:
            poll.until(lambda: proc.poll() is not None or netns.run(
                *self.kubectl, "get", "serviceaccount", "default", "-n", "default", check=False).returncode == 0,
                60, 0.5, "the default ServiceAccount")
        except AssertionError as err:
            raise RuntimeError(f"{err} (see {self.state / 'controller-manager.log'})") from None
        if proc.poll() is not None:
            raise RuntimeError(f"kube-controller-manager exited (see {self.state / 'controller-manager.log'})")

    def _start_bridgenet(self, bin_dir: pathlib.Path) -> None:
        assert self.topo is not None
        agent, plugin, operator = (bin_dir / n for n in ("bridgenet-agent", "bridgenet", "bridgenet-operator"))
        if operator.exists():
            if self.external:
                self.lease_created = not netns.run(*self.kubectl, "get", "lease", "-n", "default", _LEASE,
                                                   "--ignore-not-found", "-o", "name").stdout.strip()
            self._start_operator(operator)
        else:
            self.log(f"sandbox: no {operator}; the operator is not started")
        if not (agent.exists() and plugin.exists()):
            self.log(f"sandbox: no {agent} or {plugin}; node agents are not started")
            return
        for node, ctr in zip(self.topo.nodes, self.runtimes):
            # Chained after the primary network, as the agent's DaemonSet installs it on a real
            # node (the entry is the agent's own `plugin_entry`, so its installer finds it right).
            ctr.primary_network(f"10.250.{node.index + 1}.0/24",
                                chained=[{"type": "bridgenet", "socket": str(ctr.sock_dir / "cni.sock")}])
            self._start_agent(node, ctr, agent, plugin)

    def _start_operator(self, operator: pathlib.Path) -> None:
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        self._spawn("operator", [str(operator), "--metrics-addr", f"127.0.0.1:{_free_port()}",
                                 "--lease-namespace", "default", "--lease-name", _LEASE,
                                 "--identity", "sandbox-operator", "--cluster-cidrs", "10.250.0.0/16"],
                    "operator.log", env=env)

    def _start_agent(self, node: netns.Node, ctr: containerd.Containerd, agent: pathlib.Path,
                     plugin: pathlib.Path) -> None:
        ndir = self.state / node.name
        ctr.install_plugin(plugin)
        # The resolvers' upstream through the environment, never as a flag: an agent without the
        # flag ignores the variable, where it would refuse an unknown flag. Unset, the agent would
        # take the node's resolv.conf — the host's nameservers, which the sandbox must not use.
        # MALLOC_ARENA_MAX as the chart's DaemonSet sets it (see agent-daemonset.yaml).
        node_env = {**os.environ, "KUBECONFIG": str(self.node_kubeconfig),
                    "BRIDGENET_DNS_UPSTREAM": self.upstream_dns, "MALLOC_ARENA_MAX": "2"}
        args = [str(agent), "--node-name", node.name, "--state-dir", str(ndir / "agent"),
                "--socket", str(ctr.sock_dir / "cni.sock"), "--cni-bin-dir", str(ctr.cni_bin),
                "--cni-conf-dir", str(ctr.cni_conf), "--cri-endpoint", ctr.endpoint,
                "--health-addr", f"{node.ip}:9091"]

        def start_agent(node=node, args=args, ndir=ndir):
            proc = node.popen(args, log_path=str(ndir / "agent.log"), env={**node_env, "NODE_NAME": node.name})
            self.procs.append((f"agent/{node.name}", proc))
            return proc

        start_agent()
        self.recipes[f"agent/{node.name}"] = start_agent

    def upgrade(self, name: str, bin_dir: pathlib.Path) -> None:
        """Replaces `operator` or `agent/<node>` by the binary of the same name in `bin_dir` (an
        agent with its node's CNI plugin), stopping the old process first, as a rolling upgrade
        of the Deployment or DaemonSet does."""
        assert self.topo is not None
        self._stop(name)
        if name == "operator":
            self._start_operator(bin_dir / "bridgenet-operator")
            return
        node_name = name.removeprefix("agent/")
        for node, ctr in zip(self.topo.nodes, self.runtimes):
            if node.name == node_name:
                self._start_agent(node, ctr, bin_dir / "bridgenet-agent", bin_dir / "bridgenet")
                return
        raise KeyError(name)

    # -- what the end-to-end suite does to a running sandbox --------------------------------------

    def restart(self, name: str, hard: bool = False) -> subprocess.Popen:
        """Stops a process (`operator`, `agent/node1`, `kubelet/node2`, ...) — SIGKILL when
        hard, like a crash — and starts it again the same way."""
        self._stop(name, hard)
        return self.recipes[name]()

    def _stop(self, name: str, hard: bool = False) -> None:
        for entry in [e for e in self.procs if e[0] == name]:
            proc = entry[1]
            if proc.poll() is None:
                proc.kill() if hard else proc.terminate()
                proc.wait(15)
            self.procs.remove(entry)

    def remove_node(self, name: str) -> None:
        """A node goes away: its processes and runtime stop, its namespace is deleted, and its
        Node object is removed, as when a node is drained and deleted."""
        assert self.topo is not None
        for entry in [e for e in self.procs if e[0].endswith(f"/{name}")]:
            if entry[1].poll() is None:
                entry[1].terminate()
                entry[1].wait(15)
            self.procs.remove(entry)
        for ctr in [c for c in self.runtimes if c.node.name == name]:
            ctr.stop()
            self.runtimes.remove(ctr)
        for kubelet in [k for k in self.kubelets if k.node.name == name]:
            kubelet.cleanup()
            self.kubelets.remove(kubelet)
        self.topo.remove_node(name)
        netns.run(*self.kubectl, "delete", "node", name, "--wait=false")

    # -- teardown -------------------------------------------------------------------------------

    def close(self) -> None:
        # Kubelets and agents first (they talk to containerd and the API), then the runtimes,
        # then the namespaces, and the API server (or the forwarder to it) last.
        for name, proc in reversed(self.procs):
            if name in _LAST or proc.poll() is not None:
                continue
            proc.terminate()
        for name, proc in self.procs:
            if name not in _LAST:
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        for ctr in self.runtimes:
            ctr.stop()
        self.runtimes = []
        # Real kubelets' mounts and files, once nothing uses them; the host's tunables last.
        for kubelet in self.kubelets:
            kubelet.cleanup()
        self.kubelets = []
        if self.host_state is not None:
            self.host_state.release()
            self.host_state = None
        if self.topo is not None:
            if self.external:
                self.topo.unregister(self.kubectl)
                if self.lease_created:
                    netns.run(*self.kubectl, "delete", "lease", "-n", "default", _LEASE, "--ignore-not-found",
                              "--wait=false", check=False)
                    self.lease_created = False
            self.topo.close()
            self.topo = None
        for name, proc in self.procs:
            if name in _LAST and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.procs = []
        self.lock.__exit__(None, None, None)

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _cluster_of(flat: dict) -> dict:
    """The current context's cluster entry of a flattened, minified kubeconfig."""
    ctx = next((c["context"] for c in flat.get("contexts") or [] if c["name"] == flat.get("current-context")), {})
    return next((c["cluster"] for c in flat.get("clusters") or [] if c["name"] == ctx.get("cluster")), {})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m bnsandbox.up", description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=2)
    p.add_argument("--state-dir", default="/tmp/bnt-sb")
    p.add_argument("--prefix", default=netns.DEFAULT_PREFIX, help="network namespace name prefix")
    p.add_argument("--kubeconfig", default=None,
                   help="use this existing API server instead of the emulator (default: $KUBECONFIG if set "
                        "and --emulator is not given)")
    p.add_argument("--emulator", action="store_true", help="always start the emulator, even if KUBECONFIG is set")
    p.add_argument("--no-runtime", action="store_true", help="nodes without containerd and kubelet stand-in")
    p.add_argument("--bin-dir", help="start bridgenet-operator, bridgenet-agent and the bridgenet plugin from here")
    p.add_argument("--ready-file", help="write the kubeconfig path here once everything is up")
    helps = {"kubelet": "run this kubelet on every node instead of the stand-in",
             "scheduler": "run this kube-scheduler instead of the stand-in",
             "controller_manager": "also run this kube-controller-manager, for a control plane without one"}
    for field, var in realk8s.ENV.items():
        p.add_argument(f"--real-{field.replace('_', '-')}", dest=field, default=os.environ.get(var) or None,
                       help=f"{helps[field]} (default: ${var}; only with an existing API server)")
    args = p.parse_args(argv)

    external = args.kubeconfig or (None if args.emulator else os.environ.get("KUBECONFIG"))
    real = realk8s.RealComponents(args.kubelet, args.scheduler, args.controller_manager)
    try:
        real.check(existing_api_server=bool(external), runtime=not args.no_runtime)
    except realk8s.RealComponentError as err:
        p.error(str(err))
    stop = {"now": False}

    def on_signal(signum, frame):
        stop["now"] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    sandbox = Sandbox(args.nodes, pathlib.Path(args.state_dir), args.prefix, external, not args.no_runtime,
                      pathlib.Path(args.bin_dir) if args.bin_dir else None,
                      log=lambda m: print(m, flush=True), real=real)
    try:
        assert sandbox.topo is not None
        nodes = ", ".join(f"{n.name}={n.ip}" for n in sandbox.topo.nodes)
        print(f"sandbox up: {args.nodes} nodes ({nodes}), API server {'given' if external else 'emulated'}"
              f"{'; real ' + real.describe() if real else ''}; export KUBECONFIG={sandbox.kubeconfig}", flush=True)
        if external:
            print(f"nodes reach it through the forwarder on {netns.HOST_IP}: {sandbox.node_kubeconfig}", flush=True)
        if args.ready_file:
            pathlib.Path(args.ready_file).write_text(str(sandbox.kubeconfig) + "\n")
        while not stop["now"]:
            time.sleep(0.2)
        return 0
    finally:
        sandbox.close()
        print("sandbox down: namespaces removed" + ("" if external else ", emulator stopped"), flush=True)


if __name__ == "__main__":
    sys.exit(main())
