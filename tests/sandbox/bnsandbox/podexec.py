"""Runs a command in a sandbox Pod's network namespace, like `kubectl exec` for network checks:
the Pod's sandbox is found through the CRI of the node it runs on, and the host's static busybox
runs inside its netns (the Pod's image is that busybox anyway).

    python3 -m bnsandbox.podexec --state-dir /tmp/bnt-sb [-n NAMESPACE] POD -- ip -4 addr
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys

from . import containerd, cri, images


def pod_netns(state_dir: pathlib.Path, namespace: str, pod: str) -> str:
    for node_dir in sorted(p for p in state_dir.iterdir() if (p / "containerd").is_dir()):
        sock = containerd.socket_dir(node_dir) / "containerd.sock"
        if not sock.exists():
            continue
        runtime = cri.RuntimeClient(f"unix://{sock}", timeout=10)
        try:
            for sb in runtime.list_pod_sandbox():
                if (sb.meta.namespace, sb.meta.name) == (namespace, pod) and sb.state == cri.SANDBOX_READY:
                    info = json.loads(runtime.pod_sandbox_status(sb.id, verbose=True).info["info"])
                    spaces = info["runtimeSpec"]["linux"]["namespaces"]
                    return next(n["path"] for n in spaces if n["type"] == "network")
        finally:
            runtime.close()
    raise SystemExit(f"pod {namespace}/{pod} has no running sandbox in {state_dir}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python3 -m bnsandbox.podexec", description=__doc__.splitlines()[0])
    p.add_argument("--state-dir", default="/tmp/bnt-sb")
    p.add_argument("-n", "--namespace", default="default")
    p.add_argument("pod")
    p.add_argument("command", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    cmd = [c for c in args.command if c != "--"] or ["sh"]
    path = pod_netns(pathlib.Path(args.state_dir), args.namespace, args.pod)
    busybox = str(images.find_static_busybox())
    os.execvp("nsenter", ["nsenter", f"--net={path}", busybox, *cmd])


if __name__ == "__main__":
    sys.exit(main())
