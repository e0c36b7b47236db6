from __future__ import annotations

import json
import logging
import random

import pytest
import structlog

from bastion_common.logging import (
    _SENSITIVE_VALUE,
    REDACTED,
    configure_logging,
    get_logger,
    logs_at,
    redact,
    redact_text,
    request_id_var,
    valid_request_id,
)

JWT = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLXZhbHVl"
API_KEY = "mcp_" + "A1b2C3d4" * 6


def test_secret_keys_and_secret_looking_values_are_redacted() -> None:
    out = redact(
        {
            "password": "hunter2",
            "client_secret": "s3cret",
            "authorization": "Bearer abc",
            "nested": {"refresh_token": "r1", "note": f"key was {API_KEY}"},
            "args": ["plain", JWT],
            "content": "file body",
            "token_type": "Bearer",
            "username": "alice",
        }
    )
    assert out["password"] == REDACTED
    assert out["client_secret"] == REDACTED
    assert out["authorization"] == REDACTED
    assert out["nested"]["refresh_token"] == REDACTED
    assert API_KEY not in out["nested"]["note"]
    assert out["args"] == ["plain", REDACTED]
    assert out["content"] == REDACTED
    assert out["token_type"] == "Bearer"
    assert out["username"] == "alice"


@pytest.mark.parametrize(
    "value", ["", "a b", "x" * 129, "id\r\nSet-Cookie: a=b", "<script>", "ünïcode"]
)
def test_unsafe_request_ids_are_not_taken(value: str) -> None:
    assert valid_request_id(value) is None


def test_log_lines_are_json_with_request_id_and_no_secrets(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("demo", "INFO")
    token = request_id_var.set("req-42")
    try:
        get_logger("t").info("token.issued", access_token=JWT, detail=f"Bearer {JWT}", user="bob")
    finally:
        request_id_var.reset(token)
        structlog.reset_defaults()
    line = capsys.readouterr().out.strip().splitlines()[-1]
    record = json.loads(line)
    assert record["event"] == "token.issued"
    assert record["request_id"] == "req-42"
    assert record["service"] == "demo"
    assert record["user"] == "bob"
    assert JWT not in line
    assert record["access_token"] == REDACTED


def test_logs_at_answers_as_the_configured_level_filters() -> None:
    try:
        configure_logging("demo", "WARNING")
        assert not logs_at(logging.INFO)
        assert logs_at(logging.WARNING)
        assert logs_at(logging.ERROR)
        configure_logging("demo", "DEBUG")
        assert logs_at(logging.DEBUG)
    finally:
        configure_logging("demo", "INFO")
        structlog.reset_defaults()
    assert logs_at(logging.INFO)
    assert not logs_at(logging.DEBUG)


def test_the_shortcut_for_letters_and_digits_agrees_with_the_patterns() -> None:
    """redact_text skips the regex for strings of letters and digits alone; on those the
    regex never matches, so both give the same text, secrets or not."""
    rng = random.Random(7)
    alphabet = "aeyJmcpBEARERbearer09_.- \t\u00e9\u3000"
    samples = [JWT, API_KEY, f"Bearer {JWT}", "bearer\u3000x", "eyJabcdefgh", "mcpA1b2C3d4"]
    samples += ["".join(rng.choices(alphabet, k=rng.randint(0, 40))) for _ in range(3000)]
    for text in samples:
        assert redact_text(text) == _SENSITIVE_VALUE.sub(REDACTED, text), text
    assert redact_text(f"Bearer {JWT}") == REDACTED
    assert redact_text("bearerabc123") == "bearerabc123"


def test_find_credentials_removes_each_kind_and_names_it_never_the_value() -> None:
    from bastion_common.logging import find_credentials

    marker = "OPENSSH PRIVATE KEY-----"
    pem = f"-----BEGIN {marker}\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END {marker}"
    text = (
        f"key:\n{pem}\nAuthorization: Bearer abc.def-123456 and mcp_{'k' * 32} "
        f"ghp_{'A' * 36} AIza{'b' * 35} xoxb-1234567890-abc sk_live_{'c' * 24}"
    )
    cleaned, kinds = find_credentials(text)
    assert sorted(kinds) == sorted(
        ["private_key", "bearer", "api_key", "github_token", "google_api_key", "slack_token",
         "stripe_key"]
    )  # fmt: skip
    for secret in ("b3BlbnNzaC1rZXktdjEAAAAA", "abc.def-123456", "k" * 32, "A" * 36):
        assert secret not in cleaned
    assert find_credentials("a plain sentence, AKIA-like but not: AKIA123") == (
        "a plain sentence, AKIA-like but not: AKIA123",
        [],
    )
