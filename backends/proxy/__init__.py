"""The reverse proxy in front of Docker and Compose services (`proxy:`): HAProxy, driven through its
runtime API so a switch is one command on a socket, never a reload (backends/proxy/haproxy.py).

The deploy backends use it through `TrafficProxy`; `build_proxy` wires the implementation.
"""

from __future__ import annotations

from typing import Callable, Protocol, runtime_checkable

from bot.config import ProxySettings
from bot.ports import StepCallback


@runtime_checkable
class TrafficProxy(Protocol):
    """One service's traffic (`key`, e.g. "web-production") through a shared proxy.

    The proxy has two server slots per service; at most one receives new requests ("serving").
    Every change is made at runtime (no reload, so no request is refused or cut) and written to
    the service's configuration file too, so a restarted proxy serves the same address.
    Every call has a timeout and raises bot.errors.BackendError saying what to fix.
    """

    key: str

    def ensure(self, on_step: StepCallback) -> None:
        """The proxy runs (started, for run: container) and has this service's frontend on
        `listen` and its backend. Idempotent; reloads (seamlessly, listeners passed on) only when
        this service's file had to change. A port already taken is said with who to ask."""
        ...

    def serving(self) -> str | None:
        """HOST:PORT receiving this service's new requests now; None when none (never routed,
        or the proxy has no such service yet)."""
        ...

    def route(self, address: str, on_step: StepCallback) -> str | None:
        """Send new requests to `address` (HOST:PORT), in one runtime API call; returns the
        address that served before (it drains: no new requests, in-flight ones finish), or None.
        Routing to the address that already serves changes nothing."""
        ...

    def sessions(self, address: str) -> int:
        """Requests/connections `address` is serving right now (0 when it is not a server)."""
        ...

    def wait_drained(self, address: str, timeout: float, on_step: StepCallback) -> bool:
        """Wait until `address` has no session left, at most `timeout` s; False on timeout."""
        ...

    def forget(self, address: str, on_step: StepCallback) -> None:
        """`address` gets nothing any more (its slot is put in maintenance and emptied)."""
        ...

    def by_hand(self, address: str) -> list[str]:
        """The commands a person would run to send the traffic to `address` themselves (the
        record's rollback steps), e.g. `echo '…' | socat stdio unix-connect:DIR/admin.sock`."""
        ...


def build_proxy(settings: ProxySettings, key: str,
                docker_client: Callable[[], object] | None = None) -> TrafficProxy:
    """`docker_client`: the engine that runs the proxy container (run: container)."""
    from backends.proxy.haproxy import HaproxyProxy

    return HaproxyProxy(settings, key, docker_client=docker_client)
