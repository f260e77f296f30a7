"""What a person can ask deploybot to do, whatever the front end: typed requests.

The terminal builds them from its arguments, Slack from chat text (handlers/commands.py), the
scheduler for deployments whose time has come; bot/service.py carries them out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union


@dataclass(frozen=True)
class DeployRequest:
    ticket: str
    target: str | None = None  # service@version; None: the ticket says
    environment: str | None = None  # None: the config's default
    dry_run: bool = False
    at: str | None = None  # "22:00" or "2026-11-27T22:00": schedule it (bot/scheduler.py)
    queue: bool = False  # wait for a held lock instead of being blocked
    break_glass: str = ""  # the reason for deploying inside a freeze window


@dataclass(frozen=True)
class StatusRequest:
    pass


@dataclass(frozen=True)
class HistoryRequest:
    service: str | None = None
    environment: str | None = None
    limit: int = 20


@dataclass(frozen=True)
class LockRequest:
    environment: str | None
    reason: str
    service: str | None = None  # only this service's lock


@dataclass(frozen=True)
class UnlockRequest:
    environment: str | None
    reason: str
    service: str | None = None


@dataclass(frozen=True)
class CancelRequest:
    ticket: str | None = None  # cancel the ticket's deployment that is in progress ...
    deployment_id: int | None = None  # ... or this one (`/deploy cancel #7`)
    reason: str = ""


@dataclass(frozen=True)
class RollbackRequest:
    ticket: str | None = None
    service: str | None = None
    to_version: str | None = None
    environment: str | None = None


@dataclass(frozen=True)
class DecideRequest:
    """Approve or reject a deployment's pending gates (all of them, or `gate_id` only)."""

    deployment_id: int
    approved: bool
    gate_id: int | None = None
    reason: str = ""


@dataclass(frozen=True)
class StartRequest:
    """Drive a stored deployment now (the scheduler: its time came, or its lock freed)."""

    deployment_id: int


ServiceRequest = Union[DeployRequest, StatusRequest, HistoryRequest, LockRequest, UnlockRequest,
                       CancelRequest, RollbackRequest, DecideRequest, StartRequest]
