"""The health URL of a staged container on its own address, asked by the backend itself (before
the proxy sends it anything, or a kept container is switched back to): with the service's
`http_auth`, through the core's own probe (backends.monitoring.probe), so the token, the header
and the CA bundle are the ones the core's checks use."""

from __future__ import annotations

import os
from typing import Mapping

from backends.monitoring.probe import HttpxProbe, origin
from bot.config import Service
from bot.errors import BackendError, ConfigError
from bot.staged import at_address


class DirectHealth:
    """`environ`: where http_auth's bearer_token_env is read (None: this process's)."""

    def __init__(self, settings: Service, environ: Mapping[str, str] | None = None) -> None:
        self.public = str(settings.health.url) if settings.health else None
        self.auth = settings.http_auth
        self.environ = environ
        self._probe: HttpxProbe | None = None

    def url(self, address: str) -> str | None:
        """The health URL's path and query on `address`; None when the service has no health."""
        return at_address(self.public, address) if self.public else None

    @property
    def probe(self) -> HttpxProbe:
        if self._probe is None:
            routes = {origin(self.public): self.auth} if self.auth and self.public else None
            self._probe = HttpxProbe(auth_by_origin=routes,
                                     environ=os.environ if self.environ is None else self.environ)
        return self._probe

    def status(self, url: str, timeout: float) -> int | None:
        """The HTTP status of one GET of `url`, None when no answer came. A token that cannot be
        read, or an answer refusing it, raises BackendError at once: waiting cannot mend it."""
        try:
            result = self.probe.fetch(url, timeout, self.public or url)
        except ConfigError as exc:  # no token (named, never shown), or the CA bundle is gone
            raise BackendError(f"cannot check {url}: {exc.message}", hint=exc.hint) from None
        if self.auth is not None and result.status_code in (401, 403):
            raise BackendError(f"{url} refused the http_auth credentials (HTTP "
                               f"{result.status_code})",
                               hint="check that the token deploybot reads is one the service "
                                    "accepts")
        return result.status_code
