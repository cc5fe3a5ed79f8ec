"""What the cluster's size costs the API server, with the real operator (release build) and N
fake nodes × M networks (defaults 1,000 × 10): no agents and no pods — the bench plays the
agents' part by reporting every NodeBridge Ready with one endpoint, as agents with pods would.

Measured from the outside (watches on NodeBridges and BridgeNetworks, lists, /proc):

- the time from the networks' creation until every NodeBridge is written with its blocks, and
  from the agents' reports until every network is Ready and its NetworkOverlay lists every node
  (what each agent needs to program its peers);
- the bytes stored: every NodeBridge, BridgeNetwork and NetworkOverlay as the server returns
  them (compact JSON, managedFields included), the largest of each;
- the writes (watch events: each one a stored change every watcher receives) and their bytes
  caused by one node joining, one node's InternalIP changing and one node leaving;
- the operator's RSS (and peak) at the end.

The emulator (tests/sandbox/bnsandbox/apiserver.py) by default; a real API server with
`--kubeconfig` (the bench creates and deletes only its own objects: Nodes labelled
`bridgenet.io/scale-bench`, networks named `bnt-scale-*`). Needs no root. Usage, from
tests/sandbox:

    python3 scale_bench.py [--bin-dir ../../target/release] [--nodes 1000] [--networks 10]
                           [--kubeconfig PATH] [--operator PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

SANDBOX = pathlib.Path(__file__).resolve().parent
REPO = SANDBOX.parents[1]
sys.path.insert(0, str(SANDBOX))

from bnsandbox import kube  # noqa: E402

LABEL = "bridgenet.io/scale-bench"
PREFIX = "bnt-scale-"
NODES = "/api/v1/nodes"
NETS = "/apis/bridgenet.io/v1alpha1/bridgenetworks"
NBS = "/apis/bridgenet.io/v1alpha1/nodebridges"
OVERLAYS = "/apis/bridgenet.io/v1alpha1/networkoverlays"
QUIET = 3.0
CONCURRENCY = 32


def node_name(i: int) -> str:
    return f"{PREFIX}node-{i:05d}"


def node_ip(i: int) -> str:
    return str(ipaddress.ip_address("10.64.0.0") + i + 1)


def size(obj: dict) -> int:
    return len(json.dumps(obj, separators=(",", ":")))


class World:
    """What the watches have seen: every NodeBridge, BridgeNetwork and NetworkOverlay, and each
    change with its time and size."""

    def __init__(self) -> None:
        self.nbs: dict[str, dict] = {}
        self.nets: dict[str, dict] = {}
        self.overlays: dict[str, dict] = {}
        self.events: list[tuple[float, str, str, str, int]] = []
        self.changed = asyncio.Event()

    def record(self, kind: str, event: dict) -> None:
        obj = event.get("object") or {}
        typ = event.get("type")
        if typ not in ("ADDED", "MODIFIED", "DELETED"):
            return
        name = obj.get("metadata", {}).get("name", "")
        store = {"NodeBridge": self.nbs, "BridgeNetwork": self.nets, "NetworkOverlay": self.overlays}[kind]
        if kind != "NodeBridge" and not name.startswith(PREFIX):
            return
        if kind == "NodeBridge" and not (obj.get("metadata", {}).get("labels") or {}).get(
                "bridgenet.io/network", "").startswith(PREFIX):
            return
        if typ == "DELETED":
            store.pop(name, None)
        else:
            store[name] = obj
        self.events.append((time.monotonic(), kind, typ, name, size(obj)))
        self.changed.set()

    def window(self, since: float) -> list[tuple[float, str, str, str, int]]:
        return [e for e in self.events if e[0] >= since]


async def watch_forever(k: kube.Kube, path: str, kind: str, world: World) -> None:
    while True:
        listed = await k.request("GET", path)
        for item in listed.get("items", []):
            item.setdefault("kind", kind)
            world.record(kind, {"type": "ADDED", "object": item})
        rv = listed["metadata"]["resourceVersion"]
        try:
            async for event in k.watch(path, {"resourceVersion": rv, "allowWatchBookmarks": "true"}):
                if event.get("type") == "ERROR":
                    break
                world.record(kind, event)
        except Exception as err:  # noqa: BLE001 — the watch is re-established, saying why
            print(f"scale-bench: {kind} watch ended ({err}); listing again", file=sys.stderr)


async def until(pred, world: World, timeout: float, what: str) -> float:
    start = time.monotonic()
    while not pred():
        left = timeout - (time.monotonic() - start)
        if left <= 0:
            raise TimeoutError(f"scale-bench: timed out after {timeout:.0f} s waiting for {what}")
        world.changed.clear()
        try:
            await asyncio.wait_for(world.changed.wait(), min(left, 1.0))
        except asyncio.TimeoutError:
            pass
    return time.monotonic()


async def quiet(world: World, seconds: float = QUIET) -> None:
    """Waits until no watched object has changed for `seconds`."""
    while True:
        last = world.events[-1][0] if world.events else 0.0
        wait = last + seconds - time.monotonic()
        if wait <= 0:
            return
        await asyncio.sleep(wait)


async def bounded(jobs, limit: int = CONCURRENCY) -> None:
    sem = asyncio.Semaphore(limit)

    async def one(job):
        async with sem:
            await job

    await asyncio.gather(*(one(j) for j in jobs))


def node_object(i: int, address: str) -> dict:
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": node_name(i), "labels": {LABEL: "true"}},
            "status": {"addresses": [{"type": "InternalIP", "address": address}]}}


async def create_node(k: kube.Kube, i: int, address: str) -> None:
    try:
        created = await k.request("POST", NODES, node_object(i, address))
    except kube.KubeError as err:
        if err.status != 409:
            raise
        created = await k.request("GET", f"{NODES}/{node_name(i)}")
    # A real API server keeps a created Node's status only where the kubelet's registration
    # puts it; set the address through the status subresource in any case.
    have = [a.get("address") for a in (created.get("status") or {}).get("addresses") or []]
    if have != [address]:
        await set_address(k, i, address)


async def set_address(k: kube.Kube, i: int, address: str) -> None:
    await k.request("PATCH", f"{NODES}/{node_name(i)}/status",
                    {"status": {"addresses": [{"type": "InternalIP", "address": address}]}},
                    content_type="application/merge-patch+json")


async def report_as_agent(k: kube.Kube, nb: dict) -> None:
    """What an agent with one pod on the network reports: Ready for the current generation,
    one endpoint, and that it reads its peers from the network's status."""
    gen = nb["metadata"].get("generation")
    cond = {"type": "Ready", "status": "True", "reason": "Programmed", "message": "scale bench",
            "lastTransitionTime": "2026-01-01T00:00:00Z"}
    if gen is not None:
        cond["observedGeneration"] = gen
    status = {"conditions": [cond], "endpointCount": 1, "networkPeers": True,
              "endpoints": [{"namespace": "bench", "pod": f"pod-{nb['spec']['node'][-5:]}",
                             "interface": "net1", "mac": "02:00:00:00:00:01"}]}
    if gen is not None:
        status["observedGeneration"] = gen
    await k.request("PATCH", f"{NBS}/{nb['metadata']['name']}/status", {"status": status},
                    content_type="application/merge-patch+json")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_of(pid: int) -> tuple[float, float]:
    fields = {}
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    mib = lambda k: int(fields[k].split()[0]) / 1024  # noqa: E731
    return mib("VmRSS"), mib("VmHWM")


def kib(n: float) -> str:
    return f"{n / 1024:,.1f} KiB" if n < 1024 * 1024 else f"{n / 1024 / 1024:,.1f} MiB"


async def node_event(world: World, what: str, act, done, nets: int, timeout: float) -> dict:
    await quiet(world)
    start = time.monotonic()
    await act()
    end = await until(done, world, timeout, what)
    await quiet(world)
    window = world.window(start)
    count = {kind: len([e for e in window if e[1] == kind])
             for kind in ("NodeBridge", "BridgeNetwork", "NetworkOverlay")}
    return {"event": what, "seconds": end - start, "writes": len(window),
            "per_network": len(window) / nets, "count": count, "bytes": sum(e[4] for e in window)}


async def run(args, kubeconfig: str, workdir: pathlib.Path) -> int:
    n, m = args.nodes, args.networks
    env = {**os.environ, "KUBECONFIG": kubeconfig}
    subprocess.run(["kubectl", "apply", "-f", str(REPO / "crds/yaml")],
                   env=env, check=True, stdout=subprocess.DEVNULL)
    async with kube.Kube(kubeconfig) as k:
        world = World()
        await cleanup(k, world=None)
        t = time.monotonic()
        await bounded(create_node(k, i, node_ip(i)) for i in range(n))
        print(f"scale-bench: {n} nodes registered in {time.monotonic() - t:.1f} s", flush=True)

        metrics = free_port()
        log = open(workdir / "operator.log", "w")
        operator = subprocess.Popen(
            [args.operator, "--metrics-addr", f"127.0.0.1:{metrics}", "--lease-namespace", "default",
             "--lease-name", f"{PREFIX}operator", "--identity", "scale-bench"],
            env={**env, "RUST_LOG": "warn"}, stdout=log, stderr=subprocess.STDOUT)
        watches = [asyncio.create_task(watch_forever(k, NBS, "NodeBridge", world)),
                   asyncio.create_task(watch_forever(k, NETS, "BridgeNetwork", world)),
                   asyncio.create_task(watch_forever(k, OVERLAYS, "NetworkOverlay", world))]
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/readyz", timeout=2) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                if operator.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the operator did not become ready (see {workdir / 'operator.log'})")
                await asyncio.sleep(0.2)

            names = [f"{PREFIX}{j:02d}" for j in range(m)]
            t0 = time.monotonic()
            await bounded(k.request("POST", NETS, {
                "apiVersion": "bridgenet.io/v1alpha1", "kind": "BridgeNetwork", "metadata": {"name": name},
                "spec": {"subnet": f"10.{100 + j}.0.0/16", "nodeSelector": {"matchLabels": {LABEL: "true"}}}})
                for j, name in enumerate(names))
            total = n * m

            def all_written() -> bool:
                return len(world.nbs) >= total and all(nb["spec"].get("blocks") for nb in world.nbs.values())

            t_written = await until(all_written, world, args.timeout, f"{total} NodeBridges") - t0
            print(f"scale-bench: {total} NodeBridges written in {t_written:.1f} s", flush=True)

            t1 = time.monotonic()
            await bounded(report_as_agent(k, nb) for nb in list(world.nbs.values()))
            t_reported = time.monotonic() - t1
            t_last = time.monotonic()

            def converged(expect: int) -> bool:
                return all((world.nets.get(name, {}).get("status") or {}).get("readyNodes") == expect
                           and len(world.overlays.get(name, {}).get("spec", {}).get("endpoints") or []) == expect
                           for name in names)

            done = await until(lambda: converged(n), world, args.timeout, "every network Ready with every peer")
            t_peers, t_after_last = done - t1, done - t_last
            print(f"scale-bench: {total} reports sent in {t_reported:.1f} s; every network Ready, its overlay "
                  f"listing {n} nodes, {t_peers:.1f} s after the first, {t_after_last:.1f} s after the last", flush=True)

            await quiet(world)
            nbs = (await k.request("GET", NBS))["items"]
            nets = [x for x in (await k.request("GET", NETS))["items"] if x["metadata"]["name"].startswith(PREFIX)]
            nbs = [x for x in nbs if x["metadata"].get("labels", {}).get("bridgenet.io/network", "").startswith(PREFIX)]
            overlays = [x for x in (await k.request("GET", OVERLAYS))["items"]
                        if x["metadata"]["name"].startswith(PREFIX)]
            nb_sizes = sorted(size(x) for x in nbs)
            net_sizes = sorted(size(x) for x in nets)
            overlay_sizes = sorted(size(x) for x in overlays)

            # One node joins (no pods yet), one node's address changes, the new node leaves.
            new = n
            join = await node_event(
                world, "node joins", lambda: create_node(k, new, node_ip(new)),
                lambda: all(f"{name}.{node_name(new)}" in world.nbs and
                            (world.nets[name].get("status") or {}).get("totalNodes") == n + 1 for name in names),
                m, args.timeout)
            moved = node_ip(n + 500)
            move = await node_event(
                world, "node changes InternalIP", lambda: set_address(k, 0, moved),
                lambda: all(any(t["node"] == node_name(0) and t["address"] == moved
                                for t in world.overlays.get(name, {}).get("spec", {}).get("endpoints") or [])
                            for name in names),
                m, args.timeout)
            leave = await node_event(
                world, "node leaves", lambda: k.request("DELETE", f"{NODES}/{node_name(new)}"),
                lambda: all(f"{name}.{node_name(new)}" not in world.nbs and
                            (world.nets[name].get("status") or {}).get("totalNodes") == n for name in names),
                m, args.timeout)
            rss, hwm = rss_of(operator.pid)
        finally:
            for w in watches:
                w.cancel()
            operator.terminate()
            try:
                operator.wait(15)
            except subprocess.TimeoutExpired:
                operator.kill()
            log.close()
        await cleanup(k, world)

    server = "real API server" if args.kubeconfig else "emulator"
    print()
    print(f"## {n} nodes × {m} networks, {server}, operator {args.operator}")
    print()
    print("| measure | value |")
    print("|---|---|")
    print(f"| NodeBridges written after the networks' creation | {t_written:.1f} s ({total / t_written:,.0f}/s) |")
    print(f"| every network Ready and its overlay listing all {n} nodes, after the agents' {total} reports "
          f"(sent by the bench in {t_reported:.1f} s) | {t_peers:.1f} s after the first, {t_after_last:.1f} s after "
          f"the last |")
    print(f"| stored: {len(nb_sizes)} NodeBridges | {kib(sum(nb_sizes))} (largest {kib(nb_sizes[-1])}) |")
    print(f"| stored: {len(net_sizes)} BridgeNetworks | {kib(sum(net_sizes))} (largest {kib(net_sizes[-1])}) |")
    print(f"| stored: {len(overlay_sizes)} NetworkOverlays | {kib(sum(overlay_sizes))} "
          f"(largest {kib(overlay_sizes[-1])}) |")
    for e in (join, move, leave):
        c = e["count"]
        print(f"| {e['event']}: writes (per network), bytes | {e['writes']} ({e['per_network']:.1f}: "
              f"{c['NodeBridge']} NodeBridge, {c['BridgeNetwork']} BridgeNetwork, {c['NetworkOverlay']} "
              f"NetworkOverlay), {kib(e['bytes'])}; settled in {e['seconds']:.2f} s |")
    print(f"| operator RSS (peak) | {rss:.1f} MiB ({hwm:.1f} MiB) |")
    worst = max(e["per_network"] for e in (join, move, leave))
    ok = worst <= 2 and hwm < 200
    print(f"\nscale-bench: {'targets met' if ok else 'TARGETS MISSED'}: ≤ 2 writes per network per node event "
          f"(worst {worst:.1f}), operator < 200 MiB (peak {hwm:.1f})")
    return 0


async def cleanup(k: kube.Kube, world: World | None) -> None:
    """Deletes the bench's networks (the operator, if running, tears their NodeBridges down;
    none carries an agent's finalizer), any NodeBridge left of them, and its nodes."""
    nets = (await k.request("GET", NETS))["items"]
    for net in nets:
        name = net["metadata"]["name"]
        if name.startswith(PREFIX):
            try:
                if net["metadata"].get("finalizers"):
                    await k.request("PATCH", f"{NETS}/{name}", {"metadata": {"finalizers": None}},
                                    content_type="application/merge-patch+json")
                await k.request("DELETE", f"{NETS}/{name}")
            except kube.KubeError as err:
                if err.status != 404:
                    raise
    nbs = (await k.request("GET", NBS, params={"labelSelector": "bridgenet.io/network"}))["items"]
    await bounded(_delete(k, f"{NBS}/{nb['metadata']['name']}") for nb in nbs
                  if nb["metadata"]["labels"]["bridgenet.io/network"].startswith(PREFIX))
    nodes = (await k.request("GET", NODES, params={"labelSelector": LABEL}))["items"]
    await bounded(_delete(k, f"{NODES}/{x['metadata']['name']}") for x in nodes)


async def _delete(k: kube.Kube, path: str) -> None:
    try:
        await k.request("DELETE", path)
    except kube.KubeError as err:
        if err.status != 404:
            raise


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin-dir", default=str(REPO / "target/release"))
    ap.add_argument("--operator", help="operator binary (default: BIN_DIR/bridgenet-operator)")
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--networks", type=int, default=10)
    ap.add_argument("--kubeconfig", help="a real API server (default: start the emulator)")
    ap.add_argument("--timeout", type=float, default=600)
    args = ap.parse_args()
    args.operator = args.operator or str(pathlib.Path(args.bin_dir) / "bridgenet-operator")
    if not os.access(args.operator, os.X_OK):
        print(f"scale-bench: no operator binary at {args.operator} (cargo build --release first)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bnt-scale-") as tmp:
        workdir = pathlib.Path(tmp)
        if args.kubeconfig:
            return asyncio.run(run(args, args.kubeconfig, workdir))
        kubeconfig, ready = workdir / "kubeconfig", workdir / "ready"
        server = subprocess.Popen([sys.executable, "-m", "bnsandbox.apiserver", "--port", "0",
                                   "--kubeconfig", str(kubeconfig), "--ready-file", str(ready)],
                                  cwd=SANDBOX, stdout=subprocess.DEVNULL, stderr=open(workdir / "emulator.log", "w"))
        try:
            deadline = time.monotonic() + 60
            while not (ready.exists() and ready.read_text().strip()):
                if server.poll() is not None or time.monotonic() > deadline:
                    print("scale-bench: the emulator did not start", file=sys.stderr)
                    return 1
                time.sleep(0.1)
            return asyncio.run(run(args, str(kubeconfig), workdir))
        finally:
            server.terminate()
            server.wait(15)


if __name__ == "__main__":
    sys.exit(main())
