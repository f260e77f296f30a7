"""A constant open-loop HTTP load on 127.0.0.1, and the arithmetic of what it saw.

Open loop: request i is sent at start + i/rps whether or not earlier ones have answered (a
closed loop would slow down exactly when the service does and hide the outage). Each request
has a timeout and a connection of its own (no keep-alive: every request meets the listener
as a new client would). The load runs in a process of its own, so the deploy being measured
(a Python pipeline in the parent) cannot delay its sends through the GIL; both sides read
time.monotonic(), one clock for the whole machine.

    with Load("http://127.0.0.1:18080/version", rps=50) as load:
        ...                      # deploy
    samples = load.samples       # one Sample per request sent
    summarize(samples, load.period)
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import time
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Sequence


@dataclass(frozen=True)
class Sample:
    sent: float  # time.monotonic() when the request left
    latency: float | None  # s until the whole answer; None: none came (refused, reset, timeout)
    status: int | None = None
    body: str = ""
    error: str = ""  # why none came: httpx's exception name (ConnectError, ReadTimeout, ...)

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def answered_at(self) -> float | None:
        return None if self.latency is None else self.sent + self.latency


@dataclass(frozen=True)
class Summary:
    sent: int
    failed: int  # non-2xx or no answer
    p50: float | None  # s, over the 2xx answers
    p99: float | None
    longest_outage: float  # s, the longest stretch of consecutive failures (0: none failed)


def percentile(values: Iterable[float], q: float) -> float | None:
    """Nearest rank: the smallest value with at least q% of the values at or below it."""
    ordered = sorted(values)
    if not ordered:
        return None
    if not 0 < q <= 100:
        raise ValueError(f"percentile {q} is not in (0, 100]")
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


def longest_outage(samples: Sequence[Sample], period: float) -> float:
    """Seconds of the longest run of consecutive failed requests (in send order): from the
    first failed one's send to the send of the next request that succeeded, or one `period`
    after the last failed one when none did. One failure alone counts `period` (the load's
    resolution); no failure is 0."""
    ordered = sorted(samples, key=lambda s: s.sent)
    longest, start = 0.0, None
    for s in ordered:
        if not s.ok:
            if start is None:
                start = s.sent
        elif start is not None:
            longest = max(longest, s.sent - start)
            start = None
    if start is not None:
        longest = max(longest, ordered[-1].sent + period - start)
    return longest


def restore_time(samples: Sequence[Sample], decided: float, version: str) -> float | None:
    """Seconds from `decided` to the first answer given by `version` (the body of the demo's
    /version) that arrived after it; None when none did."""
    done = [s.answered_at for s in samples
            if s.ok and s.body.strip() == version and s.answered_at is not None
            and s.answered_at >= decided]
    return min(done) - decided if done else None


def answered_by(samples: Sequence[Sample], version: str) -> int:
    """How many 2xx answers came from `version`."""
    return sum(1 for s in samples if s.ok and s.body.strip() == version)


def failure_kinds(samples: Sequence[Sample]) -> Counter:
    """What the failed requests got: "HTTP 503", "ConnectError", "ReadTimeout", ..."""
    return Counter(s.error or "no answer" if s.status is None else f"HTTP {s.status}"
                   for s in samples if not s.ok)


def summarize(samples: Sequence[Sample], period: float) -> Summary:
    good = [s.latency for s in samples if s.ok and s.latency is not None]
    return Summary(sent=len(samples), failed=sum(1 for s in samples if not s.ok),
                   p50=percentile(good, 50), p99=percentile(good, 99),
                   longest_outage=longest_outage(samples, period))


# -- the load itself (its own process) -------------------------------------------------------------

async def _one(client, url: str, timeout: float, out: list[Sample]) -> None:
    import httpx

    sent = time.monotonic()
    try:
        answer = await client.get(url, timeout=timeout)
    except httpx.HTTPError as exc:
        out.append(Sample(sent, None, error=type(exc).__name__))
        return
    out.append(Sample(sent, time.monotonic() - sent, answer.status_code, answer.text[:200]))


async def _load(url: str, rps: float, timeout: float, stop, ready) -> list[Sample]:
    import httpx

    out: list[Sample] = []
    tasks: set[asyncio.Task] = set()
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=0)
    async with httpx.AsyncClient(limits=limits, trust_env=False) as client:
        ready.set()
        start = time.monotonic()
        i = 0
        while not stop.is_set():
            due = start + i / rps
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            # late (a busy machine): send now, not in a burst to catch up; `sent` says when
            task = asyncio.create_task(_one(client, url, timeout, out))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1
        if tasks:
            await asyncio.wait(tasks, timeout=timeout + 1)
    return out


def _child(url: str, rps: float, timeout: float, stop, ready, conn) -> None:
    samples = asyncio.run(_load(url, rps, timeout, stop, ready))
    conn.send([(s.sent, s.latency, s.status, s.body, s.error) for s in samples])
    conn.close()


class Load:
    """`rps` GET requests a second on `url` (loopback only) from a child process, from entering
    the `with` block to leaving it; `samples` then holds every request sent."""

    def __init__(self, url: str, rps: float = 50.0, timeout: float = 2.0) -> None:
        if not url.startswith(("http://127.0.0.1:", "http://localhost:")):
            raise ValueError(f"the load goes to this machine's loopback only, not {url}")
        if rps <= 0:
            raise ValueError("rps must be positive")
        self.url, self.rps, self.timeout = url, rps, timeout
        self.period = 1.0 / rps
        self.samples: list[Sample] = []
        self._ctx = multiprocessing.get_context("spawn")  # no fork of the Docker client's threads
        self._proc = None

    def __enter__(self) -> "Load":
        self._stop, ready = self._ctx.Event(), self._ctx.Event()
        self._recv, send = self._ctx.Pipe(duplex=False)
        self._proc = self._ctx.Process(target=_child, daemon=True, args=(
            self.url, self.rps, self.timeout, self._stop, ready, send))
        self._proc.start()
        send.close()
        deadline = time.monotonic() + 30
        while not ready.wait(0.1):
            if not self._proc.is_alive() or time.monotonic() > deadline:
                self._proc.kill()
                raise RuntimeError("the load generator did not start (exit code "
                                   f"{self._proc.exitcode}; a script using it needs "
                                   "`if __name__ == '__main__':`)")
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        try:
            if not self._recv.poll(self.timeout + 30):
                raise RuntimeError("the load generator did not report within its timeout")
            self.samples = [Sample(*row) for row in self._recv.recv()]
        finally:
            self._proc.join(10)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join(5)
