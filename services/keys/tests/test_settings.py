"""Settings refuse what would make the service unsafe, before it serves anything."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from pydantic import ValidationError

from bastion_keys.settings import Settings


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"hmac_secret": "changeme-changeme-changeme-changeme"}, "secret"),
        ({"key_encryption_key": "short"}, "at least 32"),
        ({"default_expiry_days": 400}, "must not exceed"),
        ({"rotation_overlap_seconds": -1}, "greater than or equal"),
        ({"public_url": "localhost:8002"}, "http(s) URL"),
        ({"resource_scopes": {"https://x.example": ["root:all"]}}, "unknown scopes"),
    ],
)
def test_unsafe_settings_are_refused(
    make_settings: Callable[..., Settings], overrides: dict[str, object], fragment: str
) -> None:
    with pytest.raises(ValidationError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        make_settings(**overrides)


def test_by_default_only_the_tools_server_is_offered(
    make_settings: Callable[..., Settings],
) -> None:
    # Only tools trusts the keys issuer: keys, audit and auth's admin API take auth's tokens.
    offered = make_settings(
        tools_resource="http://localhost:23003/mcp", auth_issuer="http://localhost:23001"
    ).offered_scopes()
    assert list(offered) == ["http://localhost:23003/mcp"]
    assert len(offered["http://localhost:23003/mcp"]) == 7


def test_an_overlap_of_zero_is_allowed(make_settings: Callable[..., Settings]) -> None:
    assert make_settings(rotation_overlap_seconds=0).rotation_overlap_seconds == 0
