"""Runs a command in a sandbox Pod, like `kubectl exec`: the Pod's sandbox is found through the
CRI of the node it runs on. By default the host's static busybox runs in the sandbox's network
namespace only (the Pod's image is that busybox anyway) — enough for network checks, but files
such as /etc/resolv.conf are the host's. With `--in-container` (or `-c NAME`) the command runs
in a container's mount and network namespaces instead: its own root filesystem and the
/etc/resolv.conf and /etc/hosts the runtime wrote for the Pod, so `nslookup NAME` asks the Pod's
nameservers.

    python3 -m bnsandbox.podexec --state-dir /tmp/bnt-sb [-n NAMESPACE] POD -- ip -4 addr
    python3 -m bnsandbox.podexec --state-dir /tmp/bnt-sb --in-container POD -- cat /etc/resolv.conf
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
from typing import Callable, TypeVar

from . import containerd, cri, images

T = TypeVar("T")


def _in_sandbox(state_dir: pathlib.Path, namespace: str, pod: str,
                fn: Callable[[cri.RuntimeClient, cri.Sandbox], T]) -> T:
    """`fn(runtime, sandbox)` for the Pod's ready sandbox, on whichever node's runtime has it."""
    for node_dir in sorted(p for p in state_dir.iterdir() if (p / "containerd").is_dir()):
        sock = containerd.socket_dir(node_dir) / "containerd.sock"
        if not sock.exists():
            continue
        runtime = cri.RuntimeClient(f"unix://{sock}", timeout=10)
        try:
            for sb in runtime.list_pod_sandbox():
                if (sb.meta.namespace, sb.meta.name) == (namespace, pod) and sb.state == cri.SANDBOX_READY:
                    return fn(runtime, sb)
        finally:
            runtime.close()
    raise SystemExit(f"pod {namespace}/{pod} has no running sandbox in {state_dir}")


def pod_netns(state_dir: pathlib.Path, namespace: str, pod: str) -> str:
    """The path of the Pod's network namespace."""
    def netns(runtime: cri.RuntimeClient, sb: cri.Sandbox) -> str:
        info = json.loads(runtime.pod_sandbox_status(sb.id, verbose=True).info["info"])
        spaces = info["runtimeSpec"]["linux"]["namespaces"]
        return next(n["path"] for n in spaces if n["type"] == "network")

    return _in_sandbox(state_dir, namespace, pod, netns)


def sandbox_id(state_dir: pathlib.Path, namespace: str, pod: str) -> str:
    """The ID of the Pod's ready sandbox: CNI's container ID for its attachments."""
    return _in_sandbox(state_dir, namespace, pod, lambda runtime, sb: sb.id)


def container_pid(state_dir: pathlib.Path, namespace: str, pod: str, container: str | None = None) -> int:
    """The host pid of a running container of the Pod (`container` by name, else the first one),
    from containerd's verbose ContainerStatus."""
    def pid(runtime: cri.RuntimeClient, sb: cri.Sandbox) -> int:
        running = [c for c in runtime.list_containers(sb.id) if c.state == cri.CONTAINER_RUNNING]
        chosen = [c for c in running if container in (None, c.name)]
        if not chosen:
            names = ", ".join(c.name for c in running) or "none"
            which = f"container {container}" if container else "container"
            raise SystemExit(f"pod {namespace}/{pod} has no running {which} (running: {names})")
        info = json.loads(runtime.container_status(chosen[0].id, verbose=True).info["info"])
        return int(info["pid"])

    return _in_sandbox(state_dir, namespace, pod, pid)


def exec_argv(state_dir: pathlib.Path, namespace: str, pod: str, cmd: list[str],
              container: bool | str = False) -> list[str]:
    """The command line that runs `cmd` in the Pod: in its network namespace with the host's
    busybox, or (`container`: True for the first one, or a name) in a container's mount and
    network namespaces with the container's own binaries. Resolve it once and run it often: the
    lookup costs CRI calls, the run only an nsenter."""
    if container:
        pid = container_pid(state_dir, namespace, pod, container if isinstance(container, str) else None)
        # Entering the mount namespace makes its root (the container's, after runc's pivot_root)
        # the command's root and working directory; PATH is the image's (`/bin`).
        return ["nsenter", "-t", str(pid), "-m", "-n", "--", "env", "PATH=/bin:/usr/bin:/sbin:/usr/sbin", *cmd]
    path = pod_netns(state_dir, namespace, pod)
    return ["nsenter", f"--net={path}", str(images.find_static_busybox()), *cmd]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python3 -m bnsandbox.podexec", description=__doc__.splitlines()[0])
    p.add_argument("--state-dir", default="/tmp/bnt-sb")
    p.add_argument("-n", "--namespace", default="default")
    p.add_argument("--in-container", action="store_true",
                   help="run in the Pod's (first) container: its files, its /etc/resolv.conf")
    p.add_argument("-c", "--container", help="run in this container of the Pod (implies --in-container)")
    p.add_argument("pod")
    p.add_argument("command", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    cmd = [c for c in args.command if c != "--"] or ["sh"]
    container: bool | str = args.container or args.in_container
    full = exec_argv(pathlib.Path(args.state_dir), args.namespace, args.pod, cmd, container)
    os.execvp(full[0], full)


if __name__ == "__main__":
    sys.exit(main())
