"""Rate limits: token buckets in Redis (one Lua script with the denylist), 429 with a
computed Retry-After, the concurrency bound across replicas, the per-IP bucket in front
of authentication, and one Redis round trip per call."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable
from typing import Any

import anyio
import httpx2
import pytest
from services.tools.tests.helpers import (
    PUBLIC_URL,
    Minter,
    call_tool,
    free_port,
    open_session,
    post,
    rate_limit,
    rpc,
    serve,
    wait_for_event,
)

from bastion_common.redis import create_redis
from bastion_tools.app import create_app
from bastion_tools.ratelimit import BATCH_SIZE, LimiterUnavailable, RateLimiter
from bastion_tools.settings import Settings
from tests.redis_process import silent_server

pytestmark = pytest.mark.anyio


async def _commands_processed(redis_url: str) -> int:
    redis = create_redis(redis_url)
    try:
        stats: dict[str, Any] = await redis.info("stats")
        return int(stats["total_commands_processed"])
    finally:
        await redis.aclose()


async def test_an_empty_bucket_gets_429_with_retry_after_from_the_bucket(
    make_settings: Callable[..., Settings], minter: Minter, redis_url: str
) -> None:
    settings = make_settings(rate_limits={"guest": (6, 0.5)}, tool_costs={"get_weather": 1})
    async with serve(create_app(settings)) as client:
        token = minter.token(sub="gus", roles=["guest"], scope="weather:read")
        session = await open_session(client, token)  # initialize + initialized: 2 tokens
        statuses = []
        for _ in range(6):
            reply = await call_tool(client, token, session, "get_weather", {"city": "Rome"})
            statuses.append(reply.status_code)
        assert statuses[:4] == [200] * 4
        assert statuses[4:] == [429, 429]
        refused = reply
        retry_after = int(refused.headers["retry-after"])
        # One token at 0.5/s: at most 2 s away, computed from the bucket's level.
        assert 1 <= retry_after <= 2
        assert rate_limit(refused.headers)["r"] == 0
        assert rate_limit(refused.headers, "ratelimit-policy") == {"q": 6, "w": 12}
        # Nearly empty, the bucket of 6 at 0.5/s is full again in about 12 s.
        assert 10 <= rate_limit(refused.headers)["t"] <= 12
        assert "retry after" in refused.json()["error"]["message"]
        event = await wait_for_event(redis_url, "ratelimit.refused", principal="gus")
        assert event.tool == "get_weather" and event.outcome == "denied"


async def test_retry_after_grows_with_the_cost_of_the_tool(
    make_settings: Callable[..., Settings], minter: Minter
) -> None:
    settings = make_settings(rate_limits={"admin": (20, 1.0)}, tool_costs={"list_users": 15})
    async with serve(create_app(settings)) as client:
        token = minter.token(sub="ada", roles=["admin"], scope="admin:users weather:read")
        session = await open_session(client, token)
        assert (await call_tool(client, token, session, "list_users", {})).status_code == 200
        refused = await call_tool(client, token, session, "list_users", {})
        assert refused.status_code == 429
        # 20 - 2 (handshake) - 15 = 3 left; 15 needed at 1/s: 12 s, not a constant.
        assert 11 <= int(refused.headers["retry-after"]) <= 13


async def test_concurrent_clients_on_two_replicas_never_exceed_the_bucket(
    make_settings: Callable[..., Settings], minter: Minter
) -> None:
    capacity, refill = 40, 20.0
    settings = make_settings(rate_limits={"user": (capacity, refill)}, stateless_http=True)
    token = minter.token(sub="hammer", roles=["user"], scope="weather:read")
    body = rpc("tools/call", {"name": "get_weather", "arguments": {"city": "Lima"}})
    allowed = refused = 0
    duration = 10.0  # issue 4: 64 clients hammering one principal for 10 s
    async with serve(create_app(settings)) as one, serve(create_app(settings)) as two:
        started = time.monotonic()
        deadline = started + duration

        async def hammer(client: httpx2.AsyncClient) -> None:
            nonlocal allowed, refused
            while time.monotonic() < deadline:
                status = (await post(client, token, body)).status_code
                if status == 200:
                    allowed += 1
                else:
                    assert status == 429
                    refused += 1

        async with anyio.create_task_group() as group:
            for i in range(64):
                group.start_soon(hammer, one if i % 2 else two)
        elapsed = time.monotonic() - started
    bound = capacity + refill * elapsed
    assert allowed <= bound, (allowed, bound)
    assert allowed >= capacity  # the limit engaged, it did not refuse everything
    assert refused > 0


async def test_a_flood_of_bad_tokens_is_cut_off_by_the_ip_bucket_without_redis(
    make_settings: Callable[..., Settings], minter: Minter, redis_url: str
) -> None:
    settings = make_settings(ip_capacity=5, ip_refill_per_second=0.1)
    async with serve(create_app(settings)) as client:
        statuses = [(await post(client, "bad.token.here", rpc("tools/list"))).status_code
                    for _ in range(8)]  # fmt: skip
        assert statuses[:5] == [401] * 5
        assert statuses[5:] == [429] * 3
        await wait_for_event(redis_url, "ratelimit.refused", bucket="ip", ip="10.0.0.7")
        # Blocked from memory: neither crypto nor Redis for the rest of the flood...
        before = await _commands_processed(redis_url)
        for _ in range(50):
            reply = await post(client, "another.bad.token", rpc("tools/list"))
            assert reply.status_code == 429
            assert int(reply.headers["retry-after"]) >= 1
        # INFO itself and the audit flusher, not one command per refused request.
        assert await _commands_processed(redis_url) - before < 10
        # ...while another address is served normally.
        other = httpx2.AsyncClient(
            transport=httpx2.ASGITransport(
                app=client._transport.app,  # type: ignore[attr-defined]
                client=("10.0.0.99", 1),
            ),
            base_url=PUBLIC_URL,
        )
        async with other:
            assert await open_session(other, minter.token())


async def test_a_valid_token_from_an_address_flooded_with_junk_is_still_served(
    make_settings: Callable[..., Settings], minter: Minter
) -> None:
    # Everyone behind one NAT or proxy shares its address with whoever floods junk.
    settings = make_settings(ip_capacity=5, ip_refill_per_second=0.1)
    async with serve(create_app(settings)) as client:
        for _ in range(40):
            await post(client, "junk.token.value", rpc("tools/list"))
        assert (await post(client, "junk.token.value", rpc("tools/list"))).status_code == 429
        assert (await post(client, None, rpc("tools/list"))).status_code == 429
        # An API key from the blocked address waits: checking an unknown one costs a call.
        assert (await post(client, "mcp_" + "x" * 40, rpc("tools/list"))).status_code == 429
        # A token that verifies is served, again and again, while junk stays refused.
        token = minter.token()
        session = await open_session(client, token)
        reply = await post(client, token, rpc("tools/list"), session=session)
        assert reply.status_code == 200, reply.text
        assert (await post(client, "junk.token.value", rpc("tools/list"))).status_code == 429


async def test_behind_a_trusted_proxy_each_client_has_its_own_address_budget(
    make_settings: Callable[..., Settings], redis_url: str
) -> None:
    # The test client's peer (10.0.0.7) is the proxy; X-Forwarded-For names the client.
    settings = make_settings(
        ip_capacity=3, ip_refill_per_second=0.1, trusted_proxies=["10.0.0.0/24"]
    )

    async def status(forwarded: str) -> int:
        headers = {"X-Forwarded-For": forwarded}
        return (await post(client, "bad.token", rpc("tools/list"), headers=headers)).status_code

    async with serve(create_app(settings)) as client:
        assert [await status("198.51.100.1") for _ in range(5)] == [401] * 3 + [429] * 2
        assert await status("198.51.100.2") == 401  # another client behind the same proxy
        # A client cannot pick a fresh address: the proxy appends the real one last.
        assert await status("203.0.113.9, 198.51.100.1") == 429
        await wait_for_event(redis_url, "authn.failed", ip="198.51.100.2")


def test_trusted_proxies_that_are_not_addresses_stop_the_service(
    make_settings: Callable[..., Settings],
) -> None:
    with pytest.raises(ValueError, match="'10.0.0.0/33' is not an IP address or network"):
        make_settings(trusted_proxies=["10.0.0.0/33"])


async def _command_counts(redis_url: str) -> dict[str, int]:
    redis = create_redis(redis_url)
    try:
        stats: dict[str, Any] = await redis.info("commandstats")
        return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}
    finally:
        await redis.aclose()


# Commands run inside the Lua script, and those of the measuring connection itself.
_INSIDE_SCRIPT = {"exists", "hget", "time", "hmget", "hset", "pexpire"}  # hget: subject cut-off
_MEASURING = {"hello", "ping", "info", "client|setinfo", "client"}


async def test_each_call_costs_one_redis_round_trip(
    make_settings: Callable[..., Settings], minter: Minter, redis_url: str
) -> None:
    async with serve(create_app(make_settings(stateless_http=True))) as client:
        token = minter.token(sub="counted", scope="weather:read")
        assert (await post(client, token, rpc("tools/list"))).status_code == 200
        before = await _command_counts(redis_url)
        calls = 25
        for i in range(calls):
            assert (await post(client, token, rpc("tools/list", {}, i))).status_code == 200
        after = await _command_counts(redis_url)
    delta = {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}
    assert delta.pop("evalsha") == calls  # denylist + cut-off + bucket: one script per call
    assert set(delta) <= _INSIDE_SCRIPT | _MEASURING, delta


async def test_rate_limit_headers_accompany_allowed_calls(
    tools: httpx2.AsyncClient, minter: Minter
) -> None:
    token = minter.token(sub="heidi", roles=["premium"], scope="weather:read")
    session = await open_session(tools, token)
    reply = await call_tool(tools, token, session, "get_weather", {"city": "Kyiv"})
    assert reply.status_code == 200
    assert rate_limit(reply.headers, "ratelimit-policy")["q"] == 1000
    now = rate_limit(reply.headers)
    assert 990 <= now["r"] < 1000
    assert 0 < now["t"] <= rate_limit(reply.headers, "ratelimit-policy")["w"]


async def test_rate_limit_headers_accompany_calls_without_a_session(
    make_settings: Callable[..., Settings], minter: Minter
) -> None:
    """Stateless HTTP: the guard does not wrap the answer; the request context adds the
    RateLimit headers with the request id, each once."""
    async with serve(create_app(make_settings(stateless_http=True))) as client:
        token = minter.token(sub="ivan", roles=["premium"], scope="weather:read")
        body = rpc("tools/call", {"name": "get_weather", "arguments": {"city": "Kyiv"}})
        reply = await post(client, token, body, headers={"X-Request-ID": "req-ivan"})
    assert reply.status_code == 200
    names = [name.lower() for name, _ in reply.headers.multi_items()]
    for name in ("ratelimit", "ratelimit-policy", "x-request-id"):
        assert names.count(name) == 1, name
    assert rate_limit(reply.headers, "ratelimit-policy")["q"] == 1000
    assert reply.headers["x-request-id"] == "req-ivan"


async def test_the_guard_adds_rate_limit_headers_itself_without_a_request_context(
    make_settings: Callable[..., Settings], minter: Minter
) -> None:
    settings = make_settings(stateless_http=True)
    app = create_app(settings)
    guard = app.hot_routes[settings.mcp_path]  # type: ignore[attr-defined]
    async with (
        app.router.lifespan_context(app),
        httpx2.AsyncClient(transport=httpx2.ASGITransport(app=guard), base_url=PUBLIC_URL) as bare,
    ):
        token = minter.token(sub="judy", scope="weather:read")
        reply = await post(bare, token, rpc("tools/list"))
    assert reply.status_code == 200
    assert rate_limit(reply.headers, "ratelimit-policy")["q"] == 200  # the role user
    assert "r" in rate_limit(reply.headers)
    assert "x-request-id" not in reply.headers


def _batches() -> tuple[float, float]:
    """(round trips, decisions) the limiter has sent so far in this process."""
    count = sum_ = 0.0
    for metric in BATCH_SIZE.collect():
        for sample in metric.samples:
            if sample.name.endswith("_count"):
                count = sample.value
            elif sample.name.endswith("_sum"):
                sum_ = sample.value
    return count, sum_


async def test_concurrent_decisions_share_one_round_trip_and_stay_exact(redis_url: str) -> None:
    redis = create_redis(redis_url)
    try:
        limiter = RateLimiter(redis)
        rounds, decisions = _batches()
        # 40 callers at once on a bucket of 25 that refills once a minute.
        results = await asyncio.gather(
            *(limiter.take("rl:sub:batched", capacity=25, refill_per_second=1 / 60)
              for _ in range(40))
        )  # fmt: skip
        after_rounds, after_decisions = _batches()
    finally:
        await limiter.aclose()
        await redis.aclose()
    # All 40 ask in the same turn of the event loop: one round trip decides them all.
    assert after_rounds - rounds == 1
    assert after_decisions - decisions == 40
    assert sum(d.allowed for d in results) == 25  # and each decision is still exact
    refused = [d for d in results if not d.allowed]
    assert all(d.retry_after > 0 for d in refused)
    assert [d.allowed for d in results] == [True] * 25 + [False] * 15  # in arrival order


async def test_a_caller_that_goes_away_is_not_charged_and_blocks_nobody(redis_url: str) -> None:
    tasks: dict[str, asyncio.Task[Any]] = {}
    in_flight, release = asyncio.Event(), asyncio.Event()

    class CancelledWhenChosen(RateLimiter):
        """Holds the first batch in flight until released, and cancels `chosen` in the
        very turn it is picked to send the next batch."""

        async def _evaluate(self, calls: Any) -> list[Any]:
            if not release.is_set():
                in_flight.set()
                await release.wait()
            return await super()._evaluate(calls)

        def _pass_on(self) -> None:
            super()._pass_on()
            chosen = tasks.get("chosen")
            if chosen is not None and not chosen.done():
                chosen.cancel()

    redis = create_redis(redis_url)
    try:
        limiter = CancelledWhenChosen(redis)

        def take(name: str) -> None:
            tasks[name] = asyncio.create_task(
                limiter.take("rl:sub:leaving", capacity=10, refill_per_second=1 / 60)
            )

        # `first` is in flight; the others wait behind it. `chosen` is picked to send the
        # next batch and cancelled then, so `second` sends it; `gone` left while waiting.
        take("first")
        await asyncio.wait_for(in_flight.wait(), 5)
        for name in ("chosen", "second", "gone", "last"):
            take(name)
        await asyncio.sleep(0)
        tasks["gone"].cancel()
        release.set()
        await tasks["first"]
        decisions = await asyncio.wait_for(asyncio.gather(tasks["second"], tasks["last"]), 5)
        after = await asyncio.wait_for(
            limiter.take("rl:sub:leaving", capacity=10, refill_per_second=1 / 60), 5
        )
    finally:
        await limiter.aclose()
        await redis.aclose()
    assert tasks["gone"].cancelled() and tasks["chosen"].cancelled()
    assert all(d.allowed for d in decisions) and after.allowed
    # first, second, last and after took a token each; those that left paid nothing.
    assert math.floor(after.remaining) == 6


async def test_a_lone_caller_that_leaves_before_its_turn_ends_frees_the_limiter(
    redis_url: str,
) -> None:
    """An idle limiter holds a call to the end of the loop's turn; a caller cancelled
    before then is not charged, and the limiter is idle again for the next one."""
    redis = create_redis(redis_url)
    limiter = RateLimiter(redis)
    try:
        leaving = asyncio.create_task(
            limiter.take("rl:sub:lone", capacity=10, refill_per_second=1 / 60)
        )
        await asyncio.sleep(0)  # it asked, and waits for the turn to end
        leaving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await leaving
        rounds, _ = _batches()
        after = await asyncio.wait_for(
            limiter.take("rl:sub:lone", capacity=10, refill_per_second=1 / 60), 5
        )
        after_rounds, _ = _batches()
    finally:
        await limiter.aclose()
        await redis.aclose()
    assert leaving.cancelled()
    assert after.allowed and math.floor(after.remaining) == 9  # only the second paid
    assert after_rounds - rounds == 1


async def test_a_bucket_that_cannot_be_read_fails_only_its_own_call(redis_url: str) -> None:
    redis = create_redis(redis_url)
    try:
        await redis.set("rl:sub:clobbered", "not a bucket")
        limiter = RateLimiter(redis)
        outcomes = await asyncio.gather(
            limiter.take("rl:sub:fine-1", capacity=5, refill_per_second=1.0),
            limiter.take("rl:sub:fine-2", capacity=5, refill_per_second=1.0),
            limiter.take("rl:sub:clobbered", capacity=5, refill_per_second=1.0),
            limiter.take("rl:sub:fine-3", capacity=5, refill_per_second=1.0),
            return_exceptions=True,
        )
    finally:
        await limiter.aclose()
        await redis.aclose()
    assert isinstance(outcomes[2], LimiterUnavailable)  # fail closed for that caller
    assert all(o.allowed for i, o in enumerate(outcomes) if i != 2), outcomes  # type: ignore[union-attr]


async def test_decisions_survive_a_redis_that_lost_the_script(redis_url: str) -> None:
    redis = create_redis(redis_url)
    try:
        limiter = RateLimiter(redis)
        first = await limiter.take("rl:sub:flushed", capacity=5, refill_per_second=1.0)
        await redis.script_flush()  # as after a restart: EVALSHA answers NOSCRIPT
        second, third = await asyncio.gather(
            limiter.take("rl:sub:flushed", capacity=5, refill_per_second=1.0),
            limiter.take("rl:sub:flushed", capacity=5, refill_per_second=1.0, cost=10),
        )
    finally:
        await limiter.aclose()
        await redis.aclose()
    assert first.allowed and second.allowed
    assert not third.allowed and third.retry_after > 0


async def test_every_waiting_caller_is_refused_when_redis_is_gone() -> None:
    port = free_port()  # nothing listens there
    redis = create_redis(f"redis://127.0.0.1:{port}/0", timeout=0.5)
    try:
        limiter = RateLimiter(redis)
        outcomes = await asyncio.gather(
            *(limiter.take("rl:sub:gone", capacity=5, refill_per_second=1.0) for _ in range(8)),
            return_exceptions=True,
        )
    finally:
        await limiter.aclose()
        await redis.aclose()
    assert all(isinstance(o, LimiterUnavailable) for o in outcomes), outcomes


async def test_a_redis_that_never_answers_refuses_every_caller_within_the_timeout() -> None:
    """A Redis that accepts the connection and then says nothing (hung, or a black hole
    on the network): the limiter's round trip is bounded, so each call is refused
    (fail closed) instead of hanging."""
    async with silent_server() as (port, held):
        redis = create_redis(f"redis://127.0.0.1:{port}/0", timeout=0.3)
        limiter = RateLimiter(redis)
        trips_before, _ = _batches()
        try:
            for _ in range(2):
                outcomes = await asyncio.wait_for(
                    asyncio.gather(
                        *(
                            limiter.take("rl:sub:hung", capacity=5, refill_per_second=1.0)
                            for _ in range(6)
                        ),  # fmt: skip
                        return_exceptions=True,
                    ),
                    10,
                )
                assert all(isinstance(o, LimiterUnavailable) for o in outcomes), outcomes
                assert str(outcomes[0]) == "TimeoutError"
        finally:
            await limiter.aclose()
            await redis.aclose()
        trips, _ = _batches()
        assert trips - trips_before >= 2
        # A timed-out connection is never reused: each round trip (and its one retry)
        # opened a new one.
        assert len(held) >= trips - trips_before


async def _redis_time(redis: Any) -> float:
    seconds, micros = await redis.time()
    return float(seconds) + micros / 1e6


async def test_decisions_microseconds_apart_never_grant_more_than_the_bucket(
    redis_url: str,
) -> None:
    """Regression: the script once stored its timestamp with Lua's tostring (100 us
    resolution), so decisions closer together than that were credited refill that never
    happened. Pipelined batches run scripts microseconds apart: the worst case."""
    capacity, refill = 100, 50.0
    redis = create_redis(redis_url)
    try:
        limiter = RateLimiter(redis)
        allowed = 0
        started = await _redis_time(redis)
        deadline = time.monotonic() + 2.0

        async def hammer() -> None:
            nonlocal allowed
            while time.monotonic() < deadline:
                decision = await limiter.take("rl:sub:tight", capacity=capacity,
                                              refill_per_second=refill)  # fmt: skip
                allowed += decision.allowed

        await asyncio.gather(*(hammer() for _ in range(64)))
        ended = await _redis_time(redis)
    finally:
        await limiter.aclose()
        await redis.aclose()
    bound = capacity + refill * (ended - started)
    assert capacity < allowed <= bound, (allowed, bound)


async def test_a_decision_cancelled_in_flight_never_answers_another(redis_url: str) -> None:
    redis = create_redis(redis_url)
    limiter = RateLimiter(redis)
    try:
        await limiter.take("rl:sub:warm", capacity=5, refill_per_second=1.0)  # connected
        for _ in range(20):
            doomed = asyncio.create_task(
                limiter.take("rl:sub:doomed", capacity=1000, refill_per_second=1.0)
            )
            for _ in range(3):  # sent, and waiting for its answer
                await asyncio.sleep(0)
            doomed.cancel()
            with contextlib.suppress(asyncio.CancelledError, LimiterUnavailable):
                await doomed
            own = await asyncio.wait_for(
                limiter.take("rl:sub:own", capacity=100, refill_per_second=1 / 60), 5
            )
            # An answer left over from the cancelled call would say ~999 remaining.
            assert own.allowed and 50 < own.remaining < 100, own
    finally:
        await limiter.aclose()
        await redis.aclose()


async def test_a_dropped_connection_is_reopened_without_refusing_the_call(redis_url: str) -> None:
    redis = create_redis(redis_url)
    limiter = RateLimiter(redis)
    try:
        first = await limiter.take("rl:sub:dropped", capacity=5, refill_per_second=1 / 60)
        killed = await redis.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
        second = await limiter.take("rl:sub:dropped", capacity=5, refill_per_second=1 / 60)
    finally:
        await limiter.aclose()
        await redis.aclose()
    assert killed >= 1  # the limiter's own connection was among them
    assert first.allowed and second.allowed
    assert math.floor(second.remaining) == 3  # the same bucket, charged once per call
