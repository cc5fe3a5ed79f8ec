"""Fixtures: an emulator process per session (and a separate one where a test needs its own
settings), a raw HTTP client, and real kubectl pointed at it through a kubeconfig."""

from __future__ import annotations

import http.client
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time
import urllib.parse
import uuid
from dataclasses import dataclass
from typing import Any, Iterator

import pytest

from bnsandbox import poll

SANDBOX = pathlib.Path(__file__).resolve().parents[1]
REPO = SANDBOX.parents[1]
CRDS = REPO / "crds" / "yaml"
EXAMPLES = REPO / "examples"
KUBECTL = shutil.which("kubectl")


@dataclass
class Reply:
    status: int
    body: Any
    headers: dict[str, str]


class Client:
    """Plain HTTP against the emulator: what a kube-rs client sends, written out by hand."""

    def __init__(self, url: str) -> None:
        u = urllib.parse.urlparse(url)
        self.host, self.port = u.hostname or "127.0.0.1", u.port or 80

    def request(self, method: str, path: str, body: Any = None, content_type: str = "application/json",
                headers: dict[str, str] | None = None) -> Reply:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        data = None
        if body is not None:
            data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        hdrs = {"Content-Type": content_type, "Accept": "application/json"}
        hdrs.update(headers or {})
        conn.request(method, path, body=data, headers=hdrs)
        resp = conn.getresponse()
        raw = resp.read()
        conn.close()
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = raw.decode()
        return Reply(resp.status, parsed, dict(resp.getheaders()))

    def get(self, path: str, **kw) -> Reply:
        return self.request("GET", path, **kw)

    def post(self, path: str, body: Any, **kw) -> Reply:
        return self.request("POST", path, body, **kw)

    def put(self, path: str, body: Any, **kw) -> Reply:
        return self.request("PUT", path, body, **kw)

    def patch(self, path: str, body: Any, content_type: str = "application/merge-patch+json", **kw) -> Reply:
        return self.request("PATCH", path, body, content_type=content_type, **kw)

    def delete(self, path: str, body: Any = None, **kw) -> Reply:
        return self.request("DELETE", path, body, **kw)

    def watch(self, path: str, timeout: float = 5.0) -> "Watch":
        return Watch(self.host, self.port, path, timeout)


class Watch:
    """A streaming watch; `next()` returns one decoded event or raises TimeoutError."""

    def __init__(self, host: str, port: int, path: str, timeout: float) -> None:
        self.conn = http.client.HTTPConnection(host, port, timeout=timeout)
        self.conn.request("GET", path, headers={"Accept": "application/json"})
        self.resp = self.conn.getresponse()
        self.status = self.resp.status

    def next(self) -> dict:
        line = self.resp.readline()
        if not line:
            raise EOFError("watch closed")
        return json.loads(line)

    def until(self, pred, limit: int = 100) -> dict:
        for _ in range(limit):
            ev = self.next()
            if pred(ev):
                return ev
        raise AssertionError("no matching watch event")

    def close(self) -> None:
        self.conn.close()


class Emulator:
    def __init__(self, tmp: pathlib.Path, *args: str) -> None:
        self.kubeconfig = tmp / "kubeconfig"
        ready = tmp / "ready"
        self.log = open(tmp / "apiserver.log", "w")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bnsandbox.apiserver", "--port", "0", "--kubeconfig", str(self.kubeconfig),
             "--ready-file", str(ready), *args],
            cwd=SANDBOX, stdout=self.log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while not (ready.exists() and ready.read_text().strip()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"emulator did not start; see {tmp / 'apiserver.log'}")
            time.sleep(0.05)
        self.url = ready.read_text().strip()
        self.client = Client(self.url)
        self.cache = tmp / "kubectl-cache"

    def kubectl(self, *args: str, check: bool = True, input: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
        cmd = [KUBECTL or "kubectl", "--kubeconfig", str(self.kubeconfig), "--cache-dir", str(self.cache), *args]
        res = subprocess.run(cmd, capture_output=True, text=True, input=input, timeout=timeout)
        if check and res.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
        return res

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


@pytest.fixture(scope="session", autouse=True)
def _one_root_run_at_a_time() -> Iterator[None]:
    """Root tests share the `bnt-sb-test-` namespace prefix; a second run waits for the first."""
    if os.geteuid() != 0:
        yield
        return
    from bnsandbox import netns

    with netns.PrefixLock("bnt-sb-test-"):
        yield


@pytest.fixture(scope="session")
def emulator(tmp_path_factory) -> Iterator[Emulator]:
    # Short bookmark interval so bookmark tests do not wait long.
    emu = Emulator(tmp_path_factory.mktemp("emulator"), "--bookmark-interval", "0.5")
    try:
        yield emu
    finally:
        emu.stop()


@pytest.fixture(scope="session")
def api(emulator) -> Client:
    return emulator.client


@pytest.fixture(scope="session")
def crds(emulator) -> None:
    emulator.kubectl("apply", "-f", str(CRDS))


@pytest.fixture
def ns(api) -> Iterator[str]:
    """A fresh namespace per test, deleted afterwards."""
    name = "t-" + uuid.uuid4().hex[:8]
    assert api.post("/api/v1/namespaces", {"metadata": {"name": name}}).status == 201
    yield name
    api.delete(f"/api/v1/namespaces/{name}")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def wait_for(pred, timeout: float = 5.0, what: str = "condition") -> Any:
    return poll.until(pred, timeout, 0.05, what)


requires_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed (scripts/setup.sh installs it)")
os.environ.setdefault("KUBECTL_EXTERNAL_DIFF", "diff")
