"""The Grafana dashboard: rendered only when asked for, valid JSON, and every metric it queries
is one the agent or the operator registers (read from their sources, so renaming a metric
without updating the dashboard fails here)."""

from __future__ import annotations

import json
import re

import pytest

from conftest import CHART, NAMESPACE, REPO, render

DASHBOARD = CHART / "dashboards" / "bridgenet.json"

# Where each component registers its metrics (prometheus-client: `Registry::with_prefix`,
# then `registry.register("name", "help", field.clone())`).
SOURCES = [REPO / "node-agent" / "src" / "metrics.rs", REPO / "operator" / "src" / "metrics.rs"]

# PromQL words that look like metric names but are not.
PROMQL_WORDS = {
    "sum", "max", "min", "avg", "count", "by", "without", "rate", "increase", "irate",
    "histogram_quantile", "le", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
}


def exposed_series() -> set[str]:
    """Every series name the two registries expose, with the suffixes the text format adds:
    `_total` for counters, `_bucket`/`_sum`/`_count` for histograms, nothing for gauges."""
    names: set[str] = set()
    for src in SOURCES:
        text = src.read_text()
        prefix = re.search(r'Registry::with_prefix\("(\w+)"\)', text)
        assert prefix, f"no registry prefix in {src}"
        registered = re.findall(r'register\(\s*"(\w+)",\s*"[^"]*",\s*(\w+)\.clone\(\)', text)
        assert len(registered) >= 5, f"expected the registrations of {src}, found {registered}"
        struct = re.search(r"^pub struct Metrics \{\n(.*?)^\}", text, re.MULTILINE | re.DOTALL)
        assert struct, f"no `pub struct Metrics` in {src}"
        for name, field in registered:
            decl = re.search(rf"^\s*(?:pub )?{field}: (.+),$", struct.group(1), re.MULTILINE)
            assert decl, f"no field {field} in {src}"
            kind = decl.group(1)
            full = f"{prefix.group(1)}_{name}"
            if "Histogram" in kind:
                names.update(f"{full}_{s}" for s in ("bucket", "sum", "count"))
            elif "Counter" in kind:
                names.add(f"{full}_total")
            elif "Gauge" in kind:
                names.add(full)
            else:
                pytest.fail(f"{src}: {name} is neither counter, gauge nor histogram: {kind}")
    return names


def dashboard_exprs(dashboard: dict) -> list[str]:
    exprs = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            exprs.append(target["expr"])
    return exprs


def metric_names(expr: str) -> set[str]:
    # Drop label matchers, label lists of by/without, legend templates and range selectors.
    stripped = re.sub(r"\{[^}]*\}|\[[^\]]*\]|\b(?:by|without)\s*\([^)]*\)", " ", expr)
    return {w for w in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", stripped) if w not in PROMQL_WORDS}


def test_off_by_default(default_render):
    assert not [o for o in default_render.of_kind("ConfigMap") if o["metadata"]["name"].endswith("-dashboard")]


def test_rendered_with_the_sidecar_label_and_the_file_verbatim():
    cm = render({"dashboards": {"enabled": True}}).one("ConfigMap", "-dashboard")
    assert cm["metadata"]["namespace"] == NAMESPACE
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["bridgenet.json"]) == json.loads(DASHBOARD.read_text())


def test_label_namespace_and_annotations_are_configurable():
    cm = render(
        {
            "dashboards": {
                "enabled": True,
                "label": "grafana.example.com/dashboard",
                "labelValue": "bridgenet",
                "namespace": "monitoring",
                "annotations": {"grafana_folder": "Networking"},
            }
        }
    ).one("ConfigMap", "-dashboard")
    assert cm["metadata"]["namespace"] == "monitoring"
    assert cm["metadata"]["labels"]["grafana.example.com/dashboard"] == "bridgenet"
    assert "grafana_dashboard" not in cm["metadata"]["labels"]
    assert cm["metadata"]["annotations"] == {"grafana_folder": "Networking"}


def test_dashboard_is_a_grafana_dashboard():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "bridgenet"
    assert {v["name"] for v in dashboard["templating"]["list"]} >= {"datasource"}
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]


def test_every_queried_metric_is_exposed():
    exposed = exposed_series()
    # The source parse itself is checked against metrics the suites already rely on.
    assert {
        "bridgenet_agent_netlink_writes_total",
        "bridgenet_agent_pod_interface_repairs_total",
        "bridgenet_agent_attach_phase_duration_seconds_bucket",
        "bridgenet_agent_addresses_free",
        "bridgenet_operator_reconcile_duration_seconds_bucket",
        "bridgenet_operator_blocks_used",
    } <= exposed
    queried: set[str] = set()
    for expr in dashboard_exprs(json.loads(DASHBOARD.read_text())):
        names = metric_names(expr)
        assert names, f"no metric in {expr}"
        missing = names - exposed
        assert not missing, f"{expr}: {sorted(missing)} not exposed by the agent or the operator"
        queried |= names
    # Every component's metrics are on the dashboard: the operator's and the agent's new ones.
    for needed in (
        "bridgenet_agent_operation_duration_seconds_bucket",
        "bridgenet_agent_attach_phase_duration_seconds_bucket",
        "bridgenet_agent_operation_failures_total",
        "bridgenet_agent_attachments",
        "bridgenet_agent_addresses_used",
        "bridgenet_agent_addresses_free",
        "bridgenet_agent_pod_interface_repairs_total",
        "bridgenet_operator_reconciles_total",
    ):
        assert needed in queried, needed


def test_a_renamed_metric_is_caught():
    assert metric_names("sum by (network) (rate(bridgenet_agent_attachmentz_total[5m]))") == {
        "bridgenet_agent_attachmentz_total"
    }
    assert "bridgenet_agent_attachmentz_total" not in exposed_series()
    assert "bridgenet_agent_attachments_total" not in exposed_series(), "a gauge has no _total"
