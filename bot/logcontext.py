"""Which deployment a log line belongs to: set by the pipeline while it works on one, added to
every record by DeploymentFilter, carried into the threads the work starts (`in_thread`).

The same bookkeeping tells a shutting-down process what it is still waiting for (`working`).
"""

from __future__ import annotations

import contextvars
import functools
import logging
import threading
from collections import Counter
from contextlib import contextmanager
from typing import Any, Callable, Iterator, NamedTuple


class Current(NamedTuple):
    deployment_id: int
    ticket: str


_current: contextvars.ContextVar[Current | None] = contextvars.ContextVar(
    "deploybot_deployment", default=None)
# Deployments some thread of this process is working on now (nested entries counted).
_working: Counter[int] = Counter()
_working_lock = threading.Lock()


def current() -> Current | None:
    return _current.get()


@contextmanager
def deployment(deployment_id: int, ticket: str) -> Iterator[None]:
    """Log lines inside carry this deployment's id and ticket."""
    token = _current.set(Current(deployment_id, ticket))
    with _working_lock:
        _working[deployment_id] += 1
    try:
        yield
    finally:
        with _working_lock:
            _working[deployment_id] -= 1
            if _working[deployment_id] <= 0:
                del _working[deployment_id]
        _current.reset(token)


def working() -> list[int]:
    """Ids of the deployments this process is working on now, oldest first."""
    with _working_lock:
        return sorted(_working)


def in_thread(target: Callable[..., Any]) -> Callable[..., Any]:
    """`target` to run in another thread with the caller's context (its deployment id and
    ticket): threads start with an empty context otherwise."""
    ctx = contextvars.copy_context()
    return lambda *args, **kwargs: ctx.run(target, *args, **kwargs)


class DeploymentFilter(logging.Filter):
    """On a handler: every record gets `deployment_id` and `ticket` (None outside one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        now = _current.get()
        if not hasattr(record, "deployment_id"):
            record.deployment_id = now.deployment_id if now else None
        if not hasattr(record, "ticket"):
            record.ticket = now.ticket if now else None
        return True


def waiting_for(store: Any) -> list[str]:
    """For a shutdown's log: "waiting for deployment 12 (web@v2) to finish verifying"."""
    lines = []
    for deployment_id in working():
        try:
            d = store.deployment(deployment_id)
        except Exception:  # the store itself may be what is going away
            lines.append(f"waiting for deployment {deployment_id} to finish")
            continue
        if not d.status.terminal:
            lines.append(f"waiting for deployment {d.id} ({d.service}@{d.version}) to finish "
                         f"{d.status.value.replace('_', ' ')}")
    return lines


def around(locate: Callable[..., Any]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A decorator: the call runs inside the deployment `locate(*args, **kwargs)` returns (an
    object with `id` and `ticket_id`). A deployment it cannot find is the call's own error."""
    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                d = locate(*args, **kwargs)
            except Exception:
                return fn(*args, **kwargs)
            with deployment(d.id, d.ticket_id):
                return fn(*args, **kwargs)
        return wrapper
    return decorate
