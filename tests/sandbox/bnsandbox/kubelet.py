"""A minimal kubelet stand-in for one sandbox node: Pods bound to the node (`spec.nodeName`)
become a CRI pod sandbox (the runtime calls the node's CNI plugins, as for a real kubelet) plus
one container per Pod container, with the offline busybox image; their status (phase, IPs,
container states, Ready — which, as for a real kubelet, also needs every readiness gate's condition
True) goes back to the Pod's status subresource, leaving conditions others own in place; Pods that are gone or being
deleted are stopped and removed. A failed sandbox gets a `FailedCreatePodSandBox` Warning Event
on the Pod and is retried. A Pod's `dnsPolicy`/`dnsConfig` become the sandbox's DNS config, so the
runtime writes its /etc/resolv.conf as for a real kubelet (there is no cluster DNS: `ClusterFirst`
falls back to the node's resolv.conf, as a kubelet without `clusterDNS` does).

    python3 -m bnsandbox.kubelet --node-name node1 --node-ip 10.251.0.11 \\
        --kubeconfig K --cri-endpoint unix:///.../containerd.sock --log-dir D

Not a kubelet: no probes, restarts, volumes, resources, image pulls (every image runs as the
local busybox), or graceful termination periods.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging
import pathlib
import signal
import time
import uuid
from typing import Any

from . import cri, images
from .kube import Kube, KubeError

log = logging.getLogger("bnsandbox.kubelet")
LABEL_UID = "bnsandbox.io/pod-uid"
LABEL_NODE = "bnsandbox.io/node"
RETRY_AFTER = 3.0


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _micro_now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Kubelet:
    def __init__(self, node: str, node_ip: str, kube: Kube, runtime: cri.RuntimeClient, log_dir: pathlib.Path,
                 resync: float = 5.0, resolv_conf: pathlib.Path = pathlib.Path("/etc/resolv.conf")) -> None:
        self.node, self.node_ip, self.kube, self.runtime = node, node_ip, kube, runtime
        self.log_dir = log_dir
        self.resolv_conf = resolv_conf
        self.resync = resync
        self.dirty = asyncio.Event()
        self.reported: dict[str, Any] = {}
        self.failed_at: dict[str, float] = {}

    async def call(self, fn, *args):
        return await asyncio.to_thread(fn, *args)

    # -- the loop -------------------------------------------------------------------------------

    async def run(self) -> None:
        watcher = asyncio.create_task(self._watch())
        try:
            while True:
                try:
                    await self.sync()
                except (KubeError, cri.CriError, OSError) as err:
                    log.warning("sync failed: %s", err)
                except Exception:  # noqa: BLE001 - a stand-in bug must not stop the node
                    log.exception("sync failed unexpectedly")
                try:
                    await asyncio.wait_for(self.dirty.wait(), timeout=self.resync)
                except asyncio.TimeoutError:
                    pass
                self.dirty.clear()
        finally:
            watcher.cancel()

    async def _watch(self) -> None:
        params = {"fieldSelector": f"spec.nodeName={self.node}", "allowWatchBookmarks": "true"}
        while True:
            try:
                listed = await self.kube.request("GET", "/api/v1/pods", params={"fieldSelector": params["fieldSelector"]})
                rv = listed["metadata"]["resourceVersion"]
                self.dirty.set()
                async for ev in self.kube.watch("/api/v1/pods", {**params, "resourceVersion": rv}):
                    if ev.get("type") == "ERROR":
                        break
                    if ev.get("type") != "BOOKMARK":
                        self.dirty.set()
            except (KubeError, OSError, asyncio.TimeoutError) as err:
                log.warning("pod watch: %s", err)
                await asyncio.sleep(1)
            except Exception as err:  # noqa: BLE001 - aiohttp's payload errors; the watch restarts
                log.warning("pod watch ended: %r", err)
                await asyncio.sleep(1)

    async def sync(self) -> None:
        pods = (await self.kube.request("GET", "/api/v1/pods",
                                        params={"fieldSelector": f"spec.nodeName={self.node}"}))["items"]
        sandboxes = await self.call(self.runtime.list_pod_sandbox, {LABEL_NODE: self.node})
        by_uid: dict[str, list[cri.Sandbox]] = {}
        for sb in sandboxes:
            by_uid.setdefault(sb.labels.get(LABEL_UID, ""), []).append(sb)
        wanted = set()
        for pod in pods:
            uid = pod["metadata"]["uid"]
            if pod["metadata"].get("deletionTimestamp"):
                await self.teardown(by_uid.pop(uid, []))
                await self._finish_deletion(pod)
                continue
            wanted.add(uid)
            ready = [sb for sb in by_uid.get(uid, []) if sb.state == cri.SANDBOX_READY]
            stale = [sb for sb in by_uid.get(uid, []) if sb.state != cri.SANDBOX_READY]
            if ready:
                await self.teardown(stale)
                await self.report(pod, ready[0])
                continue
            # No ready sandbox: none yet, or one whose setup failed half-way (the runtime keeps
            # it NOTREADY). Like the kubelet, remove what is there and try again.
            if time.monotonic() - self.failed_at.get(uid, -1e9) >= RETRY_AFTER:
                await self.teardown(stale)
                await self.start(pod)
        for uid, sbs in by_uid.items():
            if uid not in wanted:
                log.info("pod %s is gone: removing its sandbox", uid)
                await self.teardown(sbs)
                self.reported.pop(uid, None)

    # -- pod lifecycle -------------------------------------------------------------------------

    async def start(self, pod: dict) -> None:
        meta, spec = pod["metadata"], pod["spec"]
        ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
        labels = {LABEL_UID: uid, LABEL_NODE: self.node, "io.kubernetes.pod.name": name,
                  "io.kubernetes.pod.namespace": ns, "io.kubernetes.pod.uid": uid}
        pod_logs = self.log_dir / f"{ns}_{name}_{uid}"
        pod_logs.mkdir(parents=True, exist_ok=True)
        sandbox_meta = cri.SandboxMeta(name, uid, ns)
        try:
            node_resolv = self.resolv_conf.read_text()
        except OSError:
            node_resolv = ""
        config = cri.sandbox_config(sandbox_meta, spec.get("hostname") or name, str(pod_logs), labels,
                                    meta.get("annotations") or {}, dns=pod_dns_config(spec, node_resolv))
        log.info("starting pod %s/%s", ns, name)
        try:
            sid = await self.call(self.runtime.run_pod_sandbox, config)
        except cri.CriError as err:
            self.failed_at[uid] = time.monotonic()
            log.warning("pod %s/%s: %s", ns, name, err)
            await self._event(pod, "FailedCreatePodSandBox",
                              f"Failed to create pod sandbox: {err.details}")
            await self._status(pod, {"phase": "Pending", "conditions": [
                {"type": "Ready", "status": "False", "reason": "FailedCreatePodSandBox",
                 "message": err.details, "lastTransitionTime": _now()}]})
            self.reported.pop(uid, None)
            return
        self.failed_at.pop(uid, None)
        for c in spec.get("containers") or []:
            env = {e["name"]: e.get("value", "") for e in c.get("env") or [] if "name" in e}
            image = c.get("image", "")
            caps = ((c.get("securityContext") or {}).get("capabilities") or {}).get("add") or []
            cc = cri.container_config(c["name"], _local_image(image), c.get("command") or [], c.get("args") or [],
                                      env, {"io.kubernetes.container.name": c["name"]}, f"{c['name']}/0.log",
                                      add_capabilities=caps)
            cid = await self.call(self.runtime.create_container, sid, cc, config)
            await self.call(self.runtime.start_container, cid)
        sandboxes = await self.call(self.runtime.list_pod_sandbox, {LABEL_UID: uid})
        if sandboxes:
            await self.report(pod, sandboxes[0])

    async def report(self, pod: dict, sandbox: cri.Sandbox) -> None:
        uid = pod["metadata"]["uid"]
        status = await self.call(self.runtime.pod_sandbox_status, sandbox.id)
        containers = await self.call(self.runtime.list_containers, sandbox.id)
        running = {c.name for c in containers if c.state == cri.CONTAINER_RUNNING}
        names = [c["name"] for c in pod["spec"].get("containers") or []]
        ready = status.state == cri.SANDBOX_READY and all(n in running for n in names)
        ips = [ip for ip in [status.ip, *status.additional_ips] if ip]
        cstatuses = []
        for c in pod["spec"].get("containers") or []:
            cid = next((x.id for x in containers if x.name == c["name"]), "")
            state = {"running": {"startedAt": _now()}} if c["name"] in running else {
                "waiting": {"reason": "ContainerCreating"}}
            cstatuses.append({"name": c["name"], "ready": c["name"] in running, "started": c["name"] in running,
                              "restartCount": 0, "image": c.get("image", ""), "imageID": "",
                              "containerID": f"containerd://{cid}" if cid else "", "state": state})
        # A run-to-completion pod (restartPolicy Never, as `bridgenet-operator self-test` makes)
        # ends like the kubelet ends it: Succeeded when every container exited 0, else Failed.
        exited = {c.name: c.id for c in containers if c.state == cri.CONTAINER_EXITED}
        phase = "Running" if ready else "Pending"
        if pod["spec"].get("restartPolicy") == "Never" and names and all(n in exited for n in names):
            codes = {n: (await self.call(self.runtime.container_status, exited[n])).exit_code for n in names}
            phase = "Succeeded" if not any(codes.values()) else "Failed"
            for cs in cstatuses:
                cs["state"] = {"terminated": {"exitCode": codes[cs["name"]],
                                              "reason": "Completed" if codes[cs["name"]] == 0 else "Error",
                                              "finishedAt": _now()}}
        # Like the kubelet: Ready needs the containers ready and every readiness gate's
        # condition True (a gate without its condition counts as False); ContainersReady is the
        # containers alone.
        gates_ok, gates_msg = readiness_gates(pod)
        pod_ready = ready and gates_ok
        key = (sandbox.id, tuple(ips), ready, pod_ready, tuple(sorted(running)), phase)
        if self.reported.get(uid) == key:
            return
        flag = "True" if ready else "False"
        ready_cond = {"type": "Ready", "status": "True" if pod_ready else "False", "lastTransitionTime": _now()}
        if ready and not gates_ok:
            ready_cond.update(reason="ReadinessGatesNotReady", message=gates_msg)
        body = {
            "phase": phase,
            "hostIP": self.node_ip, "hostIPs": [{"ip": self.node_ip}],
            "podIP": ips[0] if ips else None, "podIPs": [{"ip": ip} for ip in ips] or None,
            "startTime": pod.get("status", {}).get("startTime") or _now(),
            "conditions": [{"type": t, "status": flag if t == "ContainersReady" else "True",
                            "lastTransitionTime": _now()}
                           for t in ("PodScheduled", "Initialized", "ContainersReady")] + [ready_cond],
            "containerStatuses": cstatuses,
        }
        if await self._status(pod, body):
            self.reported[uid] = key

    async def teardown(self, sandboxes: list[cri.Sandbox]) -> None:
        """Stops and removes sandboxes; one that cannot be stopped (its CNI DEL fails) is left
        for the next sync to retry, without holding up the others."""
        for sb in sandboxes:
            log.info("removing sandbox %s of %s/%s", sb.id[:12], sb.meta.namespace, sb.meta.name)
            try:
                await self.call(self.runtime.stop_pod_sandbox, sb.id)
                await self.call(self.runtime.remove_pod_sandbox, sb.id)
            except cri.CriError as err:
                log.warning("sandbox %s: %s", sb.id[:12], err)

    async def _finish_deletion(self, pod: dict) -> None:
        """What a kubelet does for a Pod in graceful deletion once its containers are gone."""
        meta = pod["metadata"]
        try:
            await self.kube.request("DELETE", f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                                    {"gracePeriodSeconds": 0, "preconditions": {"uid": meta["uid"]}})
        except KubeError as err:
            if err.status not in (404, 409):
                raise

    async def _status(self, pod: dict, status: dict) -> bool:
        """Writes the status in two patches: a merge patch for everything but the conditions
        (lists such as podIPs replaced whole, as the kubelet's computed patch does), and a
        strategic merge patch for the conditions, which are keyed on `type`: the ones others own
        (a readiness gate's, written by its controller) stay as they are."""
        meta = pod["metadata"]
        path = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status"
        rest = {k: v for k, v in status.items() if k != "conditions"}
        try:
            if rest:
                await self.kube.request("PATCH", path, {"status": rest}, content_type="application/merge-patch+json")
            if "conditions" in status:
                await self.kube.request("PATCH", path, {"status": {"conditions": status["conditions"]}},
                                        content_type="application/strategic-merge-patch+json")
            return True
        except KubeError as err:
            if err.status == 404:
                return False
            raise

    async def _event(self, pod: dict, reason: str, message: str) -> None:
        """One Event per (pod, reason), its count and last timestamp bumped on repeats, like
        the kubelet's event aggregation."""
        meta = pod["metadata"]
        name = f"{meta['name']}.{uuid.uuid5(uuid.NAMESPACE_URL, meta['uid'] + reason).hex[:16]}"
        path = f"/api/v1/namespaces/{meta['namespace']}/events"
        try:
            existing = await self.kube.request("GET", f"{path}/{name}")
            await self.kube.request("PATCH", f"{path}/{name}", {
                "count": int(existing.get("count") or 1) + 1, "lastTimestamp": _now(), "message": message},
                content_type="application/merge-patch+json")
            return
        except KubeError as err:
            if err.status != 404:
                log.warning("event for %s/%s: %s", meta["namespace"], meta["name"], err)
                return
        ev = {"apiVersion": "v1", "kind": "Event",
              "metadata": {"name": name, "namespace": meta["namespace"]},
              "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": meta["name"],
                                 "namespace": meta["namespace"], "uid": meta["uid"]},
              "reason": reason, "message": message, "type": "Warning", "count": 1,
              "firstTimestamp": _now(), "lastTimestamp": _now(), "eventTime": None,
              "source": {"component": "kubelet", "host": self.node},
              "reportingComponent": "kubelet", "reportingInstance": self.node}
        try:
            await self.kube.request("POST", path, ev)
        except KubeError as err:
            log.warning("event for %s/%s: %s", meta["namespace"], meta["name"], err)


def readiness_gates(pod: dict) -> tuple[bool, str]:
    """Whether every readiness gate of `pod` has its condition True in the pod's status, and,
    if not, the kubelet's message naming those that do not."""
    conditions = {c.get("type"): c.get("status") for c in (pod.get("status") or {}).get("conditions") or []}
    missing = [g["conditionType"] for g in (pod.get("spec") or {}).get("readinessGates") or []
               if conditions.get(g.get("conditionType")) != "True"]
    if not missing:
        return True, ""
    return False, "corresponding condition of pod readiness gate " + ", ".join(f'"{m}"' for m in missing) + \
        " does not exist or is not True"


def parse_resolv_conf(text: str) -> cri.DnsConfig:
    """Nameservers, search domains and options of a resolv.conf (the last `search`/`domain`
    line wins, as for the libc resolver)."""
    conf = cri.DnsConfig([], [], [])
    for line in text.splitlines():
        words = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(words) < 2:
            continue
        if words[0] == "nameserver":
            conf.servers.append(words[1])
        elif words[0] in ("search", "domain"):
            conf.searches = words[1:]
        elif words[0] == "options":
            conf.options += words[1:]
    return conf


def pod_dns_config(spec: dict, node_resolv_conf: str) -> cri.DnsConfig | None:
    """The sandbox's DNS config for a Pod, following the kubelet: `dnsPolicy: None` takes
    `dnsConfig` alone; any other policy (here always the node's resolv.conf: no cluster DNS)
    gets `dnsConfig` merged into the node's — servers and searches appended without duplicates,
    options replaced by name. None: the runtime copies the node's resolv.conf as it is."""
    extra = spec.get("dnsConfig") or {}
    if spec.get("dnsPolicy") == "None":
        base = cri.DnsConfig([], [], [])
    elif not extra:
        return None
    else:
        base = parse_resolv_conf(node_resolv_conf)
    servers = list(dict.fromkeys([*base.servers, *(extra.get("nameservers") or [])]))
    searches = list(dict.fromkeys([*base.searches, *(extra.get("searches") or [])]))
    options = {o.split(":", 1)[0]: o for o in base.options}
    for opt in extra.get("options") or []:
        value = opt.get("value")
        options[opt["name"]] = f"{opt['name']}:{value}" if value not in (None, "") else opt["name"]
    return cri.DnsConfig(servers, searches, list(options.values()))


def _local_image(image: str) -> str:
    """Every image is the local busybox: no registry is reachable from the sandbox."""
    return images.BUSYBOX_TAGS[0]


async def amain(args: argparse.Namespace) -> None:
    runtime = cri.RuntimeClient(args.cri_endpoint)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with Kube(args.kubeconfig) as kube:
        kubelet = Kubelet(args.node_name, args.node_ip, kube, runtime, pathlib.Path(args.log_dir),
                          resync=args.resync, resolv_conf=pathlib.Path(args.resolv_conf))
        task = asyncio.create_task(kubelet.run())
        await stop.wait()
        task.cancel()
    runtime.close()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python3 -m bnsandbox.kubelet", description=__doc__.splitlines()[0])
    p.add_argument("--node-name", required=True)
    p.add_argument("--node-ip", required=True)
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--cri-endpoint", required=True)
    p.add_argument("--log-dir", required=True)
    p.add_argument("--resync", type=float, default=5.0)
    p.add_argument("--resolv-conf", default="/etc/resolv.conf",
                   help="the node's resolver configuration, base of the pods' DNS unless dnsPolicy is None")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s kubelet[" + args.node_name + "] %(message)s")
    asyncio.run(amain(args))


if __name__ == "__main__":
    main()
