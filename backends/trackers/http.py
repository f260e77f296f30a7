"""The HTTP behaviour every tracker adapter shares: timeouts, retries, rate limits, clear errors.

One `Http` per adapter. Every call has the configured timeout; timeouts, connection failures and
5xx are retried with exponential backoff; 429 (and GitHub's 403 with no remaining quota, or a
tracker-specific body signal such as Linear's RATELIMITED) waits for `Retry-After` / the reset
header. Errors are TrackerErrors naming the tracker, the ticket and what to fix. The secret is
only ever in the request headers and is scrubbed from any message built from a response.
"""

from __future__ import annotations

import email.utils
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any, Callable, Mapping, TypeVar

import httpx

from bot import logcontext
from bot.errors import ConfigError, TrackerError
from bot.metrics import TRACKER_LATENCY, TRACKER_REQUESTS

T = TypeVar("T")

# Longest rate-limit wait we sit through; beyond it the caller gets an error saying when to retry.
DEFAULT_MAX_WAIT = 60.0


class AmbiguousWrite(TrackerError):
    """A write may or may not have happened (timeout, dropped connection or 5xx after sending)."""


UNSURE = "it may or may not have been applied"


def secret(settings: Mapping[str, Any], environ: Mapping[str, str], tracker: str,
           key: str = "token_env") -> str:
    """Read a secret from the environment variable named in settings[key]; never from settings."""
    name = settings.get(key)
    if not name:
        raise ConfigError(f"{tracker}: tracker.{key} is not set",
                          hint=f"set tracker.{key} to the NAME of the environment variable holding it")
    value = environ.get(str(name), "")
    if not value:
        raise ConfigError(f"{tracker}: environment variable {name} is empty or not set",
                          hint=f"export {name} before starting deploybot")
    return value


def base_url(settings: Mapping[str, Any], tracker: str, default: str = "") -> str:
    url = str(settings.get("url") or default).rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"{tracker}: tracker.url must be an http(s) URL, got {url!r}")
    return url


def parse_time(value: str) -> datetime:
    """ISO 8601 from any tracker ('Z', '+0000', fractions) -> timezone-aware datetime."""
    dt = datetime.fromisoformat(value)
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def parse_wait(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from Retry-After / reset headers: delta seconds, epoch s/ms, or a date."""
    if not value:
        return None
    now = time.time() if now is None else now
    value = value.strip()
    try:
        number = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            try:
                when = parse_time(value)
            except ValueError:
                return None
        return max(0.0, when.timestamp() - now)
    if number > 1e12:  # epoch milliseconds (Linear)
        return max(0.0, number / 1000 - now)
    if number > 1e9:  # epoch seconds (GitHub, GitLab)
        return max(0.0, number - now)
    return max(0.0, number)


class Http:
    """httpx.Client plus the retry/rate-limit/error policy; safe to share between threads."""

    def __init__(
        self,
        *,
        tracker: str,
        url: str,
        headers: Mapping[str, str],
        settings: Mapping[str, Any],
        secret_values: tuple[str, ...] = (),
        token_env: str = "",
        body_rate_limit: Callable[[httpx.Response, float], float | None] | None = None,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        now: Callable[[], float] = time.time,
    ) -> None:
        """`transport`, `sleep` and `now` (wall-clock epoch seconds, for reset headers) are the
        seams tests replace: an in-memory transport and recorded waits instead of sockets and
        real Retry-After sleeps."""
        self.tracker = tracker
        self.url = url
        self.timeout = float(settings.get("timeout", 10))
        self.retries = int(settings.get("retries", 3))
        self.backoff = float(settings.get("backoff", 0.5))
        self.max_wait = float(settings.get("max_wait", DEFAULT_MAX_WAIT))
        self.token_env = token_env or str(settings.get("token_env", ""))
        self._secrets = tuple(s for s in secret_values if s)
        self._body_rate_limit = body_rate_limit
        self._sleep = sleep
        self._now = now
        self._lock = threading.Lock()
        self.requests = 0  # requests sent, retries included (the benchmark reads it)
        self.client = httpx.Client(
            base_url=url,
            headers={"Accept": "application/json", "User-Agent": "deploybot", **headers},
            timeout=self.timeout,
            limits=httpx.Limits(max_connections=16, max_keepalive_connections=16),
            transport=transport,
        )
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix=f"{tracker}-http")

    # -- concurrency -------------------------------------------------------------------------

    def parallel(self, *calls: Callable[[], T]) -> list[T]:
        """Run independent calls at once (ticket + comments, remaining pages); first error wins."""
        if len(calls) == 1:
            return [calls[0]()]
        # each call in a copy of this thread's context: its log lines name the deployment
        futures = [self._pool.submit(logcontext.in_thread(call)) for call in calls]
        return [f.result() for f in futures]

    def close(self) -> None:
        self._pool.shutdown(wait=False)
        self.client.close()

    # -- requests ----------------------------------------------------------------------------

    def request(self, method: str, path: str, *, ticket: str = "", idempotent: bool = True,
                write: bool | None = None, what: str = "", accept: tuple[int, ...] = (),
                **kwargs: Any) -> httpx.Response:
        """Send with retries; return a 2xx response or raise TrackerError.

        `idempotent=False` (posting a comment) is not retried once the request may have reached
        the server: the caller re-checks and decides, so a comment is never posted twice.
        `write` (default: not idempotent): a change; when it may have reached the server and no
        answer says what happened, the error is an AmbiguousWrite saying so.
        """
        write = (not idempotent) if write is None else write
        attempt = 0
        while True:
            with self._lock:
                self.requests += 1
            try:
                resp = self._timed(method, path, **kwargs)
            except httpx.TimeoutException as exc:
                sent = not isinstance(exc, (httpx.ConnectTimeout, httpx.PoolTimeout))
                if attempt >= self.retries or (sent and not idempotent):
                    raise self._no_answer(exc, ticket, what, sent and write) from None
            except httpx.TransportError as exc:
                sent = not isinstance(exc, httpx.ConnectError)
                if attempt >= self.retries or (sent and not idempotent):
                    raise self._no_answer(exc, ticket, what, sent and write) from None
            else:
                wait = self._rate_limit_wait(resp)
                if wait is not None:
                    if attempt >= self.retries or wait > self.max_wait:
                        raise TrackerError(
                            f"{self.tracker} is rate limiting deploybot"
                            + (f" (ticket {ticket})" if ticket else ""),
                            hint=f"retry in {wait:.0f} s; nothing was changed by the refused call",
                        )
                    self._sleep(wait)
                    attempt += 1
                    continue
                if resp.status_code >= 500:
                    if attempt >= self.retries or not idempotent:
                        err = self.error(resp, ticket, what)
                        if write:  # a 5xx does not say whether the change was made
                            raise AmbiguousWrite(f"{err.message}; {UNSURE}", err.hint)
                        raise err
                elif resp.is_error and resp.status_code not in accept:  # `accept`: caller reads the body
                    raise self.error(resp, ticket, what)
                else:
                    return resp
            self._sleep(self.backoff * (2 ** attempt))
            attempt += 1

    def _timed(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One attempt, counted and timed for /metrics (bot/metrics.py)."""
        started = time.perf_counter()
        outcome = "ok"
        try:
            resp = self.client.request(method, path, **kwargs)
            code = resp.status_code
            outcome = ("rate_limited" if code == 429 else "http_5xx" if code >= 500
                       else "http_4xx" if code >= 400 else "ok")
            return resp
        except httpx.TimeoutException:
            outcome = "timeout"
            raise
        except httpx.TransportError:
            outcome = "connect_error"
            raise
        finally:
            TRACKER_LATENCY.labels(self.tracker, method).observe(time.perf_counter() - started)
            TRACKER_REQUESTS.labels(self.tracker, method, outcome).inc()

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        resp = self.request(method, path, **kwargs)
        if resp.status_code == 204 or not resp.content:
            return None
        try:
            return resp.json()
        except ValueError:
            raise TrackerError(
                f"{self.tracker} answered {method} {path} with something that is not JSON",
                hint=f"check tracker.url ({self.url}) points at the {self.tracker} API",
            ) from None

    # -- policy ------------------------------------------------------------------------------

    def _rate_limit_wait(self, resp: httpx.Response) -> float | None:
        h = resp.headers
        if self._body_rate_limit is not None:
            wait = self._body_rate_limit(resp, self._now())
            if wait is not None:
                return wait
        if resp.status_code == 429 or (
            resp.status_code == 403
            and (h.get("x-ratelimit-remaining") == "0" or "retry-after" in h)
        ):
            for name in ("retry-after", "x-ratelimit-reset", "ratelimit-reset"):
                wait = parse_wait(h.get(name), self._now())
                if wait is not None:
                    return wait
            return self.backoff
        return None

    def scrub(self, text: str) -> str:
        for value in self._secrets:
            text = text.replace(value, "***")
        return text

    def _no_answer(self, exc: Exception, ticket: str, what: str, unsure: bool) -> TrackerError:
        """`unsure`: a write that may have reached the server (AmbiguousWrite, saying so)."""
        kind = "did not answer in time" if isinstance(exc, httpx.TimeoutException) else "could not be reached"
        where = f" ({what or 'request'}{', ticket ' + ticket if ticket else ''})"
        cls = AmbiguousWrite if unsure else TrackerError
        return cls(
            f"{self.tracker} {kind}{where}: {type(exc).__name__}" + (f"; {UNSURE}" if unsure else ""),
            hint=f"check tracker.url ({self.url}) and the network; timeout is {self.timeout:g} s",
        )

    def error(self, resp: httpx.Response, ticket: str = "", what: str = "") -> TrackerError:
        """A TrackerError for a non-2xx answer: which tracker, which ticket, what to fix."""
        code = resp.status_code
        detail = self.scrub(error_detail(resp))
        on = f" for ticket {ticket}" if ticket else ""
        action = f" while trying to {what}" if what else ""
        if code == 401:
            return TrackerError(
                f"{self.tracker} rejected deploybot's credentials (HTTP 401){on}",
                hint=f"check the token in environment variable {self.token_env or '(tracker.token_env)'}",
            )
        if code == 403:
            return TrackerError(
                f"{self.tracker} refused access (HTTP 403){on}{action}" + (f": {detail}" if detail else ""),
                hint=f"give the account behind {self.token_env or 'the token'} permission for this",
            )
        if code == 404:
            if ticket:
                return TrackerError(f"{self.tracker} has no ticket {ticket} (HTTP 404)",
                                    hint="check the ticket id, and that the token may see it")
            return TrackerError(f"{self.tracker} answered HTTP 404{action}",
                                hint=f"check tracker.url ({self.url}) and the project/repo settings")
        return TrackerError(
            f"{self.tracker} failed with HTTP {code}{on}{action}" + (f": {detail}" if detail else ""),
            hint="see the tracker's message above" if code < 500 else "the tracker is failing; retry later",
        )


def error_detail(resp: httpx.Response) -> str:
    """The tracker's own error message, short: Jira errorMessages, GitHub/GitLab message, ..."""
    try:
        data = resp.json()
    except ValueError:
        return resp.text.strip()[:200] if "json" not in resp.headers.get("content-type", "") else ""
    parts: list[str] = []
    if isinstance(data, dict):
        for key in ("errorMessages", "errors", "message", "error"):
            value = data.get(key)
            if isinstance(value, list):
                parts += [v.get("message", str(v)) if isinstance(v, dict) else str(v) for v in value]
            elif isinstance(value, dict):
                parts += [f"{k}: {v}" for k, v in value.items()]
            elif value:
                parts.append(str(value))
    return "; ".join(parts)[:300]
