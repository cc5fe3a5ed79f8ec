"""Just enough of Kubernetes' protobuf wire format to read what `kubectl create namespace` sends
(typed clients in kubectl encode request bodies in protobuf): the `k8s\\0` envelope, the
`runtime.Unknown` wrapper, and an object's `ObjectMeta` name, generateName, labels and annotations.
Kinds whose spec matters are refused by the caller with 415."""

from __future__ import annotations

MAGIC = b"k8s\x00"


class ProtobufError(ValueError):
    pass


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        if pos >= len(buf):
            raise ProtobufError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def fields(buf: bytes) -> list[tuple[int, bytes | int]]:
    """(field number, value) pairs; length-delimited values as bytes, varints as int."""
    out, pos = [], 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        num, wire = key >> 3, key & 7
        if wire == 0:
            val, pos = _varint(buf, pos)
            out.append((num, val))
        elif wire == 2:
            length, pos = _varint(buf, pos)
            out.append((num, buf[pos:pos + length]))
            pos += length
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise ProtobufError(f"unsupported wire type {wire}")
    return out


def _string_map(entries: list[bytes]) -> dict[str, str]:
    out = {}
    for entry in entries:
        kv = dict(fields(entry))
        out[bytes(kv.get(1, b"")).decode()] = bytes(kv.get(2, b"")).decode()
    return out


def decode(body: bytes) -> tuple[str, str, dict]:
    """Returns (apiVersion, kind, object with metadata only)."""
    if not body.startswith(MAGIC):
        raise ProtobufError("missing k8s protobuf magic")
    unknown = fields(body[len(MAGIC):])
    type_meta = dict(fields(next((v for n, v in unknown if n == 1), b"")))
    raw = next((v for n, v in unknown if n == 2), b"")
    api_version = bytes(type_meta.get(1, b"")).decode()
    kind = bytes(type_meta.get(2, b"")).decode()
    obj_fields = fields(raw)
    meta_raw = next((v for n, v in obj_fields if n == 1), b"")
    mf = fields(meta_raw)
    meta: dict = {}
    for num, key in ((1, "name"), (2, "generateName"), (3, "namespace")):
        val = next((v for n, v in mf if n == num), None)
        if val:
            meta[key] = bytes(val).decode()
    labels = _string_map([v for n, v in mf if n == 11])
    annotations = _string_map([v for n, v in mf if n == 12])
    if labels:
        meta["labels"] = labels
    if annotations:
        meta["annotations"] = annotations
    has_body = any(n != 1 and v for n, v in obj_fields)
    return api_version, kind, {"apiVersion": api_version, "kind": kind, "metadata": meta, "_has_body": has_body}
