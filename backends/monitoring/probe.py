"""HTTP probing for health, smoke and dependency URLs (httpx, one timeout per call)."""

from __future__ import annotations

import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping
from urllib.parse import urlsplit

import httpx

from bot.config import Config, HttpAuth
from bot.errors import ConfigError
from bot.ports import ProbeResult

MAX_BODY = 64 * 1024  # a health answer bigger than this is cut; we only need its start


def origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


@dataclass
class _Route:
    auth: HttpAuth
    client: httpx.Client


def _tls(ca_file: str | None) -> ssl.SSLContext | bool:
    """A private CA's bundle as an SSL context (httpx no longer takes a path)."""
    if not ca_file:
        return True
    try:
        return ssl.create_default_context(cafile=ca_file)
    except OSError as exc:  # gone since the config was loaded, or no certificate in it
        what = ("no PEM certificate in it" if isinstance(exc, ssl.SSLError)
                else exc.strerror or type(exc).__name__)
        raise ConfigError(f"http_auth.ca_file {ca_file}: cannot be used as the CA bundle "
                          f"({what})", hint="point http_auth.ca_file at the CA's PEM file") \
            from None


def bearer_token(auth: HttpAuth, environ: Mapping[str, str]) -> str | None:
    """The token of `auth`, read at every call (service-account token files are rotated under
    us); None when `auth` names no token source. ConfigError names the variable or file that
    gave none, never a token."""
    if auth.bearer_token_env:
        token = environ.get(auth.bearer_token_env)
        if not token:
            raise ConfigError(f"http_auth.bearer_token_env: the environment variable "
                              f"{auth.bearer_token_env} is {'empty' if token == '' else 'not set'}",
                              hint=f"export {auth.bearer_token_env} for deploybot")
        return token
    if auth.bearer_token_file:
        try:
            token = Path(auth.bearer_token_file).read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            why = getattr(exc, "strerror", None) or type(exc).__name__
            raise ConfigError(f"http_auth.bearer_token_file {auth.bearer_token_file}: cannot be "
                              f"read ({why})", hint="check the file and its permissions") from None
        if not token:
            raise ConfigError(f"http_auth.bearer_token_file {auth.bearer_token_file} is empty")
        return token
    return None


class HttpxProbe:
    """GETs with a timeout; URLs on an origin with `http_auth` carry its bearer token."""

    def __init__(self, client: httpx.Client | None = None,
                 auth_by_origin: Mapping[str, HttpAuth] | None = None,
                 environ: Mapping[str, str] | None = None) -> None:
        # No redirects: a health URL that redirects (to a login page, say) is not healthy.
        self.client = client or httpx.Client(follow_redirects=False, trust_env=False)
        self.environ = dict(environ or {})
        self.routes = {
            o: _Route(a, httpx.Client(follow_redirects=False, trust_env=False,
                                      verify=_tls(a.ca_file)))
            for o, a in (auth_by_origin or {}).items()}

    @classmethod
    def for_config(cls, config: Config, environ: Mapping[str, str]) -> "HttpxProbe":
        auth: dict[str, HttpAuth] = {}
        for name in config.services:
            for env in config.environments:
                svc = config.service(name, env)
                if not svc.http_auth:
                    continue
                urls = [str(t.url) for t in svc.smoke]
                if svc.health:
                    urls.append(str(svc.health.url))
                metrics = getattr(svc, "metrics_url", None)
                if metrics:
                    urls.append(str(metrics))
                for url in urls:
                    auth[origin(url)] = svc.http_auth
        return cls(auth_by_origin=auth, environ=environ)

    def get(self, url: str, timeout: float) -> ProbeResult:
        return self.get_as(url, timeout, url)

    def get_as(self, url: str, timeout: float, stands_for: str) -> ProbeResult:
        """GET `url` with the credentials of the URL it `stands_for`: a staged version's own
        address checked in place of the public one (bot/staged.py), same service, same token."""
        try:
            return self.fetch(url, timeout, stands_for)
        except ConfigError as exc:
            return ProbeResult(url, None, "", 0.0, f"no bearer token ({exc.message})")

    def fetch(self, url: str, timeout: float, stands_for: str) -> ProbeResult:
        """get_as, but a token that cannot be read raises ConfigError (sent nowhere)."""
        start = time.perf_counter()
        client, headers = self.client, {}
        route = self.routes.get(origin(stands_for))
        if route:
            client = route.client
            token = bearer_token(route.auth, self.environ)
            if token is not None:
                headers["Authorization"] = f"Bearer {token}"
        try:
            response = client.get(url, timeout=timeout, headers=headers)
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
        for route in self.routes.values():
            route.client.close()
