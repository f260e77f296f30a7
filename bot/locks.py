"""Locks on an environment or a service: taking one for a deployment or a person, keeping a
deployment's alive (heartbeat), expiring the dead, and describing a held one with the exact
command that lifts it. The store keeps the SQL (bot/store.py); the decisions are here."""

from __future__ import annotations

import logging
import shlex
import threading
from typing import Callable

from bot import logcontext
from bot.config import Config
from bot.models import CheckStatus, Deployment, Lock
from bot.store import Store

log = logging.getLogger("deploybot.locks")


def unlock_command(lock: Lock) -> str:
    """The command line that lifts `lock` ("env:ENV" or "service:ENV:SERVICE")."""
    kind, _, rest = lock.scope.partition(":")
    env, _, service = rest.partition(":") if kind == "service" else (rest, "", "")
    return (f"deploybot unlock {shlex.quote(env)}"
            + (f" --service {shlex.quote(service)}" if service else "") + " --reason REASON")


def describe(lock: Lock) -> str:
    what = f"deployment #{lock.deployment_id}" if lock.deployment_id else "a manual lock"
    return (f"{lock.scope} is held by {lock.holder} since "
            f"{lock.acquired_at:%Y-%m-%d %H:%M UTC} ({what}: {lock.reason}); "
            f"to lift it: {unlock_command(lock)}")


def expire(store: Store, scope: str | None, say: Callable[[str], None]) -> None:
    """Release the expired locks of `scope` (every scope: None), saying each."""
    for _, text in store.expire_locks(scope):
        say(text)


def outcome_for(store: Store, config: Config, d: Deployment, *, take: bool,
                say: Callable[[str], None]) -> tuple[CheckStatus, str]:
    """The lock row of `d`'s checklist: taken (or already held) for it, held by someone else,
    or free and not taken (a dry run, a blocked deployment)."""
    scope = d.lock_scope
    expire(store, scope, say)
    if take:
        ok, lock = store.acquire_lock(
            scope, holder=d.requested_by, deployment_id=d.id,
            reason=f"deploying {d.service} {d.version} ({d.ticket_id})",
            ttl=config.environments[d.environment].lock_ttl)
        if ok:
            return CheckStatus.PASSED, f"{scope} locked for this deployment"
        return CheckStatus.FAILED, describe(lock)
    lock = store.lock(scope)
    if lock and lock.deployment_id != d.id:
        return CheckStatus.FAILED, describe(lock)
    return CheckStatus.SKIPPED if not d.dry_run else CheckStatus.PASSED, (
        f"{scope} is free (not taken: {'dry run' if d.dry_run else 'blocked'})")


class Heartbeat:
    """While a deployment runs, push its lock's expiry ahead every ttl/3 seconds."""

    def __init__(self, store: Store, deployment_id: int, ttl: float) -> None:
        self.store, self.deployment_id, self.ttl = store, deployment_id, ttl
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _beat(self) -> None:
        try:
            self.store.heartbeat(self.deployment_id, self.ttl)
        except Exception:  # a missed beat only shortens the lock's life; never stop a deploy
            log.exception("heartbeat of #%s failed", self.deployment_id)

    def __enter__(self) -> "Heartbeat":
        self._beat()
        interval = max(1.0, self.ttl / 3)

        def loop() -> None:
            while not self._stop.wait(interval):
                self._beat()
        self._thread = threading.Thread(target=logcontext.in_thread(loop), daemon=True,
                                        name=f"deploybot-heartbeat-{self.deployment_id}")
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
