"""Structured JSON logs on stdout, with a request id that crosses services.

Every line is one JSON object (structlog). The request id lives in a contextvar: the
`RequestContextMiddleware` in `http.py` takes it from `X-Request-ID` (or makes one) and
outbound calls pass it on with `request_id_headers()`. A redaction processor removes
tokens, keys, passwords and file contents from every event, so a careless call site
cannot leak them (CONVENTIONS.md rule 11).
"""

from __future__ import annotations

import functools
import logging
import os
import re
import sys
from collections.abc import Mapping, MutableMapping
from contextvars import ContextVar
from typing import Any

import structlog

__all__ = [
    "REDACTED",
    "configure_logging",
    "find_credentials",
    "get_logger",
    "is_sensitive_key",
    "logs_at",
    "new_id",
    "redact",
    "redact_text",
    "request_id_headers",
    "request_id_var",
    "valid_request_id",
]

REDACTED = "[redacted]"
request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)

_SENSITIVE_KEY = re.compile(
    r"(pass(word)?|secret|token|authorization|cookie|api[_-]?key|credential|private|"
    r"content|code_verifier|assertion|^code$|^key$)",
    re.IGNORECASE,
)
# The shapes of credentials, redacted wherever they sit: from every log line and audit
# event (`redact_text`), and from what leaves the system (tool results, `find_credentials`).
_CREDENTIALS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("private_key", re.compile(
        r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----"
        r".*?(?:-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----|\Z)",
        re.DOTALL,
    )),
    ("jwt", re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*")),
    ("api_key", re.compile(r"mcp_[A-Za-z0-9_-]{16,}")),
    ("bearer", re.compile(r"(?i:bearer)\s+[A-Za-z0-9._~+/=-]{8,}")),
    ("aws_access_key", re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")),
    ("github_token", re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{40,})")),
    ("google_api_key", re.compile(r"\bAIza[0-9A-Za-z_-]{35}")),
    ("slack_token", re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}")),
    ("stripe_key", re.compile(r"\b[sr]k_live_[A-Za-z0-9]{16,}")),
)  # fmt: skip
# All of them in one pass, and any word after "Bearer" (a log line may cut a token short).
_SENSITIVE_VALUE = re.compile(
    "|".join(f"(?:{pattern.pattern})" for _, pattern in _CREDENTIALS) + r"|(?i:bearer)\s+\S+",
    re.DOTALL,
)
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_configured_level = logging.NOTSET  # until configure_logging runs, structlog logs all
# Keys whose names match the pattern above but carry no secret.
_SAFE_KEYS = frozenset({"token_type", "token_id", "key_id", "content_type", "content_length"})


_PLAIN = (int, float, bool, type(None))


def _redact_value(value: Any) -> Any:
    kind = type(value)  # exact types first: this runs for every value of every event
    if kind is str:
        return redact_text(value)
    if kind in _PLAIN:
        return value
    if kind is dict or isinstance(value, Mapping):
        return redact(value)
    if isinstance(value, list | tuple):
        return [_redact_value(v) for v in value]
    if isinstance(value, str):
        return redact_text(value)
    return value


def redact_text(value: str) -> str:
    """`value` with every credential shape (`_CREDENTIALS`) replaced."""
    # Every shape but an AWS key id needs a character that is not a letter or digit, and
    # an AWS key id starts AKIA or ASIA: other strings of letters and digits alone cannot
    # match, so skip the regex for them (3x cheaper).
    if value.isalnum() and not value.startswith(("AKIA", "ASIA")):
        return value
    return _SENSITIVE_VALUE.sub(REDACTED, value)


def find_credentials(value: str) -> tuple[str, list[str]]:
    """`value` with credentials replaced by REDACTED, and the kind of each one found
    (never the credential); `redact_text` replaces the same shapes without naming them."""
    kinds: list[str] = []
    for kind, pattern in _CREDENTIALS:
        value, found = pattern.subn(REDACTED, value)
        kinds += [kind] * found
    return value, kinds


@functools.lru_cache(maxsize=4096)
def is_sensitive_key(key: str) -> bool:
    """Whether a value under this key is redacted whatever it looks like."""
    # Cached: the same few keys come back in every event, and this runs on hot paths.
    return key not in _SAFE_KEYS and bool(_SENSITIVE_KEY.search(key))


def redact(data: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of `data` with secret-looking keys and values replaced by REDACTED."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if is_sensitive_key(key if type(key) is str else str(key)) and value not in (None, ""):
            out[key] = REDACTED
        else:
            out[key] = _redact_value(value)
    return out


def _redact_processor(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    event = event_dict.get("event")
    cleaned = redact({k: v for k, v in event_dict.items() if k != "event"})
    if event is not None:
        cleaned["event"] = _redact_value(event)
    return cleaned


def _add_request_id(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    request_id = request_id_var.get()
    if request_id and "request_id" not in event_dict:
        event_dict["request_id"] = request_id
    return event_dict


def configure_logging(service: str, level: str = "INFO") -> None:
    """JSON lines on stdout for structlog and the standard library (uvicorn included)."""
    global _configured_level
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    _configured_level = numeric
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        _add_request_id,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
    ]
    structlog.configure(
        processors=[
            *shared,
            _redact_processor,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(service=service)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                _redact_processor,
                structlog.processors.JSONRenderer(),
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # Our middleware logs each request once, with its request id; uvicorn's would not.
    logging.getLogger("uvicorn.access").disabled = True


def get_logger(name: str | None = None) -> Any:
    return structlog.get_logger(name)


def logs_at(level: int) -> bool:
    """Whether a line at `level` would be written: a hot path asks before it builds one
    (a filtered structlog call still costs a few microseconds)."""
    return level >= _configured_level


def new_id() -> str:
    """32 random hex digits, from the OS's random source (uuid4 costs six times more
    and adds nothing an event or request id needs)."""
    return os.urandom(16).hex()


def valid_request_id(value: str | None) -> str | None:
    """The incoming X-Request-ID when it is safe to echo and log, else None."""
    if value and _REQUEST_ID.match(value):
        return value
    return None


def request_id_headers() -> dict[str, str]:
    """Headers that pass the current request id on to another service."""
    request_id = request_id_var.get()
    return {"X-Request-ID": request_id} if request_id else {}
