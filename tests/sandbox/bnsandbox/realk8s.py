"""Real Kubernetes components in the sandbox instead of the stand-ins: the kubelet (one per node),
kube-scheduler and, for a control plane that has none, kube-controller-manager — from binaries
whose paths `SANDBOX_REAL_KUBELET`, `SANDBOX_REAL_SCHEDULER` and `SANDBOX_REAL_CONTROLLER_MANAGER`
name (nothing of Kubernetes is in this repository). Only with an existing API server: the
emulator does none of what they need (leases, TokenRequest, admission, graceful deletion).

A real kubelet runs inside its node's network namespace but in the host's mount namespace, as the
node's containerd does, so several things it does reach the host; `RealKubelet.cleanup` and
`HostState` undo each of them: its root dir (with the tmpfs and bind mounts of pod volumes, and
the rshared bind mount of the root itself), its container log symlinks in `/var/log/containers`
(a fixed path), and the kernel tunables it sets on start (`vm.overcommit_memory`, `kernel.panic`,
... — host-wide, not per network namespace). Several sandboxes may hold them at once; the last
one out restores them, and a killed run's leftovers are undone by the next one with its prefix.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pathlib
import shutil
import subprocess
import sys
from dataclasses import dataclass
from typing import Iterator, Mapping

import yaml

from .netns import Node

ENV = {"kubelet": "SANDBOX_REAL_KUBELET", "scheduler": "SANDBOX_REAL_SCHEDULER",
       "controller_manager": "SANDBOX_REAL_CONTROLLER_MANAGER"}
# What the kubelet sets on start unless `protectKernelDefaults` (which would make it refuse to
# start on a host with other values): pkg/kubelet/cm/container_manager_linux.go, setupKernelTunables.
KUBELET_SYSCTLS = ("vm.overcommit_memory", "vm.panic_on_oom", "kernel.panic", "kernel.panic_on_oops",
                   "kernel.keys.root_maxkeys", "kernel.keys.root_maxbytes")
# Where the kubelet links every container's log, whatever its configuration says.
CONTAINER_LOG_LINKS = pathlib.Path("/var/log/containers")
# The address kube-dns would have in the real-apiserver-test's service range; nothing answers
# there. Without a clusterDNS the kubelet gives every ClusterFirst pod a Warning Event.
CLUSTER_DNS = "10.96.0.10"
SANDBOX_LABEL = "bridgenet.io/sandbox=true"
NOT_READY_TAINT = "node.kubernetes.io/not-ready"
# One record for every sandbox with real kubelets on this host (see HostState).
STATE_FILE = pathlib.Path("/run/bnt-sb-real-kubelets.json")


class RealComponentError(ValueError):
    """A SANDBOX_REAL_* setting the sandbox cannot honour; the message says why."""


@dataclass(frozen=True)
class RealComponents:
    """Paths of the real binaries to run; None keeps the stand-in (or, for the controller
    manager, relies on the control plane's own)."""

    kubelet: str | None = None
    scheduler: str | None = None
    controller_manager: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> "RealComponents":
        return cls(**{field: environ.get(var) or None for field, var in ENV.items()})

    def __bool__(self) -> bool:
        return any((self.kubelet, self.scheduler, self.controller_manager))

    def describe(self) -> str:
        return ", ".join(f"{ENV[f]}={getattr(self, f)}" for f in ENV if getattr(self, f))

    def check(self, existing_api_server: bool, runtime: bool = True) -> None:
        """Refuses what cannot work, before anything is started."""
        if not self:
            return
        if not existing_api_server:
            raise RealComponentError(
                f"{self.describe()}: real Kubernetes components need an existing API server "
                "(SANDBOX_KUBECONFIG, or --kubeconfig / KUBECONFIG for bnsandbox.up); the emulator has no "
                "leases, TokenRequest, admission or graceful deletion for them")
        if self.kubelet and not runtime:
            raise RealComponentError(f"{ENV['kubelet']} needs the nodes' containerd: drop --no-runtime")
        for field, var in ENV.items():
            path = getattr(self, field)
            if path and not (os.path.isfile(path) and os.access(path, os.X_OK)):
                raise RealComponentError(f"{var}={path} is not an executable file")


def controllers(binary: str, real_kubelets: bool, token_controller: bool) -> list[str]:
    """The kube-controller-manager controllers bridgenet's sandbox needs: namespaces and owner
    references, the `default` ServiceAccount (admission refuses pods before it exists), the
    pod garbage collector (pods of a deleted node), `kube-root-ca.crt` in every namespace (a
    pod's projected service-account volume reads it), and with real kubelets the node lifecycle
    controller (a kubelet registers its Node with a not-ready taint that only it lifts; with the
    stand-ins, which renew no Lease, it would taint every Node unreachable). An OpenShift-built
    controller manager also publishes `openshift-service-ca.crt`, which that fork's admission
    adds to the same projected volume: without it no pod's volumes mount."""
    names = ["garbagecollector", "namespace", "serviceaccount", "podgc", "root-ca-cert-publisher"]
    if token_controller:
        names.append("serviceaccount-token")
    if real_kubelets:
        names.append("nodelifecycle")
    if "service-ca-certificate-publisher-controller" in _help(binary):
        names.append("service-ca-cert-publisher")
    return names


def _help(binary: str) -> str:
    res = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=60)
    return res.stdout + res.stderr


def kubelet_config(node_ip: str, cri_endpoint: str, root: pathlib.Path, pod_logs: pathlib.Path) -> dict:
    """The KubeletConfiguration of one sandbox node."""
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        # The API server (with the admin token) is the only client: no authentication, and the
        # kubelet's port only on the node's address inside its namespace.
        "address": node_ip,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "authentication": {"anonymous": {"enabled": True}, "webhook": {"enabled": False}},
        "authorization": {"mode": "AlwaysAllow"},
        "containerRuntimeEndpoint": cri_endpoint,
        # The node's containerd runs runc with cgroupfs; these machines have cgroup v1, which
        # 1.36 refuses unless told otherwise.
        "cgroupDriver": "cgroupfs",
        "failCgroupV1": False,
        "failSwapOn": False,
        # -999 needs CAP_SYS_RESOURCE, which these VMs lack.
        "oomScoreAdj": 0,
        # Two kubelets on one host share the cgroup hierarchy: with per-QoS cgroups each would
        # remove the other's pod cgroups as orphans. Pods then go where containerd puts them.
        "cgroupsPerQOS": False,
        "enforceNodeAllocatable": [],
        # No registry to pull an image back from once collected.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "clusterDNS": [CLUSTER_DNS],
        "clusterDomain": "cluster.local",
        # Everything under the node's state, except /var/log/containers (fixed; cleaned up).
        "podLogsDir": str(pod_logs),
        "volumePluginDir": str(root / "volume-plugins"),
    }


def mounts_under(path: pathlib.Path) -> list[str]:
    """Mount points at `path` or below it, as this process sees them."""
    resolved = str(path.resolve())
    targets = []
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            target = line.split()[4]
            for esc, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
                target = target.replace(esc, char)
            if target == resolved or target.startswith(resolved + "/"):
                targets.append(target)
    return targets


def unmount_tree(path: pathlib.Path) -> list[str]:
    """Unmounts `path` and every mount below it, deepest first, lazily (a mount still busy
    goes once its last user does); returns what was mounted."""
    targets = mounts_under(path)
    # A path mounted twice (the kubelet's rshared bind of its root over itself) is listed twice.
    for target in sorted(targets, key=len, reverse=True):
        subprocess.run(["umount", "-l", target], capture_output=True)
    return targets


def remove_log_links(pod_logs: pathlib.Path, links: pathlib.Path = CONTAINER_LOG_LINKS) -> None:
    """Removes the kubelet's links (in /var/log/containers) into `pod_logs`."""
    if not links.is_dir():
        return
    prefix = str(pod_logs) + "/"
    for link in links.iterdir():
        with contextlib.suppress(OSError):
            if link.is_symlink() and os.readlink(link).startswith(prefix):
                link.unlink()


def remove_kubelet_dirs(root: pathlib.Path, pod_logs: pathlib.Path, links: pathlib.Path = CONTAINER_LOG_LINKS) -> None:
    unmount_tree(root)
    left = mounts_under(root)
    if left:
        # Never delete through a mount (a volume's bind mount may show the host's own files),
        # and never stop the rest of a teardown over it.
        print(f"bnsandbox: still mounted, not removing {root}: {left}", file=sys.stderr)
    else:
        shutil.rmtree(root, ignore_errors=True)
    remove_log_links(pod_logs, links)


class RealKubelet:
    """One node's kubelet: its files, how it is started, and what it leaves to clean up."""

    def __init__(self, binary: str, node: Node, cri_endpoint: str, state_dir: pathlib.Path,
                 kubeconfig: pathlib.Path) -> None:
        self.binary, self.node = binary, node
        self.root = state_dir / "kubelet"
        self.pod_logs = state_dir / "pods"
        self.config_path = state_dir / "kubelet-config.yaml"
        self.log = state_dir / "kubelet.log"
        self.cri_endpoint, self.kubeconfig = cri_endpoint, kubeconfig

    def prepare(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.pod_logs.mkdir(parents=True, exist_ok=True)
        config = kubelet_config(self.node.ip, self.cri_endpoint, self.root, self.pod_logs)
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    def args(self) -> list[str]:
        return [self.binary, "--config", str(self.config_path), "--kubeconfig", str(self.kubeconfig),
                "--root-dir", str(self.root), "--hostname-override", self.node.name, "--node-ip", self.node.ip,
                "--node-labels", SANDBOX_LABEL, "--v=2"]

    def start(self) -> subprocess.Popen:
        """Starts the kubelet inside the node's network namespace; returns its process."""
        return self.node.popen(self.args(), log_path=str(self.log))

    def cleanup(self) -> None:
        """What a stopped kubelet leaves on the host: mounts and files under its root, log links."""
        remove_kubelet_dirs(self.root, self.pod_logs)


class HostState:
    """The host-wide things real kubelets change, shared by every sandbox that runs them: the
    kernel tunables as they were before the first kubelet started and whether
    /var/log/containers existed then (both restored when the last sandbox is done with them),
    and each sandbox's kubelet dirs (for a run that was killed)."""

    def __init__(self, prefix: str, path: pathlib.Path = STATE_FILE, proc_sys: pathlib.Path = pathlib.Path("/proc/sys"),
                 log_links: pathlib.Path = CONTAINER_LOG_LINKS) -> None:
        self.prefix, self.path, self.proc_sys, self.log_links = prefix, path, proc_sys, log_links

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict]:
        with open(self.path.with_suffix(".lock"), "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                record = json.loads(self.path.read_text()) if self.path.exists() else {}
            except ValueError:
                record = {}
            record.setdefault("sysctls", {})
            record.setdefault("holders", {})
            yield record
            if record["holders"]:
                tmp = self.path.with_suffix(".tmp")
                tmp.write_text(json.dumps(record, indent=1))
                os.replace(tmp, self.path)
            else:
                self.path.unlink(missing_ok=True)

    def _sysctl(self, name: str) -> pathlib.Path:
        return self.proc_sys / name.replace(".", "/")

    def acquire(self) -> None:
        """Before this sandbox's first kubelet: undoes a killed run with this prefix, then
        records the tunables (unless another sandbox already holds the originals)."""
        self.release()
        with self._locked() as record:
            if not record["holders"]:
                record["sysctls"] = {n: self._sysctl(n).read_text().strip() for n in KUBELET_SYSCTLS
                                     if self._sysctl(n).exists()}
                record["log_links_created"] = not self.log_links.exists()
            record["holders"][self.prefix] = []

    def add_kubelet(self, kubelet: RealKubelet) -> None:
        with self._locked() as record:
            record["holders"].setdefault(self.prefix, []).append([str(kubelet.root), str(kubelet.pod_logs)])

    def release(self) -> None:
        """This prefix's kubelet dirs removed (they are stopped by now), and the tunables restored
        if no other sandbox still runs kubelets."""
        with self._locked() as record:
            for root, pod_logs in record["holders"].pop(self.prefix, []):
                remove_kubelet_dirs(pathlib.Path(root), pathlib.Path(pod_logs), self.log_links)
            if not record["holders"]:
                for name, value in record["sysctls"].items():
                    with contextlib.suppress(OSError):
                        self._sysctl(name).write_text(value + "\n")
                record["sysctls"] = {}
                if record.pop("log_links_created", False):
                    with contextlib.suppress(OSError):
                        self.log_links.rmdir()  # only if empty: links of others stay
