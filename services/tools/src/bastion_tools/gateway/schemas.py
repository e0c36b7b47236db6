"""JSON Schema checks of upstream tools, with `jsonschema` (Draft 2020-12 unless a
schema names its own draft): arguments before anything is sent upstream, structured
results before anything is sent back.

Problems are named by place and keyword, never by value: the value may be a secret the
caller pasted or data the upstream returned. `$ref`s resolve only inside the schema
itself: `jsonschema` retrieves nothing over the network unless told to (no SSRF).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import SchemaError
from jsonschema.protocols import Validator

__all__ = ["MAX_PROBLEMS", "SchemaProblem", "compile_schema", "problems"]

MAX_PROBLEMS = 8


@dataclass(frozen=True)
class SchemaProblem:
    """An upstream schema that cannot be used: the tool is not served."""

    where: str
    problem: str


def compile_schema(schema: Any, where: str) -> Validator | SchemaProblem:
    if not isinstance(schema, dict):
        return SchemaProblem(where, "is not a JSON object")
    cls = validators.validator_for(schema, default=Draft202012Validator)
    try:
        cls.check_schema(schema)
    except SchemaError as exc:
        return SchemaProblem(where, f"is not a valid JSON Schema ({exc.validator})")
    validator: Validator = cls(schema)
    return validator


def problems(validator: Validator, instance: Any, root: str) -> list[dict[str, str]]:
    """Each place at fault and the keyword it fails, at most MAX_PROBLEMS, without values."""
    out: list[dict[str, str]] = []
    try:
        errors = sorted(validator.iter_errors(instance), key=lambda e: list(map(str, e.path)))
    except Exception as exc:  # noqa: BLE001 - an unresolvable $ref and the like: refuse
        return [{"field": root, "problem": f"cannot be checked ({type(exc).__name__})"}]
    for error in errors[:MAX_PROBLEMS]:
        place = ".".join(str(part) for part in error.absolute_path) or root
        out.append(
            {
                "field": place[:128],
                "problem": _describe(error.validator, error.validator_value, error.instance),
            }
        )
    return out


def _describe(keyword: Any, expected: Any, instance: Any) -> str:
    """The failed rule in words that name what was expected, never what was sent."""
    if keyword == "required" and isinstance(expected, list) and isinstance(instance, dict):
        missing = [str(key)[:64] for key in expected if key not in instance]
        return f"missing {', '.join(missing)}"
    if keyword == "additionalProperties" and isinstance(instance, dict):
        return "has properties the schema does not allow"
    if keyword == "type":
        return f"must be of type {expected}"
    if keyword in ("enum", "const"):
        return "is not one of the allowed values"
    if keyword in (
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "minLength",
        "maxLength",
        "minItems",
        "maxItems",
        "multipleOf",
        "pattern",
        "format",
    ):
        return f"fails {keyword} {str(expected)[:64]}"
    return f"fails {keyword}"
