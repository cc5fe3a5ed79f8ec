"""A real Kubernetes control plane on this machine's loopback, for verifying bridgenet against
the real thing: etcd, kube-apiserver (TLS, a static token file, RBAC authorization) and
kube-controller-manager, started from binaries whose paths the caller gives (nothing of
Kubernetes is in this repository). Everything lives in one state directory and listens on
127.0.0.1 only.

    KUBE_APISERVER=... KUBE_CONTROLLER_MANAGER=... ETCD=... \\
        python3 cluster.py --state-dir /tmp/bn-real   # up until Ctrl-C; prints the kubeconfig
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "sandbox"))
# The controllers the sandbox's pods need, the same list it uses when it runs a controller
# manager of its own (see realk8s.controllers: with real kubelets also `nodelifecycle`).
from bnsandbox import realk8s  # noqa: E402

SERVICE_CIDR = "10.96.0.0/16"
TOKEN = "bridgenet-real-apiserver-test-admin"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def openssl(*args: str, cwd: pathlib.Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


class Cluster:
    """The control plane; `close()` (or leaving the `with`) stops it and removes its state."""

    def __init__(self, state: pathlib.Path, apiserver: str, controller_manager: str | None, etcd: str,
                 real_kubelets: bool = False, log=print) -> None:
        self.state = state
        self.controllers = realk8s.controllers(controller_manager, real_kubelets, token_controller=True) \
            if controller_manager else []
        self.bins = {"apiserver": apiserver, "controller-manager": controller_manager, "etcd": etcd}
        self.log = log
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.kubeconfig = state / "kubeconfig"

    # -- start ----------------------------------------------------------------------------------

    def start(self) -> "Cluster":
        shutil.rmtree(self.state, ignore_errors=True)
        self.state.mkdir(parents=True)
        try:
            self._pki()
            self._write_kubeconfig()
            self._start_etcd()
            self._start_apiserver()
            if self.bins["controller-manager"]:
                self._start_controller_manager()
                self._wait("the default ServiceAccount", lambda: self._kubectl_ok(
                    "get", "serviceaccount", "default", "-n", "default"), 60)
        except BaseException:
            self.close()
            raise
        return self

    def _pki(self) -> None:
        pki = self.state / "pki"
        pki.mkdir()
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
                "-days", "2", "-subj", "/CN=bridgenet-real-apiserver-test-ca", cwd=pki)
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
                "-subj", "/CN=kube-apiserver", cwd=pki)
        (pki / "san.ext").write_text(
            "subjectAltName=IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,"
            "DNS:kubernetes.default,DNS:kubernetes.default.svc\n")
        openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", "server.crt", "-days", "2", "-extfile", "san.ext", cwd=pki)
        openssl("genrsa", "-out", "sa.key", "2048", cwd=pki)
        openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)
        # One admin identity; the components under test act as their ServiceAccounts through
        # impersonation (`--as`), or with their own tokens.
        (pki / "tokens.csv").write_text(f"{TOKEN},admin,admin-uid,system:masters\n")
        self.pki = pki

    def _write_kubeconfig(self) -> None:
        self.kubeconfig.write_text(
            "apiVersion: v1\nkind: Config\n"
            f"clusters:\n- name: real\n  cluster:\n    server: {self.url}\n"
            f"    certificate-authority: {self.pki / 'ca.crt'}\n"
            f"users:\n- name: admin\n  user:\n    token: {TOKEN}\n"
            "contexts:\n- name: real\n  context: {cluster: real, user: admin}\n"
            "current-context: real\n")
        self.kubeconfig.chmod(0o600)

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.state / f"{name}.log", "ab")  # noqa: SIM115 - lives as long as the child
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.procs.append((name, proc))
        return proc

    def _start_etcd(self) -> None:
        client, peer = free_port(), free_port()
        self.etcd_url = f"http://127.0.0.1:{client}"
        self._spawn("etcd", [
            self.bins["etcd"], "--name", "bridgenet-test", "--data-dir", str(self.state / "etcd"),
            "--listen-client-urls", self.etcd_url, "--advertise-client-urls", self.etcd_url,
            "--listen-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-cluster", f"bridgenet-test=http://127.0.0.1:{peer}",
            "--listen-metrics-urls", f"http://127.0.0.1:{free_port()}",
            "--unsafe-no-fsync",
        ])
        self._wait("etcd", lambda: self._http_ok(f"{self.etcd_url}/health"), 30)

    def _start_apiserver(self) -> None:
        pki = self.pki
        self._spawn("apiserver", [
            self.bins["apiserver"],
            "--etcd-servers", self.etcd_url,
            "--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1",
            "--secure-port", str(self.port),
            "--tls-cert-file", str(pki / "server.crt"), "--tls-private-key-file", str(pki / "server.key"),
            "--client-ca-file", str(pki / "ca.crt"),
            "--token-auth-file", str(pki / "tokens.csv"),
            "--authorization-mode", "RBAC",
            # The chart sets blockOwnerDeletion on NodeBridges: this plugin checks the operator
            # may update the owner's finalizers, as production clusters often enforce.
            "--enable-admission-plugins", "NodeRestriction,OwnerReferencesPermissionEnforcement",
            "--service-cluster-ip-range", SERVICE_CIDR,
            "--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
            "--service-account-key-file", str(pki / "sa.pub"),
            "--service-account-signing-key-file", str(pki / "sa.key"),
            "--allow-privileged=true",
            "--profiling=false",
            # The `kubernetes` Service cannot point at loopback; nothing here needs it.
            "--endpoint-reconciler-type=none",
        ])
        self._wait("kube-apiserver /readyz", lambda: self._http_ok(f"{self.url}/readyz", tls=True), 120)

    def _start_controller_manager(self) -> None:
        pki = self.pki
        self._spawn("controller-manager", [
            self.bins["controller-manager"],
            "--kubeconfig", str(self.kubeconfig),
            "--authentication-kubeconfig", str(self.kubeconfig),
            "--authorization-kubeconfig", str(self.kubeconfig),
            "--bind-address", "127.0.0.1", "--secure-port", str(free_port()),
            "--controllers", ",".join(self.controllers),
            "--leader-elect=false",
            "--service-account-private-key-file", str(pki / "sa.key"),
            "--root-ca-file", str(pki / "ca.crt"),
            "--service-cluster-ip-range", SERVICE_CIDR,
            "--use-service-account-credentials=false",
        ])

    # -- helpers ----------------------------------------------------------------------------------

    def _http_ok(self, url: str, tls: bool = False) -> bool:
        ctx = ssl.create_default_context(cafile=str(self.pki / "ca.crt")) if tls else None
        req = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"} if tls else {})
        try:
            with urllib.request.urlopen(req, timeout=2, context=ctx) as r:
                return r.status == 200
        except (OSError, ValueError):
            return False

    def _kubectl_ok(self, *args: str) -> bool:
        return subprocess.run(self.kubectl(*args), capture_output=True).returncode == 0

    def kubectl(self, *args: str) -> list[str]:
        return [shutil.which("kubectl") or "kubectl", "--kubeconfig", str(self.kubeconfig), *args]

    def _wait(self, what: str, ok, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not ok():
            dead = [n for n, p in self.procs if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                logs = "\n".join(f"--- {n}.log (tail)\n{self.tail(n)}" for n, _ in self.procs)
                raise RuntimeError(f"{what} not up ({'exited: ' + ', '.join(dead) if dead else 'timeout'})\n{logs}")
            time.sleep(0.2)

    def tail(self, name: str, lines: int = 30) -> str:
        path = self.state / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    # -- stop -------------------------------------------------------------------------------------

    def close(self) -> None:
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.procs = []

    def __enter__(self) -> "Cluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


def from_env(state: pathlib.Path, log=print) -> Cluster:
    """A cluster from `KUBE_APISERVER`, `KUBE_CONTROLLER_MANAGER` and `ETCD`, ready for the
    sandbox's real kubelets when `SANDBOX_REAL_KUBELET` is set."""
    return Cluster(state, os.environ["KUBE_APISERVER"], os.environ.get("KUBE_CONTROLLER_MANAGER") or None,
                   os.environ["ETCD"], real_kubelets=bool(os.environ.get("SANDBOX_REAL_KUBELET")), log=log)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--state-dir", default="/tmp/bn-real-apiserver")
    p.add_argument("--ready-file", help="write the kubeconfig path here once the control plane is up")
    args = p.parse_args(argv)
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    signal.signal(signal.SIGINT, lambda *_: stop.update(now=True))
    with from_env(pathlib.Path(args.state_dir)) as cluster:
        print(f"up: export KUBECONFIG={cluster.kubeconfig}", flush=True)
        if args.ready_file:
            pathlib.Path(args.ready_file).write_text(f"{cluster.kubeconfig}\n")
        while not stop["now"]:
            time.sleep(0.2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
