"""Shared fixtures of the chart tests: the repository layout and an offline renderer built on
Helm's own Go SDK (helm-python-sdk bundles libhelm; no helm binary, no cluster)."""

from __future__ import annotations

import copy
import functools
import json
import pathlib
from typing import Any

import pytest
import yaml

REPO = pathlib.Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "bridgenet"
RELEASE = "bridgenet"
NAMESPACE = "bridgenet-system"


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`base` with `override` merged in, the way Helm coalesces `-f` files."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


@functools.lru_cache(maxsize=None)
def _render_cached(values_json: str, release: str, namespace: str) -> tuple[tuple[str, str], ...]:
    import helm_python as helm

    with helm.Chart.load(str(CHART)) as chart:
        out = chart.render(
            values=json.loads(values_json), name=release, namespace=namespace, is_install=True
        )
    return tuple(sorted(out.items()))


class Rendered:
    """One rendering of the chart: every object, plus NOTES.txt."""

    def __init__(self, files: dict[str, str]):
        self.files = files
        self.notes = next((text for name, text in files.items() if name.endswith("NOTES.txt")), "")
        self.objects: list[dict[str, Any]] = []
        for name, text in files.items():
            if name.endswith("NOTES.txt"):
                continue
            for doc in yaml.safe_load_all(text):
                if doc is not None:
                    doc.setdefault("metadata", {})
                    self.objects.append(doc)

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind: str, name_suffix: str = "") -> dict[str, Any]:
        found = [o for o in self.of_kind(kind) if o["metadata"]["name"].endswith(name_suffix)]
        assert len(found) == 1, f"expected one {kind} *{name_suffix}, got {[o['metadata']['name'] for o in found]}"
        return found[0]


def render(values: dict[str, Any] | None = None, release: str = RELEASE, namespace: str = NAMESPACE) -> Rendered:
    """Render the chart with `values` (merged over values.yaml by Helm itself)."""
    files = dict(_render_cached(json.dumps(values or {}, sort_keys=True), release, namespace))
    return Rendered(files)


def crd_objects() -> list[dict[str, Any]]:
    """The chart's crds/ folder (Helm installs these before the templates)."""
    return [yaml.safe_load(p.read_text()) for p in sorted((CHART / "crds").glob("*.yaml"))]


@pytest.fixture(scope="session")
def default_render() -> Rendered:
    return render()


@pytest.fixture(scope="session")
def default_values() -> dict[str, Any]:
    return yaml.safe_load((CHART / "values.yaml").read_text())
