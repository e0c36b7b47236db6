"""The fault suite runs against a stack of its own (it stops and kills containers), so
it never disturbs the integration tests: its own compose project and ports."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("BASTION_IT_PROJECT", "mcp-bastion-faults")
os.environ.setdefault("BASTION_IT_PORT_BASE", "18100")

from tests.integration.conftest import audit, stack  # noqa: E402,F401 - shared fixtures


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The case that wipes Redis (users, sessions, keys) runs last, whatever file sorts after."""
    items.sort(key=lambda item: item.name == "test_redis_restarted_with_its_data_lost")
