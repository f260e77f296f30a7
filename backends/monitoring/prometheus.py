"""Prometheus's HTTP API: instant queries for the watch window (MetricsSource)."""

from __future__ import annotations

import math

import httpx

from bot.errors import MetricsUnavailable


class PrometheusSource:
    """MetricsSource over GET /api/v1/query; every call has its timeout."""

    def __init__(self, url: str, timeout: float = 5.0, client: httpx.Client | None = None) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.client = client or httpx.Client(follow_redirects=False, trust_env=False)

    def query(self, expression: str) -> float | None:
        endpoint = f"{self.url}/api/v1/query"
        try:
            response = self.client.get(endpoint, params={"query": expression},
                                       timeout=self.timeout)
        except httpx.TimeoutException:
            raise MetricsUnavailable(f"{endpoint} gave no answer within {self.timeout:g} s") from None
        except httpx.HTTPError as exc:
            raise MetricsUnavailable(f"cannot connect to {endpoint} ({type(exc).__name__})") from None
        try:
            body = response.json()
        except ValueError:
            raise MetricsUnavailable(f"{endpoint} answered {response.status_code}, not JSON") from None
        if response.status_code != 200 or body.get("status") != "success":
            raise MetricsUnavailable(f"{endpoint} refused {expression!r}: "
                                     f"{body.get('error') or response.status_code}")
        data = body.get("data") or {}
        kind, result = data.get("resultType"), data.get("result")
        if kind == "scalar":
            value = result[1]
        elif kind == "vector":
            if not result:
                return None
            if len(result) > 1:
                raise MetricsUnavailable(f"{expression!r} returned {len(result)} series; "
                                         "aggregate it to one (sum, max, ...)")
            value = result[0]["value"][1]
        else:
            raise MetricsUnavailable(f"{expression!r} returned a {kind}, not one number")
        number = float(value)
        return None if math.isnan(number) else number

    def close(self) -> None:
        self.client.close()
