"""Secret references in the policy file: `${env:NAME}` or `${file:/path}`, optionally after
a scheme word (`Bearer ${env:NAME}`). The grammar is checked when the file is validated
(`check_reference`); the value is read once, at start-up (`resolve`), and never shown:
a problem names the place and the variable or file, never what it holds."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

__all__ = ["ENV_NAME", "check_reference", "is_reference", "resolve"]

SECRET_REF = re.compile(
    r"^(?:(?P<scheme>[A-Za-z][A-Za-z0-9-]*) )?\$\{(?P<kind>env|file):(?P<target>[^}]+)\}$"
)
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def is_reference(value: str) -> bool:
    return SECRET_REF.match(value) is not None


def check_reference(value: str) -> str:
    match = SECRET_REF.match(value)
    if match is None:
        raise ValueError(
            "must be a secret reference such as ${env:NAME} or 'Bearer ${file:/run/secrets/x}',"
            " never a literal value"
        )
    kind, target = match["kind"], match["target"]
    if kind == "env" and not ENV_NAME.match(target):
        raise ValueError("${env:NAME} needs a variable name (letters, digits, _)")
    if kind == "file" and not target.startswith("/"):
        raise ValueError("${file:PATH} needs an absolute path")
    return value


def resolve(reference: str, env: Mapping[str, str], place: str, problems: list[str]) -> str | None:
    """The value `reference` names (a header's or an env variable's); a problem naming
    the place, never the value, when it cannot be had."""
    match = SECRET_REF.match(reference)
    assert match is not None  # noqa: S101 - checked by check_reference
    kind, target, scheme = match["kind"], match["target"], match["scheme"]
    if kind == "env":
        secret = env.get(target)
        if not secret:
            problems.append(f"{place}: environment variable {target} is not set")
            return None
    else:
        try:
            secret = Path(target).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(f"{place}: {target} cannot be read ({type(exc).__name__})")
            return None
        if not secret:
            problems.append(f"{place}: {target} is empty")
            return None
    if any(ch in secret for ch in "\r\n\0"):
        problems.append(f"{place}: the secret contains a line break or NUL")
        return None
    return f"{scheme} {secret}" if scheme else secret
