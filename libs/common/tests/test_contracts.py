"""The contracts between services: one owner, and the two sides agree with it."""

from __future__ import annotations

from typing import get_args

from bastion_common.audit import AuditEvent
from bastion_common.contracts import EVENT_TYPES, EventType, KeyIntrospection


def test_the_event_vocabulary_and_its_literal_name_the_same_types() -> None:
    assert set(EVENT_TYPES) == set(get_args(EventType))


def test_an_event_type_outside_the_vocabulary_is_refused() -> None:
    try:
        AuditEvent.trusted_json("tool.exfiltrated", "tools", "success")  # type: ignore[arg-type]
    except ValueError as exc:
        assert "unknown audit event type" in str(exc)
    else:
        raise AssertionError("an unknown event type was rendered")


def test_an_inactive_introspection_answer_says_nothing_else() -> None:
    answer = KeyIntrospection(active=False)
    assert answer.model_dump(exclude_none=True) == {"active": False}
