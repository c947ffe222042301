"""Shared test settings."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _no_memory_plan_from_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI sizes its budgets for the cgroup memory limit it runs in (sniffer/memory_plan.py). Tests
    must not depend on the machine's: the ones about the plan set SNIFFER_MEMORY_LIMIT themselves."""
    monkeypatch.setenv("SNIFFER_MEMORY_LIMIT", "off")
