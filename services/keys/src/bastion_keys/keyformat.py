"""What an API key looks like, how one is made and how it is stored (a keyed hash).

A key is `mcp_` + 32 random bytes (256 bits) in unpadded URL-safe base64 (43 chars).
Only HMAC-SHA256(server secret, key) is kept: a stolen Redis dump gives neither the keys
nor a way to test guesses offline without the secret. A presented value is checked for
length first and format second, before anything is looked up.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from typing import Final, Literal

from bastion_common.contracts import API_KEY_PREFIX

__all__ = [
    "KEY_BYTES",
    "KEY_PREFIX",
    "MAX_PRESENTED_LENGTH",
    "FormatProblem",
    "check_format",
    "digest",
    "digests_equal",
    "new_key",
    "new_key_id",
]

KEY_PREFIX: Final = API_KEY_PREFIX
KEY_BYTES: Final = 32
_ENCODED_LENGTH: Final = 43  # ceil(32 * 4 / 3), no padding
_KEY: Final = re.compile(rf"^{KEY_PREFIX}[A-Za-z0-9_-]{{{_ENCODED_LENGTH}}}$")
MAX_PRESENTED_LENGTH: Final = len(KEY_PREFIX) + _ENCODED_LENGTH
KEY_ID: Final = re.compile(r"^k_[0-9a-f]{16}$")

FormatProblem = Literal["too_long", "malformed"]


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(KEY_BYTES)


def new_key_id() -> str:
    return "k_" + secrets.token_hex(8)


def check_format(presented: str) -> FormatProblem | None:
    """Why `presented` cannot be a key, or None. Length first: no regex on huge input."""
    if len(presented) > MAX_PRESENTED_LENGTH:
        return "too_long"
    if not _KEY.match(presented):
        return "malformed"
    return None


def digest(secret: bytes, key: str) -> str:
    """The stored form of a key: hex HMAC-SHA256 under the server secret."""
    return hmac.new(secret, key.encode(), hashlib.sha256).hexdigest()


def digests_equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
