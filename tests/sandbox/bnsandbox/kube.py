"""A small asynchronous Kubernetes client from a kubeconfig (server, token, CA, client
certificates, insecure-skip-tls-verify, tls-server-name): what the kubelet stand-in needs, against the emulator
or a real API server."""

from __future__ import annotations

import base64
import json
import pathlib
import ssl
import tempfile
from typing import Any, AsyncIterator

import aiohttp
import yaml


class KubeError(RuntimeError):
    def __init__(self, status: int, body: Any, what: str) -> None:
        reason = body.get("reason") if isinstance(body, dict) else ""
        message = body.get("message") if isinstance(body, dict) else str(body)
        super().__init__(f"{what}: {status} {reason}: {message}")
        self.status, self.reason = status, reason


def _material(entry: dict, key: str, tmp: pathlib.Path) -> str | None:
    if entry.get(f"{key}-data"):
        path = tmp / key
        path.write_bytes(base64.b64decode(entry[f"{key}-data"]))
        return str(path)
    return entry.get(key)


class Kube:
    def __init__(self, kubeconfig: str) -> None:
        cfg = yaml.safe_load(pathlib.Path(kubeconfig).read_text())
        ctx_name = cfg.get("current-context")
        ctx = next(c["context"] for c in cfg["contexts"] if c["name"] == ctx_name)
        cluster = next(c["cluster"] for c in cfg["clusters"] if c["name"] == ctx["cluster"])
        user = next((u["user"] for u in cfg.get("users") or [] if u["name"] == ctx.get("user")), {}) or {}
        self.server = cluster["server"].rstrip("/")
        self._tmp = tempfile.TemporaryDirectory(prefix="bnsandbox-kube-")
        tmp = pathlib.Path(self._tmp.name)
        self.ssl: ssl.SSLContext | bool = False
        # The name the certificate is checked against when `server` is a relay (the sandbox's
        # forwarder), as kubectl and kube-rs do.
        self.tls_server_name: str | None = cluster.get("tls-server-name")
        if self.server.startswith("https"):
            ctx_ssl = ssl.create_default_context(cafile=_material(cluster, "certificate-authority", tmp))
            if cluster.get("insecure-skip-tls-verify"):
                ctx_ssl.check_hostname = False
                ctx_ssl.verify_mode = ssl.CERT_NONE
            cert = _material(user, "client-certificate", tmp)
            if cert:
                ctx_ssl.load_cert_chain(cert, _material(user, "client-key", tmp))
            self.ssl = ctx_ssl
        self.headers = {"Accept": "application/json"}
        if user.get("token"):
            self.headers["Authorization"] = f"Bearer {user['token']}"
        self.session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> "Kube":
        # Watch events arrive one per line; allow large objects on one line.
        self.session = aiohttp.ClientSession(headers=self.headers, read_bufsize=4 * 1024 * 1024,
                                             timeout=aiohttp.ClientTimeout(total=None, sock_connect=10))
        return self

    async def __aexit__(self, *exc) -> None:
        if self.session:
            await self.session.close()
        self._tmp.cleanup()

    async def request(self, method: str, path: str, body: Any = None,
                      content_type: str = "application/json", params: dict | None = None) -> Any:
        assert self.session is not None
        data = json.dumps(body) if body is not None else None
        async with self.session.request(method, self.server + path, data=data, params=params, ssl=self.ssl,
                                        server_hostname=self.tls_server_name,
                                        headers={"Content-Type": content_type},
                                        timeout=aiohttp.ClientTimeout(total=30)) as resp:
            text = await resp.text()
            parsed = json.loads(text) if text else None
            if resp.status >= 400:
                raise KubeError(resp.status, parsed, f"{method} {path}")
            return parsed

    async def watch(self, path: str, params: dict) -> AsyncIterator[dict]:
        assert self.session is not None
        params = {**params, "watch": "true"}
        async with self.session.get(self.server + path, params=params, ssl=self.ssl,
                                    server_hostname=self.tls_server_name) as resp:
            if resp.status >= 400:
                raise KubeError(resp.status, await resp.text(), f"watch {path}")
            async for line in resp.content:
                if line.strip():
                    yield json.loads(line)
