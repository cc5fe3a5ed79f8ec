"""Shared by the real-API-server checks: a kubectl bound to the server `REAL_KUBECONFIG` names
(started by scripts/real-apiserver-test.sh through cluster.py), and the chart's renderer."""

from __future__ import annotations

import importlib.util
import os
import pathlib
import shutil
import subprocess

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]


def _load_chart_helpers():
    """tests/chart/conftest.py (Helm's SDK renderer), under a name of its own."""
    spec = importlib.util.spec_from_file_location("chart_helpers", REPO / "tests" / "chart" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


chart = _load_chart_helpers()


class Kubectl:
    def __init__(self, kubeconfig: str) -> None:
        self.base = [shutil.which("kubectl") or "kubectl", "--kubeconfig", kubeconfig]

    def __call__(self, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        res = subprocess.run([*self.base, *args], input=stdin, capture_output=True, text=True, timeout=120)
        if check and res.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({res.returncode}):\n{res.stdout}{res.stderr}")
        return res


@pytest.fixture(scope="session")
def kubectl() -> Kubectl:
    kubeconfig = os.environ.get("REAL_KUBECONFIG")
    if not kubeconfig:
        pytest.fail("REAL_KUBECONFIG is not set: run these through `make real-apiserver-test`")
    return Kubectl(kubeconfig)
