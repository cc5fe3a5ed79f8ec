"""The subset of kubectl's JSONPath that CRD `additionalPrinterColumns` use.

Supported: `.a.b`, `.a[0]`, `.a[*].b`, `.a[?(@.type=="Ready")].status` (== and != against a
quoted string or a bare number/bool), optionally wrapped in `{...}`.
"""

from __future__ import annotations

import re
from typing import Any

_TOKEN = re.compile(
    r"""\.(?P<field>[A-Za-z0-9_\-]+)
      | \[(?P<index>-?\d+|\*)\]
      | \[\?\(@\.(?P<fpath>[A-Za-z0-9_.\-]+)\s*(?P<fop>==|!=)\s*(?P<fval>"[^"]*"|'[^']*'|[^)\s]+)\s*\)\]
      | \['(?P<qfield>[^']+)'\]""",
    re.VERBOSE,
)


class JsonPathError(ValueError):
    pass


def _tokens(path: str) -> list[re.Match]:
    path = path.strip()
    if path.startswith("{") and path.endswith("}"):
        path = path[1:-1]
    if path.startswith("$"):
        path = path[1:]
    out, pos = [], 0
    while pos < len(path):
        m = _TOKEN.match(path, pos)
        if not m:
            raise JsonPathError(f"unsupported JSONPath {path!r} at {pos}")
        out.append(m)
        pos = m.end()
    return out


def _get(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(obj, dict):
            return None
        obj = obj.get(part)
    return obj


def _literal(text: str) -> Any:
    if text[:1] in "\"'":
        return text[1:-1]
    if text in ("true", "false"):
        return text == "true"
    try:
        return int(text)
    except ValueError:
        return float(text)


def evaluate(obj: Any, path: str) -> list[Any]:
    """Every value the path selects (empty when nothing matches)."""
    current = [obj]
    for tok in _tokens(path):
        nxt: list[Any] = []
        for value in current:
            if tok.group("field") is not None or tok.group("qfield") is not None:
                key = tok.group("field") or tok.group("qfield")
                if isinstance(value, dict) and key in value:
                    nxt.append(value[key])
            elif tok.group("index") is not None:
                if not isinstance(value, list):
                    continue
                if tok.group("index") == "*":
                    nxt.extend(value)
                else:
                    i = int(tok.group("index"))
                    if -len(value) <= i < len(value):
                        nxt.append(value[i])
            else:
                if not isinstance(value, list):
                    continue
                want = _literal(tok.group("fval"))
                for item in value:
                    got = _get(item, tok.group("fpath"))
                    if (got == want) == (tok.group("fop") == "=="):
                        nxt.append(item)
        current = nxt
    return current
