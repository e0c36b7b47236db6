"""Bad input from schemathesis against the OpenAPI documents of keys and audit, over real
HTTP against the stack, as their admin: no 5xx, no answer outside its own schema, no
stack trace, internal address or secret in any body.

`make test` runs a short pass (BASTION_FUZZ_EXAMPLES cases per operation, 15 by
default); `make fuzz` a long one and prints how many cases each operation got.
"""

from __future__ import annotations

import os
import re
import time
from typing import Any

import anyio
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error, response_schema_conformance

from tests.integration.conftest import ACCESS_TOKEN_TTL, Stack
from tests.integration.oauth import OAuthClient

EXAMPLES = int(os.environ.get("BASTION_FUZZ_EXAMPLES", "15"))
# What must never be in an answer: a Python traceback, a module path, a Redis URL, a
# private key, an API key (but the one a key's creation answers with, once).
_LEAKS = re.compile(
    r"Traceback \(most recent call last\)|File \"/|site-packages|redis://|"
    r"mcp_[A-Za-z0-9_-]{16,}|BEGIN [A-Z ]*PRIVATE KEY"
)


class Bearer:
    """The bootstrap admin's access token for one resource, renewed before it expires."""

    def __init__(self, stack: Stack, resource: str, scope: str) -> None:
        self.stack, self.resource, self.scope = stack, resource, scope
        self._token, self._at = "", 0.0

    def headers(self) -> dict[str, str]:
        if time.monotonic() - self._at > ACCESS_TOKEN_TTL / 2:
            self._token, self._at = anyio.run(self._fetch), time.monotonic()
        return {"Authorization": f"Bearer {self._token}"}

    async def _fetch(self) -> str:
        env = self.stack.env
        client = await OAuthClient.register(self.stack.urls["auth"], "fuzz")
        body = await client.token(
            env["BOOTSTRAP_ADMIN_USERNAME"], env["BOOTSTRAP_ADMIN_PASSWORD"],
            resource=self.resource, scope=self.scope,
        )  # fmt: skip
        return str(body["access_token"])


@pytest.fixture(scope="session")
def keys_api(stack: Stack) -> Any:
    return schemathesis.openapi.from_url(f"{stack.urls['keys']}/openapi.json")


@pytest.fixture(scope="session")
def audit_api(stack: Stack) -> Any:
    return schemathesis.openapi.from_url(f"{stack.urls['audit']}/openapi.json")


@pytest.fixture(scope="session")
def keys_bearer(stack: Stack) -> Bearer:
    return Bearer(stack, stack.urls["keys"], "weather:read weather:write files:read")


@pytest.fixture(scope="session")
def audit_bearer(stack: Stack) -> Bearer:
    return Bearer(stack, stack.urls["audit"], "metrics:view")


def _checked(case: Any, bearer: Bearer, stack: Stack) -> None:
    response = case.call(headers=bearer.headers(), timeout=15)
    case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])
    text = response.text
    if response.status_code == 201 and "api_key" in text:
        text = text.replace(response.json()["api_key"], "")  # the new key, shown once
    leaked = _LEAKS.search(text)
    assert leaked is None, f"{case.operation.label} answered {leaked.group(0)!r}"
    assert stack.env["BOOTSTRAP_ADMIN_PASSWORD"] not in response.text


_fuzzing = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)


def _fuzz(schema: Any, bearer: Bearer, stack: Stack) -> dict[str, int]:
    """Every operation of `schema`, EXAMPLES generated cases each; the cases each got."""
    counts: dict[str, int] = {}
    for result in schema.get_all_operations():
        for mode in schemathesis.GenerationMode:  # valid requests, then invalid ones
            _fuzz_one(result.ok(), mode, bearer, stack, counts)
    print("fuzz cases per operation:", dict(sorted(counts.items())))  # noqa: T201 - the figure
    return counts


def _fuzz_one(
    operation: Any, mode: Any, bearer: Bearer, stack: Stack, counts: dict[str, int]
) -> None:
    name = f"{operation.label} ({mode.value})"

    @_fuzzing
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case: Any) -> None:
        _checked(case, bearer, stack)
        counts[name] = counts.get(name, 0) + 1

    try:
        check()
    except Unsatisfiable:
        # No parameters and no body: there is nothing to make invalid (negative mode).
        assert mode is schemathesis.GenerationMode.NEGATIVE, name


def test_keys_survives_generated_requests(keys_api: Any, keys_bearer: Bearer, stack: Stack) -> None:
    counts = _fuzz(keys_api, keys_bearer, stack)
    assert counts and all(counts.values())  # every operation and mode got cases


def test_audit_survives_generated_requests(
    audit_api: Any, audit_bearer: Bearer, stack: Stack
) -> None:
    counts = _fuzz(audit_api, audit_bearer, stack)
    assert counts and all(counts.values())
