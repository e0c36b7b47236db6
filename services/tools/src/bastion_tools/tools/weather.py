"""Weather observations, kept in Redis (latest one per city)."""

from __future__ import annotations

import json
import unicodedata
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis

from bastion_tools.store import WEATHER_TTL_SECONDS, weather_key

__all__ = ["WeatherStore", "city_key"]


def city_key(city: str) -> str:
    """One key per city however it is spelled: NFKC, case-folded, single spaces."""
    return " ".join(unicodedata.normalize("NFKC", city).casefold().split())


class WeatherStore:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    async def latest(self, city: str) -> dict[str, Any] | None:
        raw = await self._redis.get(weather_key(city_key(city)))
        if raw is None:
            return None
        observation: dict[str, Any] = json.loads(raw)
        return observation

    async def report(
        self, city: str, temperature_c: float, condition: str, reported_by: str
    ) -> dict[str, Any]:
        observation = {
            "city": city.strip(),
            "temperature_c": temperature_c,
            "condition": condition,
            "observed_at": datetime.now(UTC).isoformat(),
            "reported_by": reported_by,
        }
        await self._redis.set(
            weather_key(city_key(city)), json.dumps(observation), ex=WEATHER_TTL_SECONDS
        )
        return observation
