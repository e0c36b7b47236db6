"""The fault suite runs against a stack of its own (it stops and kills containers), so
it never disturbs the integration tests: its own compose project and ports."""

from __future__ import annotations

import os

os.environ.setdefault("BASTION_IT_PROJECT", "mcp-bastion-faults")
os.environ.setdefault("BASTION_IT_PORT_BASE", "18100")

from tests.integration.conftest import audit, stack  # noqa: E402,F401 - shared fixtures
