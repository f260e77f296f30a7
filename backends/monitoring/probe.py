"""HTTP probing for health, smoke and dependency URLs (httpx, one timeout per call)."""

from __future__ import annotations

import time

import httpx

from bot.ports import ProbeResult

MAX_BODY = 64 * 1024  # a health answer bigger than this is cut; we only need its start


class HttpxProbe:
    def __init__(self, client: httpx.Client | None = None) -> None:
        # No redirects: a health URL that redirects (to a login page, say) is not healthy.
        self.client = client or httpx.Client(follow_redirects=False, trust_env=False)

    def get(self, url: str, timeout: float) -> ProbeResult:
        start = time.perf_counter()
        try:
            response = self.client.get(url, timeout=timeout)
        except httpx.TimeoutException:
            return ProbeResult(url, None, "", (time.perf_counter() - start) * 1000,
                               f"no answer within {timeout:g} s")
        except httpx.HTTPError as exc:
            reason = type(exc).__name__
            if isinstance(exc, httpx.ConnectError):
                reason = "connection refused" if "refused" in str(exc).lower() else f"cannot connect ({exc})"
            return ProbeResult(url, None, "", (time.perf_counter() - start) * 1000, reason)
        return ProbeResult(url, response.status_code, response.text[:MAX_BODY],
                           (time.perf_counter() - start) * 1000)

    def close(self) -> None:
        self.client.close()
