"""Several replicas, one leader for the periodic work (schedules, recovery, the outbox, expired
locks, health summaries), and a heartbeat per process so that other machines can tell whether it
still runs.

Safety never rests on leadership: every step of the periodic work is a claim in the database
(a transaction that one process wins), so two leaders for a moment -- a partition, a slow
hand-over -- do the work once. Leadership keeps the work (and the health summary) from being
done N times over and says who does it.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable, Protocol

from bot import liveness

log = logging.getLogger("deploybot.leadership")

LEADER_POLL_SECONDS = 5.0
HEARTBEAT_SECONDS = 5.0


class Leadership(Protocol):
    """One leader among the processes that share a store."""

    def try_lead(self) -> bool:
        """Take or keep the leadership; False when another process has it, or when this one
        cannot be sure it still has it (its database session is gone)."""

    def resign(self) -> None: ...


class _Periodic:
    """Runs `_once` now and then every `_seconds()` on a daemon thread until `_end`."""

    thread_name = "deploybot-periodic"

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _seconds(self) -> float:
        raise NotImplementedError

    def _once(self) -> object:
        raise NotImplementedError

    def start(self):
        self._once()

        def loop() -> None:
            while not self._stop.wait(self._seconds()):
                self._once()
        self._thread = threading.Thread(target=loop, name=self.thread_name, daemon=True)
        self._thread.start()
        return self

    def _end(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self._seconds() + 5)


class SoleLeader:
    """One machine's store (SQLite): every process may do the periodic work; the store's claims
    and leases already keep two processes on one file from doing the same step twice."""

    def try_lead(self) -> bool:
        return True

    def resign(self) -> None:
        pass


class Elector(_Periodic):
    """Polls `leadership` every `poll` seconds on a thread of its own. `on_gain` runs (on that
    thread) each time this process becomes the leader."""

    def __init__(self, leadership: Leadership, *, poll: float = LEADER_POLL_SECONDS,
                 on_gain: Callable[[], None] | None = None,
                 replica: str | None = None) -> None:
        self.leadership, self.poll, self.on_gain = leadership, poll, on_gain
        self.replica = replica or liveness.my_replica()
        self._leader = False
        super().__init__()

    thread_name = "deploybot-leader"

    def _seconds(self) -> float:
        return self.poll

    def _once(self) -> bool:
        return self.check()

    @property
    def is_leader(self) -> bool:
        return self._leader

    def check(self) -> bool:
        """One poll (the thread calls it; tests call it directly)."""
        try:
            now = bool(self.leadership.try_lead())
        except Exception as exc:  # unsure is not the leader
            log.warning("leadership: %s: %s", type(exc).__name__, exc)
            now = False
        was, self._leader = self._leader, now
        if now and not was:
            log.info("this replica (%s) is the leader now", self.replica)
            if self.on_gain is not None:
                try:
                    self.on_gain()
                except Exception:
                    log.exception("leadership: taking over failed")
        elif was and not now:
            log.warning("this replica (%s) is no longer the leader", self.replica)
        return now

    def stop(self) -> None:
        self._end()
        if self._leader:
            self._leader = False
            try:
                self.leadership.resign()
            except Exception as exc:
                log.warning("leadership: resigning failed: %s: %s", type(exc).__name__, exc)


class ReplicaHeartbeat(_Periodic):
    """This process says it lives, in the store, every `every` seconds: on another machine, a
    deployment it drives is only taken over once the heartbeat stops (bot/store.py _alive)."""

    def __init__(self, store, *, every: float = HEARTBEAT_SECONDS, version: str = "") -> None:
        self.store, self.every, self.version = store, every, version
        self.replica = liveness.my_replica()
        super().__init__()

    thread_name = "deploybot-heartbeat"

    def _seconds(self) -> float:
        return self.every

    def _once(self) -> None:
        self.beat()

    def beat(self) -> None:
        try:
            self.store.replica_beat(self.replica, version=self.version)
        except Exception as exc:  # the store is away: readiness says so; keep trying
            log.warning("heartbeat: %s: %s", type(exc).__name__, exc)

    def stop(self) -> None:
        """A clean stop: the row goes, so nobody waits for it to go stale."""
        self._end()
        try:
            self.store.replica_gone(self.replica)
        except Exception as exc:
            log.warning("heartbeat: could not say goodbye: %s: %s", type(exc).__name__, exc)
