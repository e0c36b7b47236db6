"""Fixtures for the auth service tests: an in-process app on a real Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from services.auth.tests.helpers import Harness, harness, make_settings


@pytest.fixture
async def h(redis_url: str, tmp_path: Path) -> AsyncIterator[Harness]:
    async with harness(make_settings(redis_url, tmp_path)) as value:
        yield value
