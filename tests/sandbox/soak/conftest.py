"""The soak runs on the end-to-end suite's sandbox fixture (`cluster`): the same two nodes, real
operator, agents and plugin, and the same deletion of everything the run created."""

from __future__ import annotations

import importlib.util
import pathlib

_E2E = pathlib.Path(__file__).resolve().parents[1] / "e2e" / "conftest.py"
_spec = importlib.util.spec_from_file_location("bnsandbox_e2e_conftest", _E2E)
assert _spec is not None and _spec.loader is not None
e2e = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(e2e)

SANDBOX = e2e.SANDBOX
cluster = e2e.cluster
eventually = e2e.eventually
unique = e2e.unique
