"""Slack's Web API rate limits as token buckets: may a call go now, and if not, when.

Slack (api.slack.com/apis/rate-limits) limits per method, per app, per workspace: chat.update is
Tier 3 (50+ per minute, sporadic bursts welcome); chat.postMessage allows about one message per
second per channel with short bursts. A 429 answer carries Retry-After (seconds): the method (for
chat.postMessage, the channel) is paused that long, whatever the bucket says.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable, Hashable


@dataclass(frozen=True)
class Limits:
    """What deploybot allows itself; a little under what Slack documents."""

    updates_per_minute: float = 50.0  # chat.update, workspace-wide
    update_burst: int = 10
    posts_per_second: float = 1.0  # chat.postMessage, per channel
    post_burst: int = 4


class TokenBucket:
    """`burst` tokens, refilled at `rate` per second; paused until a time after a 429."""

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens = float(burst)
        self.stamp = now
        self.paused_until = 0.0

    def _refill(self, now: float) -> None:
        if self.rate == float("inf"):
            self.tokens = float(self.burst)
        else:
            self.tokens = min(float(self.burst), self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait(self, now: float) -> float:
        """Seconds until a call may go (0: now)."""
        self._refill(now)
        pause = max(0.0, self.paused_until - now)
        if self.tokens >= 1.0:
            return pause
        return max(pause, (1.0 - self.tokens) / self.rate)

    def take(self, now: float) -> bool:
        if self.wait(now) > 0:
            return False
        self.tokens -= 1.0
        return True

    def pause(self, now: float, seconds: float) -> None:
        """Slack said Retry-After: nothing goes before then, and the burst starts empty."""
        self.paused_until = max(self.paused_until, now + seconds)
        self.tokens = 0.0
        self.stamp = max(self.stamp, self.paused_until)


class Budget:
    """The buckets of one workspace, created as methods and channels are first used."""

    def __init__(self, limits: Limits, clock: Callable[[], float]) -> None:
        self.limits, self.clock = limits, clock
        self._buckets: dict[Hashable, TokenBucket] = {}
        self._lock = threading.Lock()

    @staticmethod
    def key(method: str, channel: str | None) -> Hashable:
        """Which limit a call counts against (methods as slack_sdk names them: chat_update)."""
        if method == "chat_postMessage":
            return (method, channel or "")
        return method

    def _bucket(self, key: Hashable) -> TokenBucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            lim, now = self.limits, self.clock()
            if key == "chat_update":
                bucket = TokenBucket(lim.updates_per_minute / 60.0, lim.update_burst, now)
            elif isinstance(key, tuple):
                bucket = TokenBucket(lim.posts_per_second, lim.post_burst, now)
            else:  # other methods: no budget of our own, only Slack's Retry-After pauses
                bucket = TokenBucket(float("inf"), 1, now)
            self._buckets[key] = bucket
        return bucket

    def wait(self, key: Hashable) -> float:
        with self._lock:
            return self._bucket(key).wait(self.clock())

    def take(self, key: Hashable) -> bool:
        with self._lock:
            return self._bucket(key).take(self.clock())

    def pause(self, key: Hashable, seconds: float) -> None:
        with self._lock:
            self._bucket(key).pause(self.clock(), seconds)
