"""How the emulator describes itself: `/version`, the group and resource lists that kubectl and
kube-rs discover types from, and OpenAPI v3 — all derived from the types served right now, so
a CRD shows up the moment it is created."""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

from aiohttp import web

from . import errors
from .registry import Types

KUBE_VERSION = {"major": "1", "minor": "32", "gitVersion": "v1.32.0-bnsandbox", "platform": "linux/amd64",
                "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
                "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.23", "compiler": "gc"}


class Discovery:
    """The discovery and OpenAPI handlers; the server routes to them and shares its `types`."""

    def __init__(self, types: Types) -> None:
        self.types = types

    def groups(self) -> dict[str, list[str]]:
        """Each named group with its versions, in the order its types were registered."""
        groups: dict[str, list[str]] = {}
        for t in self.types:
            if t.group:
                vs = groups.setdefault(t.group, [])
                for v in t.versions:
                    if v not in vs:
                        vs.append(v)
        return groups

    @staticmethod
    def _api_group(group: str, versions: list[str]) -> dict:
        gvs = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
        return {"name": group, "versions": gvs, "preferredVersion": gvs[0]}

    def resource_list(self, group: str, version: str) -> dict:
        resources = []
        for t in sorted(self.types.served(group, version), key=lambda t: t.plural):
            resources += t.discovery_entries()
        gv = f"{group}/{version}" if group else version
        return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}

    async def h_version(self, _: web.Request) -> web.Response:
        return web.json_response(KUBE_VERSION)

    async def h_api(self, _: web.Request) -> web.Response:
        return web.json_response({"kind": "APIVersions", "versions": ["v1"],
                                  "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}]})

    async def h_apis(self, _: web.Request) -> web.Response:
        groups = [self._api_group(g, vs) for g, vs in sorted(self.groups().items())]
        return web.json_response({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})

    async def h_core_resources(self, _: web.Request) -> web.Response:
        return web.json_response(self.resource_list("", "v1"))

    async def h_group(self, request: web.Request) -> web.Response:
        group = request.match_info["group"]
        versions = self.groups().get(group)
        if not versions:
            raise errors.no_such_path()
        return web.json_response({"kind": "APIGroup", "apiVersion": "v1", **self._api_group(group, versions)})

    async def h_group_resources(self, request: web.Request) -> web.Response:
        group, version = request.match_info["group"], request.match_info["version"]
        if not self.types.served(group, version):
            raise errors.no_such_path()
        return web.json_response(self.resource_list(group, version))

    # OpenAPI v3: enough for kubectl to see that the server validates fields itself (it then
    # sends `fieldValidation=Strict` instead of downloading schemas to validate client-side).

    def _gv_paths(self) -> dict[str, tuple[str, str]]:
        out = {"api/v1": ("", "v1")}
        for g, vs in self.groups().items():
            for v in vs:
                out[f"apis/{g}/{v}"] = (g, v)
        return out

    def openapi_doc(self, group: str, version: str) -> dict:
        """One group-version's document: a path per resource and a schema per kind (a CRD's
        own schema, or one that accepts anything for a built-in kind)."""
        paths: dict[str, Any] = {}
        schemas: dict[str, Any] = {}
        prefix = f"/apis/{group}/{version}" if group else "/api/v1"
        params = [{"name": n, "in": "query", "schema": {"type": "string"}}
                  for n in ("dryRun", "fieldManager", "fieldValidation", "force")]
        for t in self.types.served(group, version):
            gvk = [{"group": t.group, "version": version, "kind": t.kind}]
            base = f"{prefix}/namespaces/{{namespace}}/{t.plural}" if t.namespaced else f"{prefix}/{t.plural}"
            op = {"parameters": params, "x-kubernetes-group-version-kind": gvk[0], "responses": {}}
            paths[base + "/{name}"] = {"patch": op, "put": op, "get": op, "delete": op}
            paths[base] = {"post": op, "get": op}
            sch = copy.deepcopy(t.schemas.get(version) or {"type": "object",
                                                           "x-kubernetes-preserve-unknown-fields": True})
            sch["x-kubernetes-group-version-kind"] = gvk
            schemas[f"{t.group or 'core'}.{version}.{t.kind}"] = sch
        return {"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": KUBE_VERSION["gitVersion"]},
                "paths": paths, "components": {"schemas": schemas}}

    async def h_openapi_root(self, _: web.Request) -> web.Response:
        paths = {}
        for path, (g, v) in self._gv_paths().items():
            digest = hashlib.sha256(json.dumps(self.openapi_doc(g, v), sort_keys=True).encode()).hexdigest()
            paths[path] = {"serverRelativeURL": f"/openapi/v3/{path}?hash={digest[:32].upper()}"}
        return web.json_response({"paths": paths})

    async def h_openapi_gv(self, request: web.Request) -> web.Response:
        gv = self._gv_paths().get(request.match_info["path"])
        if gv is None:
            raise errors.no_such_path()
        return web.json_response(self.openapi_doc(*gv))
