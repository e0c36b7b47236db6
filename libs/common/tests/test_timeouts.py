"""SharedTimeout: the same contract as asyncio.timeout (overdue blocks raise
TimeoutError, other cancellations propagate), with one timer for all its bounds."""

from __future__ import annotations

import asyncio
import time

import pytest

from bastion_common.timeouts import SharedTimeout

pytestmark = pytest.mark.anyio


async def test_a_block_that_outlives_its_bound_raises_timeout_not_before() -> None:
    bounds = SharedTimeout(0.1)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        async with bounds.bound():
            await asyncio.sleep(30)
    assert time.monotonic() - started >= 0.1  # never cut short
    assert bounds.pending == 0


async def test_blocks_that_finish_in_time_keep_their_result_and_leave_nothing() -> None:
    bounds = SharedTimeout(5)

    async def quick(value: int) -> int:
        async with bounds.bound():
            await asyncio.sleep(0)
            return value

    assert await asyncio.gather(*(quick(i) for i in range(500))) == list(range(500))
    assert bounds.pending == 0


async def test_among_concurrent_calls_only_the_hung_ones_time_out() -> None:
    bounds = SharedTimeout(0.2)
    release = asyncio.Event()

    async def call(hangs: bool) -> str:
        try:
            async with bounds.bound():
                if hangs:
                    await asyncio.sleep(30)
                await release.wait()
                return "answered"
        except TimeoutError:
            return "timed out"

    # The oldest bound hangs: the ones begun after it and ended first are not cut off.
    tasks = [asyncio.create_task(call(hangs=i % 3 == 0)) for i in range(30)]
    await asyncio.sleep(0.05)
    release.set()
    results = await asyncio.gather(*tasks)
    assert results == ["timed out" if i % 3 == 0 else "answered" for i in range(30)]
    assert bounds.pending == 0


async def test_a_cancellation_from_elsewhere_is_not_turned_into_a_timeout() -> None:
    bounds = SharedTimeout(5)
    entered = asyncio.Event()

    async def call() -> None:
        async with bounds.bound():
            entered.set()
            await asyncio.sleep(30)

    task = asyncio.create_task(call())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()


async def test_a_cancellation_at_the_moment_of_expiry_still_propagates() -> None:
    """The bound expires and the caller cancels before the task runs again: the
    caller's cancel wins, as with asyncio.timeout, so a cancelled request never carries
    on as if it had only timed out."""
    bounds = SharedTimeout(0.05)

    async def call() -> None:
        me = asyncio.current_task()
        assert me is not None
        async with bounds.bound() as bound:
            # Due just after the bound's own timer, so both fire in one turn of the loop.
            asyncio.get_running_loop().call_at(bound.deadline + 0.001, me.cancel)
            time.sleep(0.1)  # both overdue before the loop runs again
            await asyncio.sleep(30)

    task = asyncio.create_task(call())
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()


async def test_nested_with_asyncio_timeout_either_way() -> None:
    bounds = SharedTimeout(0.05)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(30):
            async with bounds.bound():
                await asyncio.sleep(30)
    with pytest.raises(TimeoutError):
        async with bounds.bound():
            async with asyncio.timeout(30):
                await asyncio.sleep(30)
    # The outer one expires first: the inner one lets the cancellation through to it.
    inner = SharedTimeout(30)
    with pytest.raises(TimeoutError):
        async with bounds.bound():
            async with inner.bound():
                await asyncio.sleep(30)
    assert bounds.pending == 0
    assert inner.pending == 0


def test_one_instance_serves_one_event_loop_after_another() -> None:
    bounds = SharedTimeout(0.05)

    async def overdue() -> bool:
        try:
            async with bounds.bound():
                await asyncio.sleep(30)
        except TimeoutError:
            return True
        return False

    async def abandoned() -> None:
        # A bound left pending when its loop stops must not confuse the next loop.
        asyncio.get_running_loop().create_task(overdue())
        await asyncio.sleep(0)

    asyncio.run(abandoned())
    assert asyncio.run(overdue())
    assert asyncio.run(overdue())


def test_a_bound_needs_a_positive_length() -> None:
    with pytest.raises(ValueError, match="positive"):
        SharedTimeout(0)
