"""The resource types the emulator serves: built-in kinds and CRD-registered ones, their
discovery documents and their `kubectl get` tables."""

from __future__ import annotations

import copy
import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from . import jsonpath, patch, schema


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def timestamp(t: dt.datetime | None = None) -> str:
    return (t or now()).strftime("%Y-%m-%dT%H:%M:%SZ")


def micro_timestamp(t: dt.datetime | None = None) -> str:
    return (t or now()).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    for fmt in ("%Y-%m-%dT%H:%M:%S.%fZ", "%Y-%m-%dT%H:%M:%SZ"):
        try:
            return dt.datetime.strptime(text, fmt).replace(tzinfo=dt.timezone.utc)
        except ValueError:
            continue
    return None


def human_age(text: str | None) -> str:
    """Like apimachinery's `duration.HumanDuration`, the AGE cell."""
    t = parse_time(text)
    if t is None:
        return "<unknown>"
    secs = max(0, int((now() - t).total_seconds()))
    if secs < 120:
        return f"{secs}s"
    mins = secs // 60
    if mins < 10:
        return f"{mins}m{secs % 60}s" if secs % 60 else f"{mins}m"
    if mins < 180:
        return f"{mins}m"
    hours = mins // 60
    if hours < 48:
        return f"{hours}h"
    return f"{hours // 24}d"


Column = dict[str, Any]
Row = Callable[[dict], list]


@dataclass
class ResourceType:
    group: str
    versions: list[str]
    plural: str
    singular: str
    kind: str
    namespaced: bool
    short_names: list[str] = field(default_factory=list)
    categories: list[str] = field(default_factory=list)
    status_subresource: bool = False
    # Where objects live: several served types may share one storage (core and events.k8s.io
    # Events), each converting to and from the stored form.
    storage: str = ""
    schemas: dict[str, dict] = field(default_factory=dict)
    printer_columns: dict[str, list[dict]] = field(default_factory=dict)
    table: tuple[list[Column], Row] | None = None
    to_view: Callable[[dict], dict] | None = None
    from_view: Callable[[dict], dict] | None = None
    custom: bool = False
    # Keep `status` on create (Nodes register with their addresses), or reset it.
    keep_status_on_create: bool = False

    def __post_init__(self) -> None:
        if not self.storage:
            self.storage = f"{self.group}/{self.plural}"

    @property
    def storage_version(self) -> str:
        return self.versions[0]

    def api_version(self, version: str) -> str:
        return f"{self.group}/{version}" if self.group else version

    @property
    def qualified(self) -> str:
        """`pods`, `bridgenetworks.bridgenet.io`: the resource name in error messages."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def list_keys(self, version: str | None = None) -> patch.ListKeys:
        if self.custom:
            return schema.list_keys_for(self.schemas.get(version or self.storage_version), patch.builtin_list_keys)
        return patch.builtin_list_keys

    def view(self, obj: dict, version: str) -> dict:
        out = self.to_view(obj) if self.to_view else copy.deepcopy(obj)
        out["apiVersion"] = self.api_version(version)
        out["kind"] = self.kind
        return out

    def store_form(self, obj: dict) -> dict:
        out = self.from_view(obj) if self.from_view else copy.deepcopy(obj)
        out["apiVersion"] = self.api_version(self.storage_version)
        out["kind"] = self.kind
        return out

    # -- tables ------------------------------------------------------------------------------

    def columns_and_row(self, version: str) -> tuple[list[Column], Row]:
        if self.custom:
            cols = self.printer_columns.get(version) or [
                {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
            ]
            defs = [{"name": "Name", "type": "string", "format": "name", "description": "Name", "priority": 0}]
            for c in cols:
                defs.append(
                    {
                        "name": c["name"],
                        "type": c.get("type", "string"),
                        "format": c.get("format", ""),
                        "description": c.get("description", ""),
                        "priority": c.get("priority", 0),
                    }
                )

            def row(obj: dict) -> list:
                cells: list = [obj["metadata"]["name"]]
                for c in cols:
                    try:
                        values = jsonpath.evaluate(obj, c["jsonPath"])
                    except jsonpath.JsonPathError:
                        values = []
                    if not values:
                        cells.append(None)
                    elif c.get("type") == "date":
                        cells.append(human_age(values[0]))
                    elif len(values) == 1 and isinstance(values[0], (list, dict)):
                        # Like the API server's JSONPath printer: structured values as JSON.
                        cells.append(json.dumps(values[0], separators=(",", ":")))
                    elif len(values) == 1:
                        cells.append(values[0])
                    else:
                        cells.append(",".join(str(v) for v in values))
                return cells

            return defs, row
        if self.table:
            return self.table
        return (
            [
                {"name": "Name", "type": "string", "format": "name", "description": "", "priority": 0},
                {"name": "Age", "type": "string", "format": "", "description": "", "priority": 0},
            ],
            lambda o: [o["metadata"]["name"], human_age(o["metadata"].get("creationTimestamp"))],
        )

    # -- discovery ---------------------------------------------------------------------------

    def discovery_entries(self) -> list[dict]:
        verbs = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
        main = {
            "name": self.plural,
            "singularName": self.singular,
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": verbs,
        }
        if self.short_names:
            main["shortNames"] = list(self.short_names)
        if self.categories:
            main["categories"] = list(self.categories)
        out = [main]
        if self.status_subresource:
            out.append(
                {
                    "name": f"{self.plural}/status",
                    "singularName": "",
                    "namespaced": self.namespaced,
                    "kind": self.kind,
                    "verbs": ["get", "patch", "update"],
                }
            )
        return out


def _col(name: str, priority: int = 0, fmt: str = "", typ: str = "string") -> Column:
    return {"name": name, "type": typ, "format": fmt, "description": "", "priority": priority}


def _pod_row(o: dict) -> list:
    status = o.get("status") or {}
    containers = (o.get("spec") or {}).get("containers") or []
    cstatuses = status.get("containerStatuses") or []
    ready = sum(1 for c in cstatuses if c.get("ready"))
    restarts = sum(int(c.get("restartCount", 0)) for c in cstatuses)
    phase = status.get("reason") or status.get("phase") or "Pending"
    for c in cstatuses:
        waiting = (c.get("state") or {}).get("waiting")
        if waiting and waiting.get("reason"):
            phase = waiting["reason"]
    if o["metadata"].get("deletionTimestamp"):
        phase = "Terminating"
    return [
        o["metadata"]["name"],
        f"{ready}/{len(containers)}",
        phase,
        restarts,
        human_age(o["metadata"].get("creationTimestamp")),
        status.get("podIP") or "<none>",
        (o.get("spec") or {}).get("nodeName") or "<none>",
        status.get("nominatedNodeName") or "<none>",
        _readiness_gates_cell(o),
    ]


def _readiness_gates_cell(o: dict) -> str:
    """`<true>/<all>` of the pod's readiness gates, as the API server prints it; `<none>`."""
    gates = (o.get("spec") or {}).get("readinessGates") or []
    if not gates:
        return "<none>"
    true = {c.get("type") for c in (o.get("status") or {}).get("conditions") or [] if c.get("status") == "True"}
    return f"{sum(1 for g in gates if g.get('conditionType') in true)}/{len(gates)}"


def _node_row(o: dict) -> list:
    status = o.get("status") or {}
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
    state = "Ready" if ready and ready.get("status") == "True" else "NotReady" if ready else "Unknown"
    labels = o["metadata"].get("labels") or {}
    roles = sorted(k.split("/", 1)[1] for k in labels if k.startswith("node-role.kubernetes.io/"))
    internal = next(
        (a["address"] for a in status.get("addresses") or [] if a.get("type") == "InternalIP"), "<none>"
    )
    return [
        o["metadata"]["name"],
        state,
        ",".join(roles) or "<none>",
        human_age(o["metadata"].get("creationTimestamp")),
        (status.get("nodeInfo") or {}).get("kubeletVersion", ""),
        internal,
    ]


def _event_row(o: dict) -> list:
    inv = o.get("involvedObject") or {}
    last = o.get("lastTimestamp") or o.get("eventTime") or o["metadata"].get("creationTimestamp")
    return [
        human_age(last),
        o.get("type", ""),
        o.get("reason", ""),
        f"{(inv.get('kind') or '').lower()}/{inv.get('name', '')}",
        o.get("message", ""),
    ]


# -- Event conversion between core/v1 (storage) and events.k8s.io/v1 -----------------------------

_CORE_TO_NEW = {
    "involvedObject": "regarding",
    "message": "note",
    "reportingComponent": "reportingController",
    "source": "deprecatedSource",
    "firstTimestamp": "deprecatedFirstTimestamp",
    "lastTimestamp": "deprecatedLastTimestamp",
    "count": "deprecatedCount",
}


def event_to_new(obj: dict) -> dict:
    out = {}
    for k, v in obj.items():
        out[_CORE_TO_NEW.get(k, k)] = copy.deepcopy(v)
    return out


def event_from_new(obj: dict) -> dict:
    back = {v: k for k, v in _CORE_TO_NEW.items()}
    out = {}
    for k, v in obj.items():
        out[back.get(k, k)] = copy.deepcopy(v)
    # core/v1 readers (kubectl describe) show count and last timestamp; fill them like the
    # real conversion does from series/eventTime.
    series = out.get("series") or {}
    if "count" not in out:
        out["count"] = int(series.get("count") or 1)
    if "lastTimestamp" not in out:
        t = parse_time(series.get("lastObservedTime") or out.get("eventTime"))
        if t:
            out["lastTimestamp"] = timestamp(t)
    if "firstTimestamp" not in out:
        t = parse_time(out.get("eventTime"))
        if t:
            out["firstTimestamp"] = timestamp(t)
    return out


def builtin_types() -> list[ResourceType]:
    event_table = (
        [_col("Last Seen"), _col("Type"), _col("Reason"), _col("Object"), _col("Message")],
        _event_row,
    )
    return [
        ResourceType(
            "", ["v1"], "namespaces", "namespace", "Namespace", False, ["ns"], status_subresource=True,
            table=(
                [_col("Name", fmt="name"), _col("Status"), _col("Age")],
                lambda o: [
                    o["metadata"]["name"],
                    (o.get("status") or {}).get("phase", "Active"),
                    human_age(o["metadata"].get("creationTimestamp")),
                ],
            ),
            keep_status_on_create=False,
        ),
        ResourceType(
            "", ["v1"], "nodes", "node", "Node", False, ["no"], status_subresource=True,
            table=(
                [_col("Name", fmt="name"), _col("Status"), _col("Roles"), _col("Age"), _col("Version"),
                 _col("Internal-IP", 1)],
                _node_row,
            ),
            keep_status_on_create=True,
        ),
        ResourceType(
            "", ["v1"], "pods", "pod", "Pod", True, ["po"], ["all"], status_subresource=True,
            table=(
                [_col("Name", fmt="name"), _col("Ready"), _col("Status"), _col("Restarts", typ="integer"),
                 _col("Age"), _col("IP", 1), _col("Node", 1), _col("Nominated Node", 1), _col("Readiness Gates", 1)],
                _pod_row,
            ),
        ),
        ResourceType("", ["v1"], "events", "event", "Event", True, ["ev"], storage="/events", table=event_table),
        ResourceType(
            "events.k8s.io", ["v1"], "events", "event", "Event", True, ["ev"], storage="/events",
            to_view=event_to_new, from_view=event_from_new,
            table=(event_table[0], lambda o: _event_row(event_from_new(o))),
        ),
        ResourceType("", ["v1"], "configmaps", "configmap", "ConfigMap", True, ["cm"]),
        ResourceType("", ["v1"], "secrets", "secret", "Secret", True),
        ResourceType("", ["v1"], "serviceaccounts", "serviceaccount", "ServiceAccount", True, ["sa"]),
        ResourceType(
            "coordination.k8s.io", ["v1"], "leases", "lease", "Lease", True,
            table=(
                [_col("Name", fmt="name"), _col("Holder"), _col("Age")],
                lambda o: [
                    o["metadata"]["name"],
                    (o.get("spec") or {}).get("holderIdentity", ""),
                    human_age(o["metadata"].get("creationTimestamp")),
                ],
            ),
        ),
        ResourceType(
            "apiextensions.k8s.io", ["v1"], "customresourcedefinitions", "customresourcedefinition",
            "CustomResourceDefinition", False, ["crd", "crds"], ["api-extensions"], status_subresource=True,
            table=(
                [_col("Name", fmt="name"), _col("Created At", typ="date")],
                lambda o: [o["metadata"]["name"], o["metadata"].get("creationTimestamp")],
            ),
        ),
    ]


def from_crd(crd: dict) -> ResourceType:
    spec = crd["spec"]
    names = spec["names"]
    served = [v for v in spec["versions"] if v.get("served", True)]
    storage = [v["name"] for v in served if v.get("storage")]
    ordered = storage + [v["name"] for v in served if v["name"] not in storage]
    return ResourceType(
        group=spec["group"],
        versions=ordered,
        plural=names["plural"],
        singular=names.get("singular") or names["kind"].lower(),
        kind=names["kind"],
        namespaced=spec.get("scope", "Namespaced") == "Namespaced",
        short_names=list(names.get("shortNames") or []),
        categories=list(names.get("categories") or []),
        status_subresource=any("status" in (v.get("subresources") or {}) for v in served),
        schemas={v["name"]: (v.get("schema") or {}).get("openAPIV3Schema") for v in served},
        printer_columns={v["name"]: v.get("additionalPrinterColumns") or [] for v in served},
        custom=True,
    )


class Types:
    """The types served right now, keyed by (group, plural): the built-in ones, then one per
    CRD in the order they were created. The server, its garbage collector and its discovery
    documents share one instance, so a CRD is served, collected and discoverable at once."""

    def __init__(self) -> None:
        self._by_name: dict[tuple[str, str], ResourceType] = {}
        for t in builtin_types():
            self._by_name[(t.group, t.plural)] = t

    def __iter__(self) -> Iterator[ResourceType]:
        return iter(self._by_name.values())

    def get(self, group: str, plural: str) -> ResourceType | None:
        return self._by_name.get((group, plural))

    def served(self, group: str, version: str) -> list[ResourceType]:
        return [t for t in self if t.group == group and version in t.versions]

    def by_storage(self) -> dict[str, ResourceType]:
        """Where two types share a storage (core and events.k8s.io Events), the later one."""
        return {t.storage: t for t in self}

    def add_crd(self, crd: dict) -> None:
        """Serves `crd`'s resource, or replaces its type in place when the CRD changed."""
        t = from_crd(crd)
        self._by_name[(t.group, t.plural)] = t

    def remove_crd(self, crd: dict) -> None:
        self._by_name.pop((crd["spec"]["group"], crd["spec"]["names"]["plural"]), None)
