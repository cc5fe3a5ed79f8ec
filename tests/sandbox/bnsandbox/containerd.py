"""A private containerd per sandbox node, started inside the node's network namespace.

Everything it writes lives under the node's state directory — root, state, sockets, runc's root
(which otherwise is shared between containerd instances), CNI config and binaries — so several
nodes and the host's own containerd never meet. The CRI plugin is configured the way these
machines need it (see shared/notes/TEST-ENVIRONMENT.md): `restrict_oom_score_adj` (no
CAP_SYS_RESOURCE), overlayfs, cgroupfs, and a `bin_dir` that holds `loopback`.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import time

from . import images
from .netns import Node, run

REFERENCE_PLUGINS = pathlib.Path("/usr/lib/cni")


class ContainerdError(RuntimeError):
    pass


def _mounts_under(path: pathlib.Path) -> list[str]:
    prefix = str(path.resolve()) + "/"
    out = []
    with open("/proc/self/mounts", encoding="utf-8") as f:
        for line in f:
            target = line.split()[1].replace("\\040", " ")
            if target.startswith(prefix):
                out.append(target)
    return out


def socket_dir(state_dir: pathlib.Path) -> pathlib.Path:
    """Where a node's sockets live: a short path derived from its state dir."""
    digest = hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:12]
    return pathlib.Path("/run") / f"bnt-sb-{digest}"


class Containerd:
    def __init__(self, node: Node, state_dir: pathlib.Path) -> None:
        self.node = node
        self.dir = state_dir / "containerd"
        # Unix socket paths are limited to ~104 bytes, and state dirs (pytest's tmp) are long:
        # sockets go to a short directory named after the state dir.
        self.sock_dir = socket_dir(state_dir)
        self.socket = self.sock_dir / "containerd.sock"
        self.cni_bin = state_dir / "cni" / "bin"
        self.cni_conf = state_dir / "cni" / "net.d"
        self.log = state_dir / "containerd.log"
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        """The CRI endpoint, as the agent's `--cri-endpoint` takes it."""
        return f"unix://{self.socket}"

    def config(self) -> str:
        d = self.dir
        return f"""version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
                    "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{self.socket}"

[ttrpc]
  address = "{self.socket}.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{images.PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  enable_selinux = false
  # Pod network namespaces under our state dir rather than /var/run/netns: whatever a crash
  # leaves there is ours, and stop() unmounts it.
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{d}/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{self.cni_bin}"
    conf_dir = "{self.cni_conf}"
    max_conf_num = 1
"""

    def prepare(self) -> None:
        for p in (self.dir, self.sock_dir, self.cni_bin, self.cni_conf):
            p.mkdir(parents=True, exist_ok=True)
        (self.dir / "config.toml").write_text(self.config())
        # The CRI plugin brings up lo in every pod itself through `loopback`.
        self.install_plugin(REFERENCE_PLUGINS / "loopback")

    def install_plugin(self, binary: pathlib.Path, name: str | None = None) -> None:
        dest = self.cni_bin / (name or binary.name)
        tmp = dest.with_suffix(".tmp")
        shutil.copy2(binary, tmp)
        os.replace(tmp, dest)

    def primary_network(self, pod_cidr: str, chained: list[dict] | None = None) -> pathlib.Path:
        """The node's primary pod network: the reference `bridge` plugin with `host-local`
        addresses from pod_cidr (kept under the node's state dir), then any chained plugins
        (bridgenet's, as in a real cluster)."""
        for plugin in ("bridge", "host-local"):
            self.install_plugin(REFERENCE_PLUGINS / plugin)
        conf = {
            "cniVersion": "1.0.0",
            "name": "sandbox",
            "plugins": [
                {"type": "bridge", "bridge": "cni0", "isGateway": True, "ipMasq": False,
                 "ipam": {"type": "host-local", "ranges": [[{"subnet": pod_cidr}]],
                          "routes": [{"dst": "0.0.0.0/0"}],
                          "dataDir": str(self.cni_conf.parent / "ipam")}},
                *(chained or []),
            ],
        }
        path = self.cni_conf / "10-sandbox.conflist"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(conf, indent=2))
        os.replace(tmp, path)
        return path

    def start(self, timeout: float = 30.0) -> None:
        self.prepare()
        self.proc = self.node.popen(["containerd", "--config", str(self.dir / "config.toml")], log_path=str(self.log))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ContainerdError(f"containerd on {self.node.name} exited; see {self.log}")
            if self.socket.exists() and self.ctr("version", check=False).returncode == 0:
                return
            time.sleep(0.1)
        raise ContainerdError(f"containerd on {self.node.name} did not answer within {timeout}s; see {self.log}")

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return run("ctr", "--address", str(self.socket), *args, check=check)

    def import_images(self, archive: pathlib.Path) -> None:
        self.ctr("-n", "k8s.io", "images", "import", str(archive))

    def cri_ready(self) -> bool:
        out = self.ctr("plugins", "ls", check=False).stdout
        return any(line.split()[:2] == ["io.containerd.grpc.v1", "cri"] and line.split()[-1] == "ok"
                   for line in out.splitlines() if line.strip())

    def stop(self) -> None:
        """Stops containerd and removes what it left: its shims (their own process groups),
        runc's containers, mounts under its directory, and the directory."""
        if self.proc is not None and self.proc.poll() is None:
            # Through CRI first, so the CNI plugins get their DEL and release what they hold.
            self._remove_sandboxes()
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        runc_root = self.dir / "runc"
        if runc_root.exists():
            listed = run("runc", "--root", str(runc_root), "list", "-q", check=False).stdout.split()
            for cid in listed:
                run("runc", "--root", str(runc_root), "delete", "--force", cid, check=False)
        self._kill_shims()
        for target in sorted(_mounts_under(self.dir), key=len, reverse=True):
            run("umount", "-l", target, check=False)
        shutil.rmtree(self.dir, ignore_errors=True)
        shutil.rmtree(self.sock_dir, ignore_errors=True)

    def _remove_sandboxes(self) -> None:
        from . import cri  # grpcio is only needed once pods run

        try:
            runtime = cri.RuntimeClient(self.endpoint, timeout=20)
        except Exception:  # noqa: BLE001 - best effort on the way down
            return
        try:
            for sb in runtime.list_pod_sandbox():
                for call in (runtime.stop_pod_sandbox, runtime.remove_pod_sandbox):
                    try:
                        call(sb.id)
                    except cri.CriError:
                        pass
        except cri.CriError:
            pass
        finally:
            runtime.close()

    def _kill_shims(self) -> None:
        # Shims are started with their own session, so they outlive containerd; they carry our
        # socket path on their command line, which tells ours from anybody else's.
        marker = str(self.socket).encode()
        for pid_dir in pathlib.Path("/proc").iterdir():
            if not pid_dir.name.isdigit():
                continue
            try:
                cmdline = (pid_dir / "cmdline").read_bytes()
            except OSError:
                continue
            if b"containerd-shim" in cmdline and marker in cmdline:
                try:
                    os.kill(int(pid_dir.name), 9)
                except ProcessLookupError:
                    pass
