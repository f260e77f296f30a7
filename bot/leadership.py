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


def _every(seconds: float, fn: Callable[[], object], stop: threading.Event,
           name: str) -> threading.Thread:
    def loop() -> None:
        while not stop.wait(seconds):
            fn()
    thread = threading.Thread(target=loop, name=name, daemon=True)
    thread.start()
    return thread


class SoleLeader:
    """One machine's store (SQLite): every process may do the periodic work; the store's claims
    and leases already keep two processes on one file from doing the same step twice."""

    def try_lead(self) -> bool:
        return True

    def resign(self) -> None:
        pass


class Elector:
    """Polls `leadership` every `poll` seconds on a thread of its own. `on_gain` runs (on that
    thread) each time this process becomes the leader."""

    def __init__(self, leadership: Leadership, *, poll: float = LEADER_POLL_SECONDS,
                 on_gain: Callable[[], None] | None = None,
                 replica: str | None = None) -> None:
        self.leadership, self.poll, self.on_gain = leadership, poll, on_gain
        self.replica = replica or liveness.my_replica()
        self._leader = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

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

    def start(self) -> "Elector":
        self.check()
        self._thread = _every(self.poll, self.check, self._stop, "deploybot-leader")
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.poll + 5)
        if self._leader:
            self._leader = False
            try:
                self.leadership.resign()
            except Exception as exc:
                log.warning("leadership: resigning failed: %s: %s", type(exc).__name__, exc)


class ReplicaHeartbeat:
    """This process says it lives, in the store, every `every` seconds: on another machine, a
    deployment it drives is only taken over once the heartbeat stops (bot/store.py _alive)."""

    def __init__(self, store, *, every: float = HEARTBEAT_SECONDS, version: str = "") -> None:
        self.store, self.every, self.version = store, every, version
        self.replica = liveness.my_replica()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self) -> None:
        try:
            self.store.replica_beat(self.replica, version=self.version)
        except Exception as exc:  # the store is away: readiness says so; keep trying
            log.warning("heartbeat: %s: %s", type(exc).__name__, exc)

    def start(self) -> "ReplicaHeartbeat":
        self.beat()
        self._thread = _every(self.every, self.beat, self._stop, "deploybot-heartbeat")
        return self

    def stop(self) -> None:
        """A clean stop: the row goes, so nobody waits for it to go stale."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.every + 5)
        try:
            self.store.replica_gone(self.replica)
        except Exception as exc:
            log.warning("heartbeat: could not say goodbye: %s: %s", type(exc).__name__, exc)
