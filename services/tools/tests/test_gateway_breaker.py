"""The circuit breaker of one upstream (gateway.breaker): opens after failures in a row,
lets one trial through after the reset, and a trial whose caller went away does not
leave the circuit stuck."""

from __future__ import annotations

from bastion_tools.gateway.breaker import Breaker


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_failures_in_a_row_open_the_circuit_and_one_trial_decides() -> None:
    clock = Clock()
    breaker = Breaker(failures=2, reset_seconds=5, clock=clock)
    breaker.failed()
    assert breaker.allow() and breaker.state == "closed"
    breaker.failed()
    assert breaker.state == "open" and not breaker.allow()
    clock.now += 5
    assert breaker.allow()  # the trial
    assert not breaker.allow()  # only one at a time
    breaker.failed()  # the trial failed: open again, for another full reset
    assert breaker.state == "open" and not breaker.allow()
    clock.now += 5
    assert breaker.allow()
    breaker.succeeded()
    assert breaker.state == "closed" and breaker.allow()


def test_a_success_between_failures_resets_the_count() -> None:
    breaker = Breaker(failures=2, reset_seconds=10)
    breaker.failed()
    breaker.succeeded()
    breaker.failed()
    assert breaker.state == "closed"


def test_a_trial_that_never_ends_does_not_hold_the_circuit_open_forever() -> None:
    clock = Clock()
    breaker = Breaker(failures=1, reset_seconds=5, clock=clock)
    breaker.failed()
    clock.now += 5
    assert breaker.allow()  # its caller goes away: neither succeeded nor failed
    assert not breaker.allow()
    clock.now += 5
    assert breaker.allow()  # another trial once the reset has passed again
