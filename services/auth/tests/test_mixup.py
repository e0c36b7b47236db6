"""Mix-up defence (RFC 9207 §2.4, RFC 9700 §4.4.2.2): the provider's answer must come from
the provider the sign-in was started with, or it is not looked at."""

from __future__ import annotations

import pytest

from bastion_auth.linking import FederationError
from bastion_auth.mixup import check_callback_provider, check_response_issuer

ISSUER = "https://sso.corp.example"
ADVERTISED = {"authorization_response_iss_parameter_supported": True}


def test_the_right_iss_passes_and_an_unadvertised_missing_one_is_tolerated() -> None:
    check_response_issuer("Corp", ISSUER, ADVERTISED, ISSUER)
    check_response_issuer("Corp", ISSUER, {}, None)


@pytest.mark.parametrize(
    ("metadata", "iss", "reason"),
    [
        (ADVERTISED, None, "without iss"),
        (ADVERTISED, "https://idp.attacker.example", "another issuer"),
        ({}, "https://idp.attacker.example", "another issuer"),  # compared even unadvertised
        (ADVERTISED, ISSUER + "/", "another issuer"),  # string comparison, no normalising
        (ADVERTISED, "HTTPS://SSO.CORP.EXAMPLE", "another issuer"),
    ],
)
def test_a_missing_or_foreign_iss_is_refused(
    metadata: dict[str, bool], iss: str | None, reason: str
) -> None:
    with pytest.raises(FederationError, match=reason) as caught:
        check_response_issuer("Corp", ISSUER, metadata, iss)
    assert "not from Corp" in caught.value.message and not caught.value.unavailable


def test_an_answer_at_another_providers_redirect_uri_is_refused() -> None:
    check_callback_provider("GitHub", "github", "github")
    for path in (None, "corp", "github-enterprise"):
        with pytest.raises(FederationError, match="another provider's redirect URI"):
            check_callback_provider("GitHub", "github", path)
