"""Pinned tool definitions in Redis (rug-pull protection), with the key names they live
under (docs/architecture.md, "Redis keys").

The first listing of an upstream pins every tool it shows (trust on first use). After
that, a tool whose definition differs from its pin, or a tool never seen, is held: kept
beside the pins until an admin approves exactly that definition (named by its SHA-256,
so an approval cannot apply to a definition that changed again since it was shown).
Pinning mode `auto` re-pins changes instead (still recorded); `off` pins nothing.
Each step is one Lua script, so replicas that list the same upstream at once agree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from redis.asyncio import Redis

from bastion_tools.gateway.definitions import digest
from bastion_tools.store import held_key, pins_key, seen_key

__all__ = ["Held", "PinStatus", "PinStore"]

PinStatus = Literal["same", "pinned", "held", "still_held", "changed", "added"]


# KEYS: pins, held, seen. ARGV: mode (approve | auto), then tool, definition pairs.
# Returns tool, status pairs (PinStatus).
_RECONCILE: Final = """
local known = redis.call('EXISTS', KEYS[3]) == 1
redis.call('SET', KEYS[3], '1')
local out = {}
for i = 2, #ARGV, 2 do
  local tool, def = ARGV[i], ARGV[i + 1]
  local pinned = redis.call('HGET', KEYS[1], tool)
  local status
  if pinned == def then
    status = 'same'
    redis.call('HDEL', KEYS[2], tool)
  elseif not known then
    redis.call('HSET', KEYS[1], tool, def)
    status = 'pinned'
  elseif ARGV[1] == 'auto' then
    redis.call('HSET', KEYS[1], tool, def)
    redis.call('HDEL', KEYS[2], tool)
    if pinned then status = 'changed' else status = 'added' end
  elseif redis.call('HGET', KEYS[2], tool) == def then
    status = 'still_held'
  else
    redis.call('HSET', KEYS[2], tool, def)
    status = 'held'
  end
  out[#out + 1] = tool
  out[#out + 1] = status
end
return out
"""

# KEYS: pins, held. ARGV: tool, the exact definition approved. 1 approved, 0 not held as such.
_APPROVE: Final = """
if redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[2] then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
"""


@dataclass(frozen=True)
class Held:
    """A definition awaiting approval, and the pin it would replace (None: a new tool)."""

    upstream: str
    tool: str
    definition: str
    pinned: str | None

    @property
    def digest(self) -> str:
        return digest(self.definition)


class PinStore:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._reconcile = redis.register_script(_RECONCILE)
        self._approve = redis.register_script(_APPROVE)

    async def reconcile(
        self, upstream: str, mode: Literal["approve", "auto"], definitions: Mapping[str, str]
    ) -> dict[str, PinStatus]:
        """Compare what the upstream lists (tool -> canonical JSON) with its pins."""
        args: list[str] = [mode]
        for tool, definition in definitions.items():
            args += [tool, definition]
        keys = [pins_key(upstream), held_key(upstream), seen_key(upstream)]
        raw: Sequence[bytes | str] = await self._reconcile(keys=keys, args=args)
        texts = [item.decode() if isinstance(item, bytes) else item for item in raw]
        return {texts[i]: texts[i + 1] for i in range(0, len(texts), 2)}  # type: ignore[misc]

    async def held(self, upstream: str) -> list[Held]:
        held = await self._redis.hgetall(held_key(upstream))
        if not held:
            return []
        tools = sorted(_text(key) for key in held)
        pinned = await self._redis.hmget(pins_key(upstream), tools)
        by_name = {_text(key): _text(value) for key, value in held.items()}
        return [
            Held(upstream, tool, by_name[tool], _text(pin) if pin is not None else None)
            for tool, pin in zip(tools, pinned, strict=True)
        ]

    async def approve(self, upstream: str, tool: str, expected_digest: str) -> Held | None:
        """Pin the held definition of `tool` if its digest is `expected_digest`."""
        for candidate in await self.held(upstream):
            if candidate.tool == tool and candidate.digest == expected_digest:
                keys = [pins_key(upstream), held_key(upstream)]
                if await self._approve(keys=keys, args=[tool, candidate.definition]) == 1:
                    return candidate
        return None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
