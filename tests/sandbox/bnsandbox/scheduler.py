"""A minimal scheduler for the sandbox: binds every Pod without `spec.nodeName` to the Ready
node (matching its `spec.nodeSelector`) with the fewest Pods, through `pods/binding`, the way the
real scheduler does. No resources, affinities, taints or priorities.

    python3 -m bnsandbox.scheduler --kubeconfig K
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import logging
import signal

from .kube import Kube, KubeError

log = logging.getLogger("bnsandbox.scheduler")


def pick(pod: dict, nodes: list[dict], load: dict[str, int]) -> str | None:
    want = (pod.get("spec") or {}).get("nodeSelector") or {}
    fit = []
    for node in nodes:
        labels = node["metadata"].get("labels") or {}
        ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                    for c in (node.get("status") or {}).get("conditions") or [])
        if ready and all(labels.get(k) == v for k, v in want.items()) and not node.get("spec", {}).get("unschedulable"):
            fit.append(node["metadata"]["name"])
    return min(fit, key=lambda n: (load.get(n, 0), n)) if fit else None


async def schedule_once(kube: Kube) -> int:
    pods = (await kube.request("GET", "/api/v1/pods"))["items"]
    nodes = (await kube.request("GET", "/api/v1/nodes"))["items"]
    load = collections.Counter(p["spec"].get("nodeName") for p in pods if p["spec"].get("nodeName"))
    bound = 0
    for pod in pods:
        meta = pod["metadata"]
        if pod["spec"].get("nodeName") or meta.get("deletionTimestamp"):
            continue
        node = pick(pod, nodes, load)
        if node is None:
            continue
        try:
            await kube.request("POST", f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/binding",
                               {"apiVersion": "v1", "kind": "Binding",
                                "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
                                "target": {"apiVersion": "v1", "kind": "Node", "name": node}})
            load[node] += 1
            bound += 1
            log.info("bound %s/%s to %s", meta["namespace"], meta["name"], node)
        except KubeError as err:
            log.warning("binding %s/%s: %s", meta["namespace"], meta["name"], err)
    return bound


async def run(kube: Kube, interval: float = 0.5) -> None:
    while True:
        try:
            await schedule_once(kube)
        except (KubeError, OSError) as err:
            log.warning("scheduling pass: %s", err)
        await asyncio.sleep(interval)


async def amain(kubeconfig: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with Kube(kubeconfig) as kube:
        task = asyncio.create_task(run(kube))
        await stop.wait()
        task.cancel()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python3 -m bnsandbox.scheduler", description=__doc__.splitlines()[0])
    p.add_argument("--kubeconfig", required=True)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s scheduler %(message)s")
    asyncio.run(amain(args.kubeconfig))


if __name__ == "__main__":
    main()
