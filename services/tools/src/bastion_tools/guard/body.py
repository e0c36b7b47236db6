"""The request body: bounded, read once by the guard, replayed to the SDK behind it."""

from __future__ import annotations

from starlette.types import Message, Receive

from bastion_tools.guard.refusals import Refusal, rpc_error

__all__ = ["read_body", "replay", "too_large"]


def too_large() -> Refusal:
    return Refusal(413, rpc_error("request body too large", -32600), reason="too_large")


async def read_body(receive: Receive, declared: str | None, limit: int) -> bytes:
    """The whole body; 413 unread when `Content-Length` says it is too large, 413 as
    soon as the bytes received pass `limit` otherwise."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large()
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise too_large()
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that hands over `body` first, then whatever `receive` brings."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed
