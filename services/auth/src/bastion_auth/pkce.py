"""PKCE (RFC 7636), S256 only as OAuth 2.1 §4.1.1 and the MCP authorization spec require."""

from __future__ import annotations

import hmac
import re

from authlib.oauth2.rfc7636 import create_s256_code_challenge

from bastion_auth.errors import OAuthError

__all__ = ["check_challenge", "verify"]

# RFC 7636 §4.1: verifier = 43*128 unreserved; §4.2: S256 challenge = 43 base64url chars.
_VERIFIER = re.compile(r"^[A-Za-z0-9\-._~]{43,128}$")
_CHALLENGE = re.compile(r"^[A-Za-z0-9\-_]{43}$")


def check_challenge(challenge: str | None, method: str | None) -> str:
    """The challenge of an authorization request, or OAuthError (plain and none refused)."""
    if not challenge:
        raise OAuthError("invalid_request", "code_challenge is required (PKCE)")
    if method != "S256":
        # RFC 7636 §4.3 would default to plain; OAuth 2.1 forbids plain here.
        raise OAuthError("invalid_request", "code_challenge_method must be S256")
    if not _CHALLENGE.match(challenge):
        raise OAuthError("invalid_request", "code_challenge is not a S256 challenge")
    return challenge


def verify(verifier: str | None, challenge: str) -> None:
    """RFC 7636 §4.6: BASE64URL(SHA256(verifier)) must equal the stored challenge."""
    if not verifier or not _VERIFIER.match(verifier):
        raise OAuthError("invalid_grant", "code_verifier is missing or malformed")
    if not hmac.compare_digest(create_s256_code_challenge(verifier), challenge):
        raise OAuthError("invalid_grant", "code_verifier does not match the code challenge")
