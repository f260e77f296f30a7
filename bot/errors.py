"""Errors a person can act on: what failed, where, and what to do next."""

from __future__ import annotations


class DeploybotError(Exception):
    """Base of every error deploybot reports to a person."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class InputError(DeploybotError):
    """Bad user input: malformed ticket id, unknown service, invalid version. Nothing changed."""


class ConfigError(DeploybotError):
    """The configuration file is missing or invalid."""


class BackendError(DeploybotError):
    """A deploy backend failed. The backend guarantees what is running is stated in the message."""


class TrackerError(DeploybotError):
    """The ticket tracker failed or refused: says which tracker, which ticket, what to fix."""


class StateError(DeploybotError):
    """The request does not fit the stored state (gate already decided, lock held, ...)."""


class NotAllowed(DeploybotError):
    """The person may not do this (approve their own production deployment, not an approver)."""


class DeliveryError(DeploybotError):
    """A message (Slack post, ticket comment or transition) could not be delivered now; the
    outbox keeps it and tries again. `retry_after`: seconds the far side asked us to wait
    (Slack's Retry-After on a 429), None when it did not say."""

    def __init__(self, message: str, hint: str = "", *, retry_after: float | None = None,
                 permanent: bool = False) -> None:
        super().__init__(message, hint)
        self.retry_after = retry_after
        self.permanent = permanent  # retrying cannot help (channel_not_found, 404 ticket)


class MetricsUnavailable(Exception):
    """A metrics source could not be asked (unreachable, bad answer): the signal is inconclusive."""
