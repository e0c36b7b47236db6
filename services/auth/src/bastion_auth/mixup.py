"""Mix-up defence when auth is the client of an identity provider (RFC 9207, RFC 9700 §4.4).

A mix-up attack sends the answer of one provider into a sign-in that another provider
started, so that the code is redeemed at the wrong token endpoint. Two defences:

- the `iss` parameter (RFC 9207): a provider whose discovery document advertises
  `authorization_response_iss_parameter_supported` must name itself in every
  authorization response, errors included (§2.4); a missing or different `iss` is
  refused before anything else is done with the answer. An `iss` that a provider sends
  without advertising it is compared too.
- distinct redirect URIs (RFC 9700 §4.4.2.2) for providers that have no issuer
  identifier (GitHub): the callback path names the provider, and must name the one
  the sign-in's `state` was issued for.
"""

from __future__ import annotations

from typing import Any

from bastion_auth.linking import FederationError

__all__ = ["check_callback_provider", "check_response_issuer"]


def _refused(name: str, reason: str) -> FederationError:
    return FederationError(f"The answer that came back is not from {name}. Start again.", reason)


def check_response_issuer(
    name: str, issuer: str, metadata: dict[str, Any], iss: str | None
) -> None:
    """RFC 9207 §2.4: the response's `iss` is exactly the provider's issuer."""
    if iss is None:
        if metadata.get("authorization_response_iss_parameter_supported") is True:
            raise _refused(name, "authorization response without iss (RFC 9207)")
        return
    if iss != issuer:  # simple string comparison (RFC 9207 §2.4)
        raise _refused(name, "authorization response from another issuer (RFC 9207)")


def check_callback_provider(name: str, expected: str, path_provider: str | None) -> None:
    """RFC 9700 §4.4.2.2: a provider without `iss` answers at its own redirect URI."""
    if path_provider != expected:
        raise _refused(name, "answer arrived at another provider's redirect URI")
