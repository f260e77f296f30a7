"""Liveness and readiness of a running deploybot (`/healthz`, `/readyz`).

Readiness is a set of named checks; each answers "ok" or says why not. A check that raises or
does not answer is "not ready" (fail closed), with the reason in the answer.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

log = logging.getLogger("deploybot.health")

OK = "ok"
STORE_TIMEOUT = 2.0  # seconds; a probe that waits longer is already a failed probe

Check = Callable[[], str]


class Readiness:
    """Named checks, evaluated on each call of report(). Thread-safe."""

    def __init__(self) -> None:
        self._checks: dict[str, Check] = {}
        self._lock = threading.Lock()
        self._last: bool | None = None

    def add(self, name: str, check: Check) -> None:
        with self._lock:
            self._checks[name] = check

    def report(self) -> tuple[bool, dict[str, str]]:
        with self._lock:
            checks = dict(self._checks)
        results: dict[str, str] = {}
        for name, check in checks.items():
            try:
                answer = check()
            except Exception as exc:  # a broken check is a failed check, never a 500
                answer = f"{type(exc).__name__}: {exc}"[:300]
            results[name] = answer if isinstance(answer, str) and answer else "no answer"
        ready = bool(results) and all(v == OK for v in results.values())
        with self._lock:  # say it when it changes, not on every probe
            changed, self._last = self._last != ready, ready
        if changed and ready:
            log.info("ready")
        elif changed:
            log.warning("not ready: %s", "; ".join(f"{k}: {v}" for k, v in results.items()
                                                   if v != OK))
        return ready, results


def store_check(store, timeout: float = STORE_TIMEOUT) -> Check:
    def check() -> str:
        store.ping(timeout)
        return OK
    return check


def scheduler_check(scheduler) -> Check:
    def check() -> str:
        return OK if scheduler.running else "scheduler not running"
    return check


class Flag:
    """A readiness check that is "ok" once set: e.g. "auth.test passed and the app is built"."""

    def __init__(self, waiting: str) -> None:
        self.waiting = waiting
        self._set = threading.Event()

    def set(self) -> None:
        self._set.set()

    def clear(self, why: str) -> None:
        self.waiting = why
        self._set.clear()

    def __call__(self) -> str:
        return OK if self._set.is_set() else self.waiting
