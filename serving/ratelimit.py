"""Per-key rate limits in requests and tokens per minute, over fixed one-minute windows (a
limiter may be given a shorter window, as tests do: the limits then count per window).

A request reserves one request and its largest possible token count (prompt plus every
choice's max_tokens) before it runs, and gives back what it did not use when it ends, so
concurrent requests can never together exceed a limit. A key without a token rate of its own
is held to the limiter's `default_tpm`, so that no key takes all of an engine's tokens unless
it is given a rate that lets it. `MemoryRateLimiter` counts in one process;
`RedisRateLimiter` counts in Redis, shared by every gateway replica."""

import asyncio
import logging
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from core.errors import ErrorCode
from serving.errors import ServingError
from serving.keys import ApiKey

log = logging.getLogger(__name__)
WINDOW_S = 60  # the default window: rpm and tpm are per minute


@dataclass(frozen=True)
class Reservation:
    key_id: str
    window: int
    tokens: int


def _window(now: float, window_s: float) -> tuple[int, int]:
    """The number of the window `now` falls in, and the whole seconds until it ends."""
    window = int(now // window_s)
    return window, max(1, math.ceil((window + 1) * window_s - now))


def _refusal(message: str, retry_after: int) -> ServingError:
    return ServingError(
        ErrorCode.RATE_LIMITED,
        message,
        api_code="rate_limit_exceeded",
        headers={"Retry-After": str(retry_after)},
    )


def _check(
    key: ApiKey,
    tpm: int | None,
    requests: int,
    tokens: int,
    cost: int,
    retry_after: int,
    window_s: float,
) -> None:
    """Raise 429 if one more request of `cost` tokens would pass `key`'s request limit or the
    token limit `tpm`."""
    period = "this minute" if window_s == WINDOW_S else f"in this {window_s:g} s window"
    reached = (
        f"rate limit of key {key.name!r} reached: {{}} used {period}; retry in {retry_after} s"
    )
    if key.rpm is not None and requests + 1 > key.rpm:
        raise _refusal(reached.format(f"{requests} of {key.rpm} requests"), retry_after)
    if tpm is not None and tokens + cost > tpm:
        if cost > tpm:
            raise _refusal(
                f"this request may use {cost} tokens, more than key {key.name!r} allows per "
                f"minute ({tpm}); lower max_tokens or shorten the prompt",
                retry_after,
            )
        raise _refusal(reached.format(f"{tokens} of {tpm} tokens"), retry_after)


class RateLimiter(ABC):
    clock: Callable[[], float] = staticmethod(time.time)  # windows follow this clock
    window_s: float = WINDOW_S  # the limits count in fixed windows this long
    default_tpm: int | None = None  # the token limit of keys without one of their own

    def tpm(self, key: ApiKey) -> int | None:
        """The tokens per window `key` may use: its own limit, or the default."""
        return key.tpm if key.tpm is not None else self.default_tpm

    @abstractmethod
    async def reserve(self, key: ApiKey, tokens: int) -> Reservation:
        """Count one request and `tokens` against `key`, or raise 429 with Retry-After."""

    @abstractmethod
    async def settle(self, reservation: Reservation, used_tokens: int) -> None:
        """Give back the reserved tokens the request did not use."""

    async def aclose(self) -> None:
        return None


class MemoryRateLimiter(RateLimiter):
    def __init__(self, window_s: float = WINDOW_S, default_tpm: int | None = None) -> None:
        self.window_s = window_s
        self.default_tpm = default_tpm
        self._counts: dict[tuple[str, int], list[int]] = {}  # (key, window) -> [requests, tokens]
        self._lock = asyncio.Lock()

    async def reserve(self, key: ApiKey, tokens: int) -> Reservation:
        window, retry_after = _window(self.clock(), self.window_s)
        async with self._lock:
            for stale in [k for k in self._counts if k[1] < window]:
                del self._counts[stale]
            counts = self._counts.setdefault((key.id, window), [0, 0])
            _check(key, self.tpm(key), counts[0], counts[1], tokens, retry_after, self.window_s)
            counts[0] += 1
            counts[1] += tokens
        return Reservation(key.id, window, tokens)

    async def settle(self, reservation: Reservation, used_tokens: int) -> None:
        async with self._lock:
            counts = self._counts.get((reservation.key_id, reservation.window))
            if counts is not None:
                counts[1] -= max(0, reservation.tokens - used_tokens)


# Checks both limits and counts the request in one atomic step on the Redis server.
_RESERVE = """
local requests = tonumber(redis.call('GET', KEYS[1]) or '0')
local tokens = tonumber(redis.call('GET', KEYS[2]) or '0')
local rpm, tpm, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if (rpm >= 0 and requests + 1 > rpm) or (tpm >= 0 and tokens + cost > tpm) then
  return {0, requests, tokens}
end
redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('INCRBY', KEYS[2], cost)
redis.call('EXPIRE', KEYS[2], ARGV[4])
return {1, requests, tokens}
"""


class RedisRateLimiter(RateLimiter):
    """Counts in Redis. A Redis that does not answer within `timeout_s` makes requests fail
    with 503 (they are not let through uncounted)."""

    def __init__(
        self,
        url: str,
        prefix: str = "llmops:ratelimit",
        timeout_s: float = 2.0,
        window_s: float = WINDOW_S,
        default_tpm: int | None = None,
    ):
        self.window_s = window_s
        self.default_tpm = default_tpm
        self.redis = aioredis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )
        self.prefix = prefix
        self._reserve = self.redis.register_script(_RESERVE)

    def _keys(self, key_id: str, window: int) -> list[str]:
        return [
            f"{self.prefix}:{key_id}:{window}:requests",
            f"{self.prefix}:{key_id}:{window}:tokens",
        ]

    async def reserve(self, key: ApiKey, tokens: int) -> Reservation:
        window, retry_after = _window(self.clock(), self.window_s)
        rpm = -1 if key.rpm is None else key.rpm
        tpm = self.tpm(key)
        expiry = math.ceil(2 * self.window_s)  # whole seconds
        args = [rpm, -1 if tpm is None else tpm, tokens, expiry]
        try:
            granted, requests, used = await self._reserve(
                keys=self._keys(key.id, window), args=args
            )
        except RedisError as err:
            log.error("the rate-limit store failed: %r", err)
            raise ServingError(
                ErrorCode.UNAVAILABLE,
                "the gateway's rate-limit store is unavailable; retry shortly",
                api_code="rate_limit_store_unavailable",
                headers={"Retry-After": "5"},
            ) from None
        if not granted:
            _check(key, tpm, int(requests), int(used), tokens, retry_after, self.window_s)
        return Reservation(key.id, window, tokens)

    async def settle(self, reservation: Reservation, used_tokens: int) -> None:
        unused = reservation.tokens - used_tokens
        # Once the window is over its counts no longer matter (and may have expired).
        if unused > 0 and _window(self.clock(), self.window_s)[0] == reservation.window:
            tokens_key = self._keys(reservation.key_id, reservation.window)[1]
            try:
                await self.redis.decrby(tokens_key, unused)
            except RedisError as err:  # the request is over; only its refund is lost
                log.warning("could not give back %d tokens: %r", unused, err)

    async def aclose(self) -> None:
        await self.redis.aclose()
