"""What an API server does with a CRD's structural `openAPIV3Schema` on every write: defaulting,
pruning of unknown fields, and validation (types, enums, lengths, bounds, patterns, required).
CEL rules (`x-kubernetes-validations`) are not evaluated.
"""

from __future__ import annotations

import copy
from typing import Any

import jsonschema

Path = tuple


def _sub_schema(schema: dict | None, path: Path) -> dict | None:
    """The schema of the field at path (list indices are skipped: items share one schema)."""
    node = schema
    for part in path:
        if node is None:
            return None
        if node.get("type") == "array" or "items" in node:
            node = node.get("items")
            if node is None:
                return None
        props = node.get("properties")
        if props and part in props:
            node = props[part]
        elif isinstance(node.get("additionalProperties"), dict):
            node = node["additionalProperties"]
        else:
            return None
    return node


def list_keys_for(schema: dict | None, fallback) -> Any:
    """A `patch.ListKeys` function reading `x-kubernetes-list-type`/`-map-keys` from the schema,
    falling back to the built-in table where the schema says nothing (metadata)."""

    def lookup(path: Path) -> list[str] | None:
        if path and path[0] == "metadata":
            return fallback(path)
        sub = _sub_schema(schema, path)
        if sub is None:
            return fallback(path)
        kind = sub.get("x-kubernetes-list-type")
        if kind == "map":
            return list(sub.get("x-kubernetes-list-map-keys") or [])
        if kind == "set":
            return ["__set__"]
        return None

    return lookup


def apply_defaults(obj: Any, schema: dict | None) -> Any:
    """Fills `default`s of missing properties, recursively, inside objects that exist."""
    if schema is None:
        return obj
    if isinstance(obj, dict):
        for key, sub in (schema.get("properties") or {}).items():
            if key not in obj and "default" in sub:
                obj[key] = copy.deepcopy(sub["default"])
            if key in obj:
                obj[key] = apply_defaults(obj[key], sub)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key in obj:
                if key not in (schema.get("properties") or {}):
                    obj[key] = apply_defaults(obj[key], extra)
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        return [apply_defaults(item, schema["items"]) for item in obj]
    return obj


def prune(obj: Any, schema: dict | None, path: str = "", root: bool = True) -> list[str]:
    """Drops fields the schema does not know (in place) and returns their paths."""
    dropped: list[str] = []
    if schema is None or schema.get("x-kubernetes-preserve-unknown-fields"):
        return dropped
    if isinstance(obj, dict):
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        for key in list(obj):
            if root and key in ("apiVersion", "kind", "metadata"):
                continue
            sub_path = f"{path}.{key}" if path else key
            if key in props:
                dropped += prune(obj[key], props[key], sub_path, False)
            elif isinstance(extra, dict):
                dropped += prune(obj[key], extra, sub_path, False)
            elif extra is True:
                continue
            elif props or schema.get("type") == "object":
                del obj[key]
                dropped.append(sub_path)
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(obj):
            dropped += prune(item, schema["items"], f"{path}[{i}]", False)
    return dropped


def _to_json_schema(node: Any) -> Any:
    """OpenAPI v3 (Kubernetes flavour) to JSON Schema: `nullable`, int-or-string, and the
    `x-kubernetes-*` extensions that JSON Schema does not know."""
    if isinstance(node, list):
        return [_to_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes-") or key in ("nullable", "format", "default", "example"):
            continue
        if key in ("properties", "definitions", "patternProperties"):
            out[key] = {k: _to_json_schema(v) for k, v in value.items()}
        else:
            out[key] = _to_json_schema(value)
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


def _k8s_path(error: jsonschema.ValidationError) -> str:
    parts = []
    for p in error.absolute_path:
        if isinstance(p, int):
            parts.append(f"[{p}]")
        else:
            parts.append(("." if parts else "") + p)
    return "".join(parts) or "<root>"


def validate(obj: dict, schema: dict | None) -> list[str]:
    """Validation errors in the API server's `field: Invalid value: ...: message` shape."""
    if schema is None:
        return []
    js = _to_json_schema(schema)
    body = {k: v for k, v in obj.items() if k != "metadata"}
    props = js.get("properties")
    if isinstance(props, dict):
        js["properties"] = {k: v for k, v in props.items() if k != "metadata"}
    validator = jsonschema.Draft4Validator(js)
    errors = []
    for err in sorted(validator.iter_errors(body), key=lambda e: list(map(str, e.absolute_path))):
        field = _k8s_path(err)
        if err.validator == "required":
            errors.append(f"{field}: Required value: {err.message}")
        elif err.validator == "maxLength":
            errors.append(f"{field}: Too long: may not be more than {err.validator_value} bytes")
        elif err.validator == "enum":
            errors.append(f"{field}: Unsupported value: {err.instance!r}: supported values: {err.validator_value}")
        else:
            errors.append(f"{field}: Invalid value: {err.instance!r}: {err.message}")
    return errors
