"""End-to-end fixtures: one two-node sandbox with the real operator and agents per session.

The sandbox runs the API emulator unless `SANDBOX_KUBECONFIG` names an existing API server's
kubeconfig (as for `make demo`); its Nodes are unregistered there at the end. Plain `KUBECONFIG`
is deliberately not enough: the suite registers Nodes and creates objects, which must not happen
to whatever cluster a shell happens to point at."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import time
import uuid

import pytest

SANDBOX = pathlib.Path(__file__).resolve().parents[1]
REPO = SANDBOX.parents[1]
sys.path.insert(0, str(SANDBOX))

from bnsandbox import up  # noqa: E402

BIN_DIR = pathlib.Path(os.environ.get("BRIDGENET_BIN_DIR", REPO / "target" / "debug"))
EXTERNAL = os.environ.get("SANDBOX_KUBECONFIG") or None
PREFIX = "bnt-sb-e2e-"


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

    def kubectl(self, *args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
        res = subprocess.run([*self.sb.kubectl, *args], capture_output=True, text=True, input=input, timeout=120)
        if check and res.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)}: {res.stderr}")
        return res

    def apply(self, obj: dict | str) -> None:
        self.kubectl("apply", "-f", "-", input=obj if isinstance(obj, str) else json.dumps(obj))

    def get(self, *args: str) -> dict:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def exec(self, pod: str, *cmd: str, namespace: str = "default") -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "bnsandbox.podexec", "--state-dir", str(self.state), "-n",
                               namespace, pod, "--", *cmd], cwd=SANDBOX, capture_output=True, text=True, timeout=60)

    def ping(self, pod: str, ip: str, namespace: str = "default") -> bool:
        # At most three packets within three seconds (the first may wait for ARP across the
        # overlay); success on any reply. Bounded, and only to addresses inside the sandbox.
        return self.exec(pod, "ping", "-c", "3", "-w", "3", "-W", "1", ip, namespace=namespace).returncode == 0

    def network(self, name: str, subnet: str, **spec) -> None:
        self.apply({"apiVersion": "bridgenet.io/v1alpha1", "kind": "BridgeNetwork", "metadata": {"name": name},
                    "spec": {"subnet": subnet, **spec}})

    def pod(self, name: str, networks: str | None = None, node: str | None = None, namespace: str = "default") -> None:
        meta: dict = {"name": name, "namespace": namespace}
        if networks is not None:
            meta["annotations"] = {"bridgenet.io/networks": networks}
        spec: dict = {"containers": [{"name": "main", "image": "busybox:1.36", "command": ["sleep", "3600"]}]}
        if node:
            spec["nodeSelector"] = {"kubernetes.io/hostname": node}
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


def eventually(pred, timeout: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:5]}"


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    reason = _missing()
    if reason:
        pytest.skip(reason)
    # Sandbox holds the prefix's lock: a concurrent run waits for this one.
    sandbox = up.Sandbox(2, tmp_path_factory.mktemp("sandbox"), prefix=PREFIX, kubeconfig=EXTERNAL, bin_dir=BIN_DIR, log=lambda m: None)
    try:
        yield Cluster(sandbox)
    finally:
        sandbox.close()
