"""Patch semantics: JSON merge patch (RFC 7386), a strategic merge patch close to Kubernetes'
for the built-in kinds the sandbox serves, RFC 6902 JSON patch (via `jsonpatch`), and
server-side apply with per-manager field sets instead of `managedFields`.
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Iterable

import jsonpatch
import jsonpointer

Path = tuple
# Given the path of a list field (a tuple of field names, list-map keys dropped), the list's
# merge keys, `["__set__"]` for a set of primitives, or None for an atomic list.
ListKeys = Callable[[Path], "list[str] | None"]

# patchMergeKey of the built-in types' lists, by field name; what the Kubernetes Go types declare.
BUILTIN_LIST_KEYS: dict[str, list[str]] = {
    "containers": ["name"],
    "initContainers": ["name"],
    "ephemeralContainers": ["name"],
    "env": ["name"],
    "volumes": ["name"],
    "volumeMounts": ["mountPath"],
    "ports": ["containerPort"],
    "conditions": ["type"],
    "ownerReferences": ["uid"],
    "imagePullSecrets": ["name"],
    "addresses": ["type"],
    "finalizers": ["__set__"],
}


def builtin_list_keys(path: Path) -> list[str] | None:
    return BUILTIN_LIST_KEYS.get(path[-1]) if path else None


class PatchError(ValueError):
    """A patch the API server would refuse (422 or 400)."""


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge, null deletes, everything else (lists too) replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def json_patch(target: Any, ops: Any) -> Any:
    if not isinstance(ops, list):
        raise PatchError("a JSON patch must be a list of operations")
    # Like the API server's JSON patch library: `test` of a missing path against null passes
    # (kube-rs adds the first finalizer with exactly that test).
    kept = []
    for op in ops:
        if isinstance(op, dict) and op.get("op") == "test" and op.get("value", 0) is None:
            try:
                jsonpointer.resolve_pointer(target, op.get("path", ""))
            except jsonpointer.JsonPointerException:
                continue
        kept.append(op)
    try:
        return jsonpatch.apply_patch(target, kept, in_place=False)
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as err:
        raise PatchError(str(err)) from err


def strategic_merge_patch(target: Any, patch: Any, list_keys: ListKeys = builtin_list_keys, path: Path = ()) -> Any:
    """A strategic merge patch: merge patch plus keyed list merging and the `$patch`,
    `$retainKeys`, `$deleteFromPrimitiveList/`, `$setElementOrder/` directives."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if patch.get("$patch") == "delete":
        return None
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    retain = patch.get("$retainKeys")
    for key, value in patch.items():
        if key in ("$patch", "$retainKeys") or key.startswith("$setElementOrder/"):
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            if isinstance(result.get(field), list):
                result[field] = [v for v in result[field] if v not in value]
            continue
        if value is None:
            result.pop(key, None)
            continue
        sub = path + (key,)
        if isinstance(value, list):
            keys = list_keys(sub)
            current = result.get(key) if isinstance(result.get(key), list) else []
            if keys == ["__set__"]:
                result[key] = current + [v for v in value if v not in current]
            elif keys:
                result[key] = _merge_keyed_list(current, value, keys, list_keys, sub)
            else:
                result[key] = copy.deepcopy(value)
        else:
            merged = strategic_merge_patch(result.get(key), value, list_keys, sub)
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
    if retain is not None:
        result = {k: v for k, v in result.items() if k in retain}
    return result


def _item_key(item: Any, keys: list[str]) -> tuple | None:
    if not isinstance(item, dict) or not all(k in item for k in keys):
        return None
    return tuple(item[k] for k in keys)


def _merge_keyed_list(current: list, patch: list, keys: list[str], list_keys: ListKeys, path: Path) -> list:
    out = copy.deepcopy(current)
    for item in patch:
        if isinstance(item, dict) and item.get("$patch") == "replace":
            return [copy.deepcopy({k: v for k, v in i.items() if k != "$patch"}) for i in patch]
        k = _item_key(item, keys)
        idx = next((i for i, existing in enumerate(out) if _item_key(existing, keys) == k), None)
        if isinstance(item, dict) and item.get("$patch") == "delete":
            if idx is not None:
                out.pop(idx)
            continue
        if idx is None:
            out.append(strategic_merge_patch({}, item, list_keys, path))
        else:
            out[idx] = strategic_merge_patch(out[idx], item, list_keys, path)
    return out


# ---------------------------------------------------------------------------------------------
# Server-side apply.
#
# A real API server records, per field manager, the set of fields it owns (`managedFields`), and
# uses it to (a) refuse conflicting applies without `force` and (b) remove fields a manager
# stopped applying. The sandbox keeps (b) — what controllers with one fixed field manager rely
# on — by remembering each manager's last applied field set outside the object, and skips (a).


def field_set(obj: Any, list_keys: ListKeys, path: Path = (), schema_path: Path = ()) -> set[Path]:
    """The leaf fields an applied configuration sets. Elements of keyed lists are addressed by
    key, sets of primitives by value, atomic lists as a whole."""
    out: set[Path] = set()
    if isinstance(obj, dict):
        if not obj:
            out.add(path)
        for key, value in obj.items():
            sub, sub_schema = path + (key,), schema_path + (key,)
            if isinstance(value, list):
                keys = list_keys(sub_schema)
                if keys == ["__set__"]:
                    out.update(sub + (("v", v),) for v in value)
                elif keys:
                    for item in value:
                        k = _item_key(item, keys)
                        if k is None:
                            raise PatchError(f"{'.'.join(map(str, sub))}: list item without key {keys}")
                        item_path = sub + (("k", k),)
                        out.add(item_path + ("__item__",))
                        # Key fields belong to the item: they go only with it.
                        rest = {f: v for f, v in item.items() if f not in keys}
                        if rest:
                            out.update(field_set(rest, list_keys, item_path, sub_schema))
                else:
                    out.add(sub)
            else:
                out.update(field_set(value, list_keys, sub, sub_schema))
    else:
        out.add(path)
    return out


def apply_merge(live: Any, applied: Any, list_keys: ListKeys, schema_path: Path = ()) -> Any:
    """Merges an applied configuration into the live object: maps recurse, keyed lists merge by
    key, sets union, atomic lists and scalars are replaced."""
    if not isinstance(applied, dict) or not isinstance(live, dict):
        return copy.deepcopy(applied)
    result = copy.deepcopy(live)
    for key, value in applied.items():
        sub = schema_path + (key,)
        if isinstance(value, list):
            keys = list_keys(sub)
            current = result.get(key) if isinstance(result.get(key), list) else []
            if keys == ["__set__"]:
                result[key] = current + [v for v in value if v not in current]
            elif keys:
                merged = copy.deepcopy(current)
                for item in value:
                    k = _item_key(item, keys)
                    idx = next((i for i, e in enumerate(merged) if _item_key(e, keys) == k), None)
                    if idx is None:
                        merged.append(copy.deepcopy(item))
                    else:
                        merged[idx] = apply_merge(merged[idx], item, list_keys, sub)
                result[key] = merged
            else:
                result[key] = copy.deepcopy(value)
        elif isinstance(value, dict):
            result[key] = apply_merge(result.get(key), value, list_keys, sub)
        else:
            result[key] = copy.deepcopy(value)
    return result


def remove_fields(obj: dict, paths: Iterable[Path], list_keys: ListKeys) -> dict:
    """Removes fields (as addressed by `field_set`) from obj: whole list items first, then the
    longest paths, so that a map emptied on the way is removed with its last field."""
    result = copy.deepcopy(obj)
    for path in sorted(paths, key=lambda p: (p[-1:] != ("__item__",), -len(p))):
        _remove_path(result, path, list_keys, ())
    return result


def _remove_path(node: Any, path: Path, list_keys: ListKeys, schema_path: Path) -> None:
    if not path or not isinstance(node, dict):
        return
    head, rest = path[0], path[1:]
    if head not in node:
        return
    child = node[head]
    sub = schema_path + (head,)
    if rest and isinstance(rest[0], tuple) and isinstance(child, list):
        kind, value = rest[0]
        keys = list_keys(sub) or []
        if kind == "v":
            node[head] = [v for v in child if v != value]
            return
        for i, item in enumerate(child):
            if _item_key(item, keys) == value:
                if rest[1:] == ("__item__",):
                    child.pop(i)
                else:
                    _remove_path(item, rest[1:], list_keys, sub)
                return
        return
    if not rest:
        del node[head]
    else:
        _remove_path(child, rest, list_keys, sub)
        # A map emptied by the removal goes with it (but never metadata/spec/status themselves).
        if isinstance(child, dict) and not child and schema_path:
            del node[head]
