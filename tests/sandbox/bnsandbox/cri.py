"""A small CRI (`runtime.v1`) client: the calls a kubelet makes to run and remove pods.

Messages are encoded and decoded by hand on the protobuf wire format (field numbers from the
CRI's `api.proto`), and sent with grpcio's generic unary calls, so no code generation or protoc
is needed. Only the fields the sandbox uses are written or read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc

from .protobuf import fields

SERVICE = "/runtime.v1.RuntimeService/"
SANDBOX_READY, SANDBOX_NOTREADY = 0, 1
CONTAINER_CREATED, CONTAINER_RUNNING, CONTAINER_EXITED, CONTAINER_UNKNOWN = 0, 1, 2, 3


class CriError(RuntimeError):
    """A CRI call failed; carries the method and the gRPC status."""

    def __init__(self, method: str, code: Any, details: str) -> None:
        super().__init__(f"CRI {method}: {code}: {details}")
        self.method, self.code, self.details = method, code, details


# -- encoding -------------------------------------------------------------------------------------


def _varint(n: int) -> bytes:
    if n < 0:
        n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _key(num: int, wire: int) -> bytes:
    return _varint(num << 3 | wire)


def f_bytes(num: int, data: bytes) -> bytes:
    return _key(num, 2) + _varint(len(data)) + data


def f_str(num: int, text: str | None) -> bytes:
    return f_bytes(num, text.encode()) if text else b""


def f_int(num: int, value: int | bool | None) -> bytes:
    return _key(num, 0) + _varint(int(value)) if value else b""


def f_msg(num: int, body: bytes | None) -> bytes:
    return f_bytes(num, body) if body is not None else b""


def f_map(num: int, mapping: dict[str, str] | None) -> bytes:
    return b"".join(f_bytes(num, f_str(1, k) + f_str(2, v)) for k, v in (mapping or {}).items())


def f_strs(num: int, items: list[str] | None) -> bytes:
    return b"".join(f_bytes(num, s.encode()) for s in items or [])


# -- decoding -------------------------------------------------------------------------------------


def _get(msg: bytes, num: int, default: Any = None) -> Any:
    for n, v in fields(msg):
        if n == num:
            return v
    return default


def _get_all(msg: bytes, num: int) -> list:
    return [v for n, v in fields(msg) if n == num]


def _str(msg: bytes, num: int) -> str:
    v = _get(msg, num, b"")
    return bytes(v).decode() if isinstance(v, (bytes, bytearray)) else ""


def _map(msg: bytes, num: int) -> dict[str, str]:
    return {_str(e, 1): _str(e, 2) for e in _get_all(msg, num)}


@dataclass
class SandboxMeta:
    name: str
    uid: str
    namespace: str
    attempt: int = 0

    def encode(self) -> bytes:
        return f_str(1, self.name) + f_str(2, self.uid) + f_str(3, self.namespace) + f_int(4, self.attempt)

    @classmethod
    def decode(cls, msg: bytes) -> "SandboxMeta":
        return cls(_str(msg, 1), _str(msg, 2), _str(msg, 3), int(_get(msg, 4, 0)))


@dataclass
class Sandbox:
    id: str
    meta: SandboxMeta
    state: int
    labels: dict[str, str]


@dataclass
class SandboxStatus:
    id: str
    state: int
    ip: str
    additional_ips: list[str]
    info: dict[str, str]


@dataclass
class ContainerInfo:
    id: str
    sandbox_id: str
    name: str
    state: int


@dataclass
class DnsConfig:
    """`runtime.v1.DNSConfig`: what the runtime writes into the pod's /etc/resolv.conf. Options
    are `name` or `name:value` strings, as the kubelet formats them (`ndots:5`)."""

    servers: list[str]
    searches: list[str]
    options: list[str]

    def encode(self) -> bytes:
        return f_strs(1, self.servers) + f_strs(2, self.searches) + f_strs(3, self.options)


@dataclass
class ContainerStatus:
    id: str
    state: int
    # The runtime's verbose info; containerd's `info` JSON carries the task's `pid`.
    info: dict[str, str]
    # Of an exited container (`runtime.v1.ContainerStatus.exit_code`).
    exit_code: int = 0


def sandbox_config(meta: SandboxMeta, hostname: str, log_dir: str, labels: dict[str, str],
                   annotations: dict[str, str], cgroup_parent: str = "", dns: DnsConfig | None = None) -> bytes:
    """A `PodSandboxConfig`. Without `dns` the runtime gives the pod the node's resolv.conf
    (containerd copies the host's), as the kubelet's `Default` DNS policy does."""
    linux = f_str(1, cgroup_parent)
    return (f_msg(1, meta.encode()) + f_str(2, hostname) + f_str(3, log_dir)
            + f_msg(4, dns.encode() if dns else None) + f_map(6, labels) + f_map(7, annotations) + f_msg(8, linux))


def container_config(name: str, image: str, command: list[str], args: list[str], env: dict[str, str],
                     labels: dict[str, str], log_path: str, add_capabilities: list[str] | None = None) -> bytes:
    envs = b"".join(f_bytes(6, f_str(1, k) + f_str(2, v)) for k, v in env.items())
    # linux (15) → security_context (2) → capabilities (1) → add_capabilities (1), as the kubelet
    # passes a container's `securityContext.capabilities.add` (containerd adds the CAP_ prefix).
    linux = f_msg(15, f_msg(2, f_msg(1, f_strs(1, add_capabilities)))) if add_capabilities else b""
    return (f_msg(1, f_str(1, name)) + f_msg(2, f_str(1, image)) + f_strs(3, command) + f_strs(4, args)
            + envs + f_map(9, labels) + f_str(11, log_path) + linux)


class RuntimeClient:
    def __init__(self, endpoint: str, timeout: float = 60.0) -> None:
        target = endpoint if endpoint.startswith("unix:") else f"unix://{endpoint}"
        self.channel = grpc.insecure_channel(target)
        self.timeout = timeout

    def close(self) -> None:
        self.channel.close()

    def _call(self, method: str, body: bytes) -> bytes:
        stub = self.channel.unary_unary(SERVICE + method, request_serializer=None, response_deserializer=None)
        try:
            return stub(body, timeout=self.timeout)
        except grpc.RpcError as err:
            raise CriError(method, err.code(), err.details()) from err

    def version(self) -> dict[str, str]:
        msg = self._call("Version", f_str(1, "v1"))
        return {"version": _str(msg, 1), "runtime_name": _str(msg, 2), "runtime_version": _str(msg, 3),
                "runtime_api_version": _str(msg, 4)}

    def run_pod_sandbox(self, config: bytes) -> str:
        return _str(self._call("RunPodSandbox", f_msg(1, config)), 1)

    def stop_pod_sandbox(self, sandbox_id: str) -> None:
        self._call("StopPodSandbox", f_str(1, sandbox_id))

    def remove_pod_sandbox(self, sandbox_id: str) -> None:
        self._call("RemovePodSandbox", f_str(1, sandbox_id))

    def pod_sandbox_status(self, sandbox_id: str, verbose: bool = False) -> SandboxStatus:
        msg = self._call("PodSandboxStatus", f_str(1, sandbox_id) + f_int(2, verbose))
        status = _get(msg, 1, b"")
        network = _get(status, 5, b"")
        extra = [_str(ip, 1) for ip in _get_all(network, 2)]
        return SandboxStatus(_str(status, 1), int(_get(status, 3, 0)), _str(network, 1), extra, _map(msg, 2))

    def list_pod_sandbox(self, labels: dict[str, str] | None = None) -> list[Sandbox]:
        flt = f_map(3, labels)
        msg = self._call("ListPodSandbox", f_msg(1, flt) if flt else b"")
        out = []
        for item in _get_all(msg, 1):
            out.append(Sandbox(_str(item, 1), SandboxMeta.decode(_get(item, 2, b"")), int(_get(item, 3, 0)),
                               _map(item, 5)))
        return out

    def create_container(self, sandbox_id: str, config: bytes, sandbox_cfg: bytes) -> str:
        return _str(self._call("CreateContainer", f_str(1, sandbox_id) + f_msg(2, config) + f_msg(3, sandbox_cfg)), 1)

    def start_container(self, container_id: str) -> None:
        self._call("StartContainer", f_str(1, container_id))

    def container_status(self, container_id: str, verbose: bool = False) -> ContainerStatus:
        msg = self._call("ContainerStatus", f_str(1, container_id) + f_int(2, verbose))
        status = _get(msg, 1, b"")
        code = int(_get(status, 7, 0))
        # An int32 on the wire: negative values arrive as 64-bit two's complement varints.
        code = code - (1 << 64) if code >= 1 << 63 else code
        return ContainerStatus(_str(status, 1), int(_get(status, 3, 0)), _map(msg, 2), code)

    def list_containers(self, sandbox_id: str | None = None) -> list[ContainerInfo]:
        flt = f_str(3, sandbox_id)
        msg = self._call("ListContainers", f_msg(1, flt) if flt else b"")
        out = []
        for item in _get_all(msg, 1):
            meta = _get(item, 3, b"")
            out.append(ContainerInfo(_str(item, 1), _str(item, 2), _str(meta, 1), int(_get(item, 6, 0))))
        return out
