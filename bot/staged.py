"""Blue/green behind a proxy, the core's side (bot/ports.StagedDeploy): the checks of a staged
version go to its own address, before the proxy sends it a single request."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from bot.config import Service
from bot.models import BackendStatus
from bot.ports import DeployBackend, HttpProbe, ProbeResult, StagedDeploy
from bot.verify import checks_at


def staged(backend: DeployBackend) -> StagedDeploy | None:
    """The backend as a StagedDeploy when it is configured for it (`proxy:`), else None."""
    if isinstance(backend, StagedDeploy) and backend.staged():
        return backend
    return None


def at_address(url: str, address: str) -> str:
    """`url` sent to HOST:PORT instead: same path and query, plain HTTP (the proxy may end TLS;
    the container behind it speaks HTTP on its own port)."""
    parts = urlsplit(url)
    return urlunsplit(("http", address, parts.path or "/", parts.query, ""))


def direct_service(svc: Service, address: str) -> Service:
    """The service's health, detailed health and smoke checks aimed at `address`."""
    return checks_at(svc, lambda url: at_address(url, address))


class DirectProbe:
    """The probe for the staged version's own address, with the credentials (`http_auth`) of
    the public URL each check stands for: the same service, reached without the proxy. A probe
    without `get_as` (no credentials to carry) is asked plainly."""

    def __init__(self, probe: HttpProbe, svc: Service, address: str) -> None:
        self.probe = probe
        public = ([str(svc.health.url)] if svc.health else []) + [str(t.url) for t in svc.smoke]
        self.stands_for = {at_address(u, address): u for u in public}
        self.default = public[0] if public else ""

    def get(self, url: str, timeout: float) -> ProbeResult:
        get_as = getattr(self.probe, "get_as", None)
        if get_as is None:
            return self.probe.get(url, timeout)
        # the detailed health URL is derived from the health URL: same origin, same token
        return get_as(url, timeout, self.stands_for.get(url, self.default) or url)


class CandidateView:
    """What bot.verify needs of a backend (status()), answered for the staged version."""

    def __init__(self, backend: StagedDeploy) -> None:
        self.backend = backend

    def status(self) -> BackendStatus:
        return self.backend.candidate_status()
