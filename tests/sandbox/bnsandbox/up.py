"""Brings the sandbox up: an API server (the emulator, or an existing one from a kubeconfig),
N nodes as network namespaces registered as `Node`s, and bridgenet's CRDs; then waits until
SIGINT/SIGTERM and tears everything down.

    python3 -m bnsandbox.up --nodes 2 --state-dir /tmp/bnt-sb
    export KUBECONFIG=/tmp/bnt-sb/kubeconfig   # printed on start
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

from . import netns

REPO = pathlib.Path(__file__).resolve().parents[3]
SANDBOX = REPO / "tests" / "sandbox"


def start_emulator(state: pathlib.Path) -> tuple[subprocess.Popen, pathlib.Path]:
    kubeconfig, ready = state / "kubeconfig", state / "apiserver.url"
    ready.unlink(missing_ok=True)
    log = open(state / "apiserver.log", "ab")  # noqa: SIM115 - lives as long as the child
    proc = subprocess.Popen(
        [sys.executable, "-m", "bnsandbox.apiserver", "--port", "0", "--kubeconfig", str(kubeconfig),
         "--ready-file", str(ready)],
        cwd=SANDBOX, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while not (ready.exists() and ready.read_text().strip()):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the API emulator did not start; see {state / 'apiserver.log'}")
        time.sleep(0.05)
    return proc, kubeconfig


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m bnsandbox.up", description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=2)
    p.add_argument("--state-dir", default="/tmp/bnt-sb")
    p.add_argument("--prefix", default=netns.DEFAULT_PREFIX, help="network namespace name prefix")
    p.add_argument("--kubeconfig", default=None,
                   help="use this existing API server instead of the emulator (default: $KUBECONFIG if set "
                        "and --emulator is not given)")
    p.add_argument("--emulator", action="store_true", help="always start the emulator, even if KUBECONFIG is set")
    p.add_argument("--ready-file", help="write the kubeconfig path here once everything is up")
    args = p.parse_args(argv)

    state = pathlib.Path(args.state_dir)
    state.mkdir(parents=True, exist_ok=True)
    external = args.kubeconfig or (None if args.emulator else os.environ.get("KUBECONFIG"))
    emulator = None
    topo = None
    stop = {"now": False}

    def on_signal(signum, frame):
        stop["now"] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        if external:
            kubeconfig = pathlib.Path(external)
        else:
            emulator, kubeconfig = start_emulator(state)
        kubectl = [shutil.which("kubectl") or "kubectl", "--kubeconfig", str(kubeconfig)]
        names = [f"node{i + 1}" for i in range(args.nodes)]
        topo = netns.Topology(names, prefix=args.prefix, internet=True)
        topo.register(kubectl)
        netns.run(*kubectl, "apply", "-f", str(REPO / "crds" / "yaml"))
        netns.run(*kubectl, "wait", "--for=condition=Established", "crd", "--all", "--timeout=30s")
        for node in topo.nodes:
            (state / node.name).mkdir(exist_ok=True)
        print(f"sandbox up: {args.nodes} nodes ({', '.join(f'{n.name}={n.ip}' for n in topo.nodes)}), "
              f"API server {'given' if external else 'emulated'}; export KUBECONFIG={kubeconfig}", flush=True)
        if args.ready_file:
            pathlib.Path(args.ready_file).write_text(str(kubeconfig) + "\n")
        while not stop["now"]:
            time.sleep(0.2)
        return 0
    finally:
        if topo is not None:
            if external:
                topo.unregister(kubectl)
            topo.close()
        if emulator is not None and emulator.poll() is None:
            emulator.terminate()
            try:
                emulator.wait(10)
            except subprocess.TimeoutExpired:
                emulator.kill()
        print("sandbox down: namespaces removed" + ("" if external else ", emulator stopped"), flush=True)


if __name__ == "__main__":
    sys.exit(main())
