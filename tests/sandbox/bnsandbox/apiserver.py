"""A Kubernetes API server emulator, good enough for kubectl and kube-rs controllers.

Run: `python3 -m bnsandbox.apiserver --port 6443 --kubeconfig /tmp/kubeconfig` from
`tests/sandbox/`. See `tests/sandbox/README.md` for what it does and where it differs from a
real API server.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import copy
import json
import logging
import pathlib
import random
import re
import signal
import ssl
import string
import uuid
from dataclasses import dataclass
from typing import Any

import yaml
from aiohttp import web

from . import errors, patch, protobuf, registry, schema, selectors, tls
from .discovery import Discovery
from .errors import ApiError
from .gc import GarbageCollector
from .registry import ResourceType
from .store import Event, Key, Store, strip

log = logging.getLogger("bnsandbox.apiserver")

DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
INITIAL_EVENTS_END = "k8s.io/initial-events-end"


@dataclass
class Target:
    """What a request addresses: a resource type in one version, maybe a namespace, a name and a
    subresource."""

    rtype: ResourceType
    version: str
    namespace: str | None
    name: str | None
    subresource: str | None

    @property
    def key(self) -> Key:
        return (self.rtype.storage, self.namespace or "", self.name or "")


class ApiServer:
    """The resource endpoints (reads, writes, watches, deletion) over one store; discovery and
    garbage collection are collaborators that share its store and served types."""

    def __init__(self, bookmark_interval: float = 5.0, gc_interval: float = 0.1, watch_history: int = 20000) -> None:
        self.store = Store(watch_history)
        self.types = registry.Types()
        self.bookmark_interval = bookmark_interval
        self.discovery = Discovery(self.types)
        self.gc = GarbageCollector(self.store, self.types, self._delete_stored, self._finish_delete, gc_interval)
        namespaces = self.types.get("", "namespaces")
        assert namespaces is not None  # a built-in type
        for ns in DEFAULT_NAMESPACES:
            self._create_direct(namespaces, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})

    # -- types ---------------------------------------------------------------------------------

    def resolve(self, group: str, version: str, rest: list[str]) -> Target:
        gv_types = {t.plural: t for t in self.types.served(group, version)}
        if not gv_types:
            raise errors.no_such_path()
        namespace = None
        if len(rest) >= 3 and rest[0] == "namespaces" and rest[2] in gv_types and gv_types[rest[2]].namespaced:
            namespace, rest = rest[1], rest[2:]
        if not rest or rest[0] not in gv_types or len(rest) > 3:
            raise errors.no_such_path()
        rtype = gv_types[rest[0]]
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        if sub is not None and not ((sub == "status" and rtype.status_subresource)
                                    or (sub == "binding" and rtype.kind == "Pod")):
            raise errors.no_such_path()
        return Target(rtype, version, namespace, name, sub)

    def _crd_status(self, crd: dict) -> dict:
        ts = registry.timestamp()
        names = copy.deepcopy(crd["spec"]["names"])
        names.setdefault("singular", names["kind"].lower())
        names.setdefault("listKind", names["kind"] + "List")
        conds = [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
             "message": "no conflicts found", "lastTransitionTime": ts},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
             "message": "the initial names have been accepted", "lastTransitionTime": ts},
        ]
        stored = [v["name"] for v in crd["spec"]["versions"] if v.get("storage")]
        return {"acceptedNames": names, "conditions": conds, "storedVersions": stored}

    # -- writes --------------------------------------------------------------------------------

    def _create_direct(self, rtype: ResourceType, obj: dict) -> dict:
        """Stores a new object bypassing validation (the server's own defaults)."""
        meta = obj["metadata"]
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", registry.timestamp())
        meta.setdefault("generation", 1)
        if rtype.kind == "Namespace":
            obj.setdefault("spec", {"finalizers": ["kubernetes"]})
            obj["status"] = {"phase": "Active"}
        return self.store.put((rtype.storage, meta.get("namespace", ""), meta["name"]), obj)

    def _prepare(self, t: Target, obj: dict, old: dict | None, params: Any) -> dict:
        """Defaulting, pruning and validation of an incoming object (in storage form)."""
        rtype = t.rtype
        meta = obj.setdefault("metadata", {})
        name = meta.get("name", "")
        if not name or len(name) > 253 or not NAME_RE.match(name):
            raise errors.invalid(rtype.kind, rtype.group, name, [
                f"metadata.name: Invalid value: {name!r}: a lowercase RFC 1123 subdomain must consist of lower "
                "case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
            ])
        if rtype.custom:
            sch = rtype.schemas.get(t.version)
            dropped = schema.prune(obj, sch)
            validation = params.get("fieldValidation", "")
            if dropped and validation == "Strict":
                raise errors.bad_request(
                    "strict decoding error: " + ", ".join(f'unknown field "{d}"' for d in dropped))
            schema.apply_defaults(obj, sch)
            problems = schema.validate(obj, sch)
            if problems:
                raise errors.invalid(rtype.kind, rtype.group, name, problems)
        if rtype.kind == "CustomResourceDefinition":
            spec = obj.get("spec") or {}
            try:
                want = f"{spec['names']['plural']}.{spec['group']}"
            except (KeyError, TypeError):
                raise errors.invalid(rtype.kind, rtype.group, name, ["spec: Required value: names and group"])
            if name != want:
                raise errors.invalid(rtype.kind, rtype.group, name, [
                    f"metadata.name: Invalid value: {name!r}: must be spec.names.plural+\".\"+spec.group"])
            if old is not None:
                old_key = (old["spec"]["group"], old["spec"]["names"]["plural"])
                if old_key != (spec["group"], spec["names"]["plural"]):
                    raise errors.invalid(rtype.kind, rtype.group, name, ["spec.group: Invalid value: immutable"])
        if rtype.kind == "Pod" and old is None:
            containers = (obj.get("spec") or {}).get("containers")
            if not containers:
                raise errors.invalid(rtype.kind, "", name, ["spec.containers: Required value"])
        return obj

    def _commit(self, t: Target, new: dict, old: dict | None, params: Any, status_only: bool = False) -> tuple[dict, bool]:
        """Writes `new` (storage form) over `old`: keeps what the server owns, checks the
        resourceVersion, bumps generation, and finishes deletion when the last finalizer is gone.
        Returns the stored object and whether it still exists."""
        rtype = t.rtype
        dry_run = "All" in params.getall("dryRun", [])
        if old is None:
            meta = new["metadata"]
            meta.pop("resourceVersion", None)
            meta.pop("deletionTimestamp", None)
            meta.pop("deletionGracePeriodSeconds", None)
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = registry.timestamp()
            meta["generation"] = 1
            if rtype.namespaced:
                meta["namespace"] = t.namespace
            else:
                meta.pop("namespace", None)
            if rtype.status_subresource and not rtype.keep_status_on_create:
                new.pop("status", None)
            if rtype.kind == "Pod":
                new["status"] = {"phase": "Pending"}
            if rtype.kind == "Namespace":
                new.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
                new["status"] = {"phase": "Active"}
            if rtype.kind == "CustomResourceDefinition":
                new["status"] = self._crd_status(new)
            if dry_run:
                return new, True
            stored = self.store.put(t.key[:2] + (meta["name"],), new)
            if rtype.kind == "CustomResourceDefinition":
                self.types.add_crd(stored)
            return stored, True

        meta, old_meta = new.setdefault("metadata", {}), old["metadata"]
        want_rv = meta.get("resourceVersion")
        if want_rv and want_rv != old_meta["resourceVersion"]:
            raise errors.conflict(rtype.qualified, old_meta["name"])
        if meta.get("uid") and meta["uid"] != old_meta["uid"]:
            raise errors.conflict(rtype.qualified, old_meta["name"], "Precondition failed: UID in precondition")
        for k in ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "name", "namespace"):
            if k in old_meta:
                meta[k] = old_meta[k]
            else:
                meta.pop(k, None)
        if status_only:
            # The status subresource changes status and nothing else.
            merged = copy.deepcopy(old)
            if "status" in new:
                merged["status"] = new["status"]
            else:
                merged.pop("status", None)
            new = merged
        elif rtype.status_subresource:
            if "status" in old:
                new["status"] = copy.deepcopy(old["status"])
            else:
                new.pop("status", None)
        if old_meta.get("deletionTimestamp"):
            added = set(meta.get("finalizers") or []) - set(old_meta.get("finalizers") or [])
            if added:
                raise errors.forbidden(rtype.qualified, old_meta["name"],
                                       "no new finalizers can be added if the object is being deleted")
        skip = {"metadata", "status"} if rtype.status_subresource else {"metadata"}
        spec_changed = {k: v for k, v in new.items() if k not in skip | {"apiVersion", "kind"}} != {
            k: v for k, v in old.items() if k not in skip | {"apiVersion", "kind"}}
        meta["generation"] = int(old_meta.get("generation", 1)) + (1 if spec_changed else 0)
        if strip(new) == strip(old):
            return copy.deepcopy(old), True  # a no-op write gets no new resourceVersion
        if dry_run:
            return new, True
        if meta.get("deletionTimestamp") and not meta.get("finalizers") and rtype.kind != "Namespace":
            # Removing the last finalizer of an object being deleted deletes it: watchers see one
            # DELETED event carrying that final state, as from a real server.
            gone = self._finish_delete(rtype, t.key, final=new)
            return gone or new, False
        stored = self.store.put(t.key, new)
        if rtype.kind == "CustomResourceDefinition":
            self.types.add_crd(stored)
        return stored, True

    def _finish_delete(self, rtype: ResourceType, key: Key, final: dict | None = None) -> dict | None:
        obj = self.store.remove(key, final)
        if obj is not None and rtype.kind == "CustomResourceDefinition":
            self.types.remove_crd(obj)
        self.gc.wake()
        return obj

    def _delete(self, t: Target, opts: dict, dry_run: bool) -> tuple[dict, bool]:
        rtype = t.rtype
        obj = self.store.get(t.key)
        if obj is None:
            raise errors.not_found(rtype.qualified, t.name or "")
        pre = opts.get("preconditions") or {}
        if pre.get("uid") and pre["uid"] != obj["metadata"]["uid"]:
            raise errors.conflict(rtype.qualified, t.name or "", "Precondition failed: UID in precondition")
        if pre.get("resourceVersion") and pre["resourceVersion"] != obj["metadata"]["resourceVersion"]:
            raise errors.conflict(rtype.qualified, t.name or "")
        if dry_run:
            return obj, True
        policy = opts.get("propagationPolicy")
        if opts.get("orphanDependents") is True:
            policy = "Orphan"
        if policy == "Orphan":
            self.gc.orphan(obj["metadata"]["uid"])
        meta = obj["metadata"]
        pending = bool(meta.get("finalizers")) or rtype.kind in ("Namespace", "CustomResourceDefinition")
        if pending:
            if meta.get("deletionTimestamp"):
                return obj, True
            obj = copy.deepcopy(obj)
            obj["metadata"]["deletionTimestamp"] = registry.timestamp()
            obj["metadata"]["deletionGracePeriodSeconds"] = 0
            if rtype.kind == "Namespace":
                obj["status"] = {"phase": "Terminating"}
            stored = self.store.put(t.key, obj)
            self.gc.wake()
            return stored, True
        return self._finish_delete(rtype, t.key) or obj, False

    def _delete_stored(self, rtype: ResourceType, namespace: str | None, name: str) -> None:
        """The garbage collector's DELETE: default options, finalizers honoured."""
        self._delete(Target(rtype, rtype.storage_version, namespace, name, None), {}, False)

    # -- HTTP ----------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024, middlewares=[self._errors_middleware])
        r = app.router
        d = self.discovery
        r.add_get("/version", d.h_version)
        for probe in ("/healthz", "/readyz", "/livez"):
            r.add_get(probe, lambda _: web.Response(text="ok"))
        r.add_get("/api", d.h_api)
        r.add_get("/apis", d.h_apis)
        r.add_get("/openapi/v3", d.h_openapi_root)
        r.add_route("*", "/openapi/v3/{path:.*}", d.h_openapi_gv)
        r.add_route("*", "/api/v1", d.h_core_resources)
        r.add_route("*", "/api/v1/{rest:.*}", self.h_core)
        r.add_route("*", "/apis/{group}", d.h_group)
        r.add_route("*", "/apis/{group}/{version}", d.h_group_resources)
        r.add_route("*", "/apis/{group}/{version}/{rest:.*}", self.h_grouped)
        app.on_startup.append(self._start_gc)
        app.on_cleanup.append(self._stop_gc)
        return app

    async def _start_gc(self, app: web.Application) -> None:
        app["gc"] = asyncio.create_task(self.gc.run())

    async def _stop_gc(self, app: web.Application) -> None:
        app["gc"].cancel()

    @web.middleware
    async def _errors_middleware(self, request: web.Request, handler):
        try:
            return await handler(request)
        except ApiError as err:
            log.debug("%s %s -> %s %s", request.method, request.path_qs, err.code, err.message)
            return web.json_response(err.status(), status=err.code)
        except web.HTTPException:
            raise
        except Exception as err:  # noqa: BLE001 - an emulator bug must reach the client readably
            log.exception("internal error on %s %s", request.method, request.path_qs)
            return web.json_response(ApiError(500, "InternalError", f"emulator bug: {err!r}").status(), status=500)

    # resources

    async def h_core(self, request: web.Request) -> web.StreamResponse:
        rest = [p for p in request.match_info["rest"].split("/") if p]
        return await self.dispatch(request, self.resolve("", "v1", rest))

    async def h_grouped(self, request: web.Request) -> web.StreamResponse:
        rest = [p for p in request.match_info["rest"].split("/") if p]
        m = request.match_info
        return await self.dispatch(request, self.resolve(m["group"], m["version"], rest))

    async def dispatch(self, request: web.Request, t: Target) -> web.StreamResponse:
        method = request.method
        if t.rtype.namespaced and t.name is not None and t.namespace is None:
            raise errors.no_such_path()
        if t.subresource == "binding":
            if method != "POST":
                raise errors.method_not_allowed()
            return await self.bind(request, t)
        if method == "GET":
            if t.name is None:
                if request.query.get("watch") in ("true", "1"):
                    return await self.watch(request, t)
                return self.list(request, t)
            return self.get(request, t)
        if method == "POST" and t.name is None:
            return await self.create(request, t)
        if method == "PUT" and t.name is not None:
            return await self.update(request, t)
        if method == "PATCH" and t.name is not None:
            return await self.patch(request, t)
        if method == "DELETE":
            if t.name is None:
                return await self.delete_collection(request, t)
            return await self.delete(request, t)
        raise errors.method_not_allowed()

    # reads

    def _view(self, t: Target, obj: dict) -> dict:
        return t.rtype.view(obj, t.version)

    def _respond(self, request: web.Request, t: Target, obj: dict, status: int = 200) -> web.Response:
        view = self._view(t, obj)
        if _wants_table(request):
            return web.json_response(self._table(request, t, [view], with_columns=True, rv=view["metadata"]["resourceVersion"]))
        return web.json_response(view, status=status)

    def _table(self, request: web.Request, t: Target, views: list[dict], with_columns: bool, rv: str,
               cont: str = "") -> dict:
        cols, row = t.rtype.columns_and_row(t.version)
        include = request.query.get("includeObject", "Metadata")
        rows = []
        for v in views:
            r: dict[str, Any] = {"cells": row(v)}
            if include == "Object":
                r["object"] = v
            elif include == "Metadata":
                r["object"] = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                               "metadata": v["metadata"]}
            rows.append(r)
        meta: dict[str, Any] = {"resourceVersion": rv}
        if cont:
            meta["continue"] = cont
        out: dict[str, Any] = {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": meta, "rows": rows}
        if with_columns:
            out["columnDefinitions"] = cols
        return out

    def get(self, request: web.Request, t: Target) -> web.Response:
        obj = self.store.get(t.key)
        if obj is None:
            raise errors.not_found(t.rtype.qualified, t.name or "")
        return self._respond(request, t, obj)

    def _filter(self, request: web.Request):
        try:
            return selectors.make_filter(request.query.get("labelSelector"), request.query.get("fieldSelector"))
        except selectors.SelectorError as err:
            raise errors.bad_request(str(err)) from err

    def list(self, request: web.Request, t: Target) -> web.Response:
        match = self._filter(request)
        views = [self._view(t, o) for o in self.store.list(t.rtype.storage, t.namespace)]
        views = [v for v in views if match(v)]
        start = request.query.get("continue", "")
        if start:
            views = [v for v in views if _sort_key(v) > tuple(json.loads(_b64d(start)))]
        cont = ""
        limit = int(request.query.get("limit", "0") or 0)
        if limit and len(views) > limit:
            views = views[:limit]
            cont = _b64e(json.dumps(list(_sort_key(views[-1]))))
        rv = str(self.store.rv)
        if _wants_table(request):
            return web.json_response(self._table(request, t, views, True, rv, cont))
        meta: dict[str, Any] = {"resourceVersion": rv}
        if cont:
            meta["continue"] = cont
        return web.json_response({"kind": f"{t.rtype.kind}List", "apiVersion": t.rtype.api_version(t.version),
                                  "metadata": meta, "items": views})

    async def watch(self, request: web.Request, t: Target) -> web.StreamResponse:
        match = self._filter(request)
        q = request.query
        rv_param = q.get("resourceVersion", "")
        bookmarks = q.get("allowWatchBookmarks") in ("true", "1")
        send_initial = q.get("sendInitialEvents") in ("true", "1")
        timeout = float(q["timeoutSeconds"]) if q.get("timeoutSeconds") else None
        table = _wants_table(request)
        watcher = self.store.watch(t.rtype.storage, t.namespace)
        try:
            initial: list[dict] = []
            backlog: list[Event] = []
            if rv_param in ("", "0") or send_initial:
                initial = [self._view(t, o) for o in self.store.list(t.rtype.storage, t.namespace)]
                initial = [v for v in initial if match(v)]
                start_rv = self.store.rv
            else:
                try:
                    start_rv = int(rv_param)
                except ValueError as err:
                    raise errors.bad_request(f"invalid resourceVersion {rv_param!r}") from err
                history_full = len(self.store.history) == self.store.history.maxlen
                if history_full and start_rv < self.store.oldest_rv - 1:
                    # Like a real server: 200, then one ERROR event with a 410 Status.
                    expired = errors.gone(f"too old resource version: {start_rv} ({self.store.oldest_rv - 1})")
                    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
                    await resp.prepare(request)
                    await resp.write(json.dumps({"type": "ERROR", "object": expired.status()}).encode() + b"\n")
                    await resp.write_eof()
                    return resp
                backlog = self.store.events_since(t.rtype.storage, t.namespace, start_rv)
            resp = web.StreamResponse(headers={"Content-Type": "application/json"})
            resp.enable_chunked_encoding()
            await resp.prepare(request)

            async def send(typ: str, obj: dict) -> None:
                if table and typ in ("ADDED", "MODIFIED", "DELETED"):
                    obj = self._table(request, t, [obj], False, obj["metadata"]["resourceVersion"])
                await resp.write(json.dumps({"type": typ, "object": obj}).encode() + b"\n")

            last_rv = start_rv
            for v in initial:
                await send("ADDED", v)
            if send_initial and bookmarks:
                await send("BOOKMARK", self._bookmark(t, start_rv, initial_end=True))
            for ev in backlog:
                await self._send_event(send, t, ev, match)
                last_rv = ev.rv
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout if timeout else None
            next_bookmark = loop.time() + self.bookmark_interval
            while True:
                now = loop.time()
                if deadline is not None and now >= deadline:
                    break
                wait = next_bookmark - now
                if deadline is not None:
                    wait = min(wait, deadline - now)
                try:
                    ev = await asyncio.wait_for(watcher.queue.get(), timeout=max(wait, 0.001))
                except asyncio.TimeoutError:
                    if bookmarks and loop.time() >= next_bookmark:
                        await send("BOOKMARK", self._bookmark(t, max(last_rv, self.store.rv)))
                    if loop.time() >= next_bookmark:
                        next_bookmark = loop.time() + self.bookmark_interval
                    continue
                if ev.rv <= last_rv:
                    continue
                await self._send_event(send, t, ev, match)
                last_rv = ev.rv
            await resp.write_eof()
            return resp
        except ConnectionResetError:
            # The client went away: the normal end of most watches.
            return web.Response(status=499)
        finally:
            self.store.unwatch(watcher)

    def _bookmark(self, t: Target, rv: int, initial_end: bool = False) -> dict:
        meta: dict[str, Any] = {"resourceVersion": str(rv)}
        if initial_end:
            meta["annotations"] = {INITIAL_EVENTS_END: "true"}
        return {"kind": t.rtype.kind, "apiVersion": t.rtype.api_version(t.version), "metadata": meta}

    async def _send_event(self, send, t: Target, ev: Event, match) -> None:
        new = self._view(t, ev.obj)
        old = self._view(t, ev.old) if ev.old is not None else None
        if ev.type == "DELETED":
            if match(new):
                await send("DELETED", new)
            return
        now_in = match(new)
        was_in = old is not None and match(old)
        if ev.type == "ADDED" and now_in:
            await send("ADDED", new)
        elif now_in and was_in:
            await send("MODIFIED", new)
        elif now_in:
            await send("ADDED", new)
        elif was_in:
            # Leaving the selection looks like a deletion to this watcher, as on a real server.
            await send("DELETED", new)

    # writes

    async def _body(self, request: web.Request) -> Any:
        raw = await request.read()
        if not raw:
            return {}
        if "protobuf" in request.content_type:
            try:
                _, kind, obj = protobuf.decode(raw)
            except protobuf.ProtobufError as err:
                raise errors.bad_request(f"invalid protobuf body: {err}") from err
            if kind == "Namespace":
                obj.pop("_has_body", None)
                return obj
        if "protobuf" in request.content_type or "cbor" in request.content_type:
            raise errors.unsupported_media_type(
                f"the body of the request was in an unknown format - accepted media types include: "
                f"application/json, application/yaml (got {request.content_type})")
        try:
            if "yaml" in request.content_type:
                return yaml.safe_load(raw)
            return json.loads(raw)
        except (ValueError, yaml.YAMLError) as err:
            raise errors.bad_request(f"invalid request body: {err}") from err

    def _check_namespace(self, t: Target) -> None:
        if not t.rtype.namespaced:
            return
        ns = self.store.get(("/namespaces", "", t.namespace or ""))
        if ns is None:
            raise errors.not_found("namespaces", t.namespace or "")
        if ns["metadata"].get("deletionTimestamp"):
            raise errors.forbidden(t.rtype.qualified, "",
                                   f"unable to create new content in namespace {t.namespace} because it is being terminated")

    async def create(self, request: web.Request, t: Target) -> web.Response:
        if t.rtype.namespaced and t.namespace is None:
            raise errors.method_not_allowed("create of a namespaced resource needs a namespace in the path")
        body = await self._body(request)
        if not isinstance(body, dict):
            raise errors.bad_request("the body must be an object")
        meta = body.setdefault("metadata", {})
        if t.rtype.namespaced:
            if meta.get("namespace") and meta["namespace"] != t.namespace:
                raise errors.bad_request("the namespace of the provided object does not match the namespace sent on the request")
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + "".join(random.choices(string.ascii_lowercase + string.digits, k=5))
        self._check_namespace(t)
        t = Target(t.rtype, t.version, t.namespace, meta.get("name", ""), None)
        if self.store.get(t.key) is not None:
            raise errors.already_exists(t.rtype.qualified, t.name or "")
        obj = self._prepare(t, t.rtype.store_form(body), None, request.query)
        stored, _ = self._commit(t, obj, None, request.query)
        return self._respond(request, t, stored, status=201)

    async def update(self, request: web.Request, t: Target) -> web.Response:
        body = await self._body(request)
        if not isinstance(body, dict):
            raise errors.bad_request("the body must be an object")
        meta = body.setdefault("metadata", {})
        if meta.get("name") and meta["name"] != t.name:
            raise errors.bad_request("the name of the object does not match the name on the URL")
        meta["name"] = t.name
        old = self.store.get(t.key)
        if old is None:
            raise errors.not_found(t.rtype.qualified, t.name or "")
        obj = self._prepare(t, t.rtype.store_form(body), old, request.query)
        stored, exists = self._commit(t, obj, old, request.query, status_only=t.subresource == "status")
        return self._respond(request, t, stored)

    async def patch(self, request: web.Request, t: Target) -> web.Response:
        ctype = request.content_type
        body = await self._body(request)
        old = self.store.get(t.key)
        status_only = t.subresource == "status"
        if ctype == "application/apply-patch+yaml":
            return await self._apply(request, t, body, old)
        if old is None:
            raise errors.not_found(t.rtype.qualified, t.name or "")
        current = self._view(t, old)
        if ctype == "application/merge-patch+json":
            new = patch.merge_patch(current, body)
        elif ctype == "application/json-patch+json":
            try:
                new = patch.json_patch(current, body)
            except patch.PatchError as err:
                raise ApiError(422, "Invalid", f"the server rejected our request due to an error in our request: {err}") from err
        elif ctype == "application/strategic-merge-patch+json":
            if t.rtype.custom:
                raise errors.unsupported_media_type(
                    "the body of the request was in an unknown format - accepted media types include: "
                    "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml")
            new = patch.strategic_merge_patch(current, body, t.rtype.list_keys(t.version))
        else:
            raise errors.unsupported_media_type(f"the body of the request was in an unknown format: {ctype}")
        if not isinstance(new, dict):
            raise errors.bad_request("the patched object is not an object")
        # A patch is checked against the resourceVersion only when it sets one itself.
        if new.get("metadata", {}).get("resourceVersion") == old["metadata"]["resourceVersion"]:
            new["metadata"].pop("resourceVersion", None)
        new.setdefault("metadata", {})["name"] = t.name
        obj = self._prepare(t, t.rtype.store_form(new), old, request.query)
        stored, _ = self._commit(t, obj, old, request.query, status_only=status_only)
        return self._respond(request, t, stored)

    async def _apply(self, request: web.Request, t: Target, body: Any, old: dict | None) -> web.Response:
        manager = request.query.get("fieldManager")
        if not manager:
            raise errors.bad_request("PATCH requests with the apply content type need a fieldManager")
        if not isinstance(body, dict):
            raise errors.bad_request("the applied configuration must be an object")
        meta = body.setdefault("metadata", {})
        if meta.get("name") and meta["name"] != t.name:
            raise errors.bad_request("the name of the object does not match the name on the URL")
        meta["name"] = t.name
        want_rv = meta.pop("resourceVersion", None)
        status_only = t.subresource == "status"
        list_keys = t.rtype.list_keys(t.version)
        applied = {k: v for k, v in body.items() if k not in ("apiVersion", "kind")}
        if status_only:
            applied = {"status": applied.get("status", {})} if "status" in applied else {}
        elif t.rtype.status_subresource:
            applied.pop("status", None)
        applied_meta = applied.get("metadata") or {}
        for k in ("name", "namespace", "uid", "creationTimestamp", "managedFields", "generation"):
            applied_meta.pop(k, None)
        if not applied_meta:
            applied.pop("metadata", None)
        try:
            fields = patch.field_set(applied, list_keys)
        except patch.PatchError as err:
            raise errors.invalid(t.rtype.kind, t.rtype.group, t.name or "", [str(err)]) from err
        sub = t.subresource or ""
        akey = t.key + (manager, sub)
        if old is None:
            if status_only:
                raise errors.not_found(t.rtype.qualified, t.name or "")
            self._check_namespace(t)
            new = t.rtype.store_form(body)
            new["metadata"]["name"] = t.name
            obj = self._prepare(t, new, None, request.query)
            stored, _ = self._commit(t, obj, None, request.query)
            if "All" not in request.query.getall("dryRun", []):
                self.store.applied[akey] = fields
            return self._respond(request, t, stored, status=201)
        current = self._view(t, old)
        prev = self.store.applied.get(akey, set())
        others: set = set()
        for k, v in self.store.applied.items():
            if k[:3] == t.key and k != akey:
                others |= v
        merged = patch.apply_merge(current, applied, list_keys)
        merged = patch.remove_fields(merged, (prev - fields) - others, list_keys)
        if want_rv:
            merged["metadata"]["resourceVersion"] = want_rv
        else:
            merged["metadata"].pop("resourceVersion", None)
        obj = self._prepare(t, t.rtype.store_form(merged), old, request.query)
        stored, _ = self._commit(t, obj, old, request.query, status_only=status_only)
        if "All" not in request.query.getall("dryRun", []):
            self.store.applied[akey] = fields
        return self._respond(request, t, stored)

    async def bind(self, request: web.Request, t: Target) -> web.Response:
        """`pods/binding`: what a scheduler does; sets `spec.nodeName` once."""
        body = await self._body(request)
        node = ((body or {}).get("target") or {}).get("name")
        if not node:
            raise errors.invalid("Binding", "", t.name or "", ["target.name: Required value"])
        pod = self.store.get(t.key)
        if pod is None:
            raise errors.not_found("pods", t.name or "")
        current = (pod.get("spec") or {}).get("nodeName")
        if current:
            raise errors.conflict("pods/binding", t.name or "", f"pod {t.name} is already assigned to node \"{current}\"")
        new = copy.deepcopy(pod)
        new["spec"]["nodeName"] = node
        conds = [c for c in (new.get("status") or {}).get("conditions") or [] if c.get("type") != "PodScheduled"]
        new.setdefault("status", {})["conditions"] = conds + [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": registry.timestamp()}]
        self.store.put(t.key, new)
        return web.json_response({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                                  "code": 201}, status=201)

    async def _delete_options(self, request: web.Request) -> dict:
        body = await self._body(request) if request.can_read_body else {}
        opts = dict(body or {})
        for k in ("propagationPolicy", "gracePeriodSeconds"):
            if k in request.query:
                opts[k] = request.query[k]
        if request.query.get("orphanDependents") in ("true", "1"):
            opts["orphanDependents"] = True
        return opts

    async def delete(self, request: web.Request, t: Target) -> web.Response:
        opts = await self._delete_options(request)
        dry_run = "All" in request.query.getall("dryRun", []) or "All" in (opts.get("dryRun") or [])
        obj, pending = self._delete(t, opts, dry_run)
        return self._respond(request, t, obj, status=202 if pending else 200)

    async def delete_collection(self, request: web.Request, t: Target) -> web.Response:
        opts = await self._delete_options(request)
        dry_run = "All" in request.query.getall("dryRun", [])
        match = self._filter(request)
        deleted = []
        for obj in self.store.list(t.rtype.storage, t.namespace):
            view = self._view(t, obj)
            if not match(view):
                continue
            target = Target(t.rtype, t.version, obj["metadata"].get("namespace"), obj["metadata"]["name"], None)
            o, _ = self._delete(target, opts, dry_run)
            deleted.append(self._view(t, o))
        return web.json_response({"kind": f"{t.rtype.kind}List", "apiVersion": t.rtype.api_version(t.version),
                                  "metadata": {"resourceVersion": str(self.store.rv)}, "items": deleted})


def _sort_key(view: dict) -> tuple[str, str]:
    return (view["metadata"].get("namespace", ""), view["metadata"]["name"])


def _b64e(text: str) -> str:
    import base64

    return base64.urlsafe_b64encode(text.encode()).decode()


def _b64d(text: str) -> str:
    import base64

    try:
        return base64.urlsafe_b64decode(text.encode()).decode()
    except ValueError as err:
        raise errors.bad_request("invalid continue token") from err


def _wants_table(request: web.Request) -> bool:
    return "as=Table" in request.headers.get("Accept", "")


def write_kubeconfig(path: str, server: str, context: str = "bnsandbox", ca: str | None = None) -> None:
    cluster: dict[str, Any] = {"server": server}
    if ca:
        cluster["certificate-authority-data"] = base64.b64encode(open(ca, "rb").read()).decode()
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": context, "cluster": cluster}],
        "users": [{"name": context, "user": {"token": "bnsandbox"}}],
        "contexts": [{"name": context, "context": {"cluster": context, "user": context, "namespace": "default"}}],
        "current-context": context,
    }
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(cfg, f)


async def serve(host: str, port: int, kubeconfig: str | None, bookmark_interval: float,
                ready_file: str | None = None, watch_history: int = 20000, tls_dir: str | None = None) -> None:
    server = ApiServer(bookmark_interval=bookmark_interval, watch_history=watch_history)
    # Open watches never end by themselves: give them a moment on shutdown, not a minute.
    runner = web.AppRunner(server.app(), handle_signals=False, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    ssl_context, ca = None, None
    if tls_dir:
        ca_path, crt, key = tls.make_certs(pathlib.Path(tls_dir), host)
        ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_context.load_cert_chain(str(crt), str(key))
        ca = str(ca_path)
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
    await site.start()
    sockets = site._server.sockets if site._server else []  # noqa: SLF001 - the bound port for --port 0
    bound = sockets[0].getsockname()[1] if sockets else port
    url = f"{'https' if tls_dir else 'http'}://{host}:{bound}"
    if kubeconfig:
        write_kubeconfig(kubeconfig, url, ca=ca)
    log.info("serving the Kubernetes API on %s (kubeconfig %s)", url, kubeconfig)
    if ready_file:
        with open(ready_file, "w", encoding="utf-8") as f:
            f.write(url + "\n")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python3 -m bnsandbox.apiserver", description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=6443, help="0 picks a free port")
    p.add_argument("--kubeconfig", help="write a kubeconfig for this server here")
    p.add_argument("--ready-file", help="write the server URL here once it listens")
    p.add_argument("--bookmark-interval", type=float, default=5.0, help="seconds between watch BOOKMARKs")
    p.add_argument("--watch-history", type=int, default=20000,
                   help="events a watch can resume from; older resourceVersions get 410 Gone")
    p.add_argument("--tls-dir", help="serve HTTPS with a fresh CA and server certificate written here; the "
                   "kubeconfig then carries the CA")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    asyncio.run(serve(args.host, args.port, args.kubeconfig, args.bookmark_interval, args.ready_file,
                      args.watch_history, args.tls_dir))


if __name__ == "__main__":
    main()
