"""Bounded polling for the sandbox's test suites: one loop instead of one per suite."""

from __future__ import annotations

import time
from typing import Any, Callable


def until(pred: Callable[[], Any], timeout: float, interval: float, what: str) -> Any:
    """Calls `pred` every `interval` seconds until it returns something truthy, for at most
    `timeout` seconds; returns that value, or fails naming `what`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
