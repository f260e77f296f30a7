"""An in-memory TrafficProxy (backends/proxy/__init__.py) for unit tests of the backends.

Two slots like HAProxy's: `route` puts the address in the slot that does not serve (or finds it
there) and marks the other one draining. `sessions` are set by the test; `fail` makes the next
call of that name raise BackendError, as the real one does when the proxy cannot be reached.
"""

from __future__ import annotations

from bot.errors import BackendError


class InMemoryProxy:
    def __init__(self, key: str = "web-production", *, listen: str = "127.0.0.1:18080") -> None:
        self.key = key
        self.listen = listen
        self.slots: list[str | None] = [None, None]
        self.active: int | None = None
        self.sessions_of: dict[str, int] = {}
        self.calls: list[tuple] = []  # ("route", address), ("forget", address), ...
        self.fail: set[str] = set()
        self.ensured = 0

    def _call(self, name: str, *args) -> None:
        self.calls.append((name, *args))
        if name in self.fail:
            self.fail.discard(name)
            raise BackendError(f"the proxy did not answer ({name})")

    def ensure(self, on_step) -> None:
        self._call("ensure")
        self.ensured += 1

    def serving(self) -> str | None:
        self._call("serving")
        return self.slots[self.active] if self.active is not None else None

    def route(self, address: str, on_step) -> str | None:
        self._call("route", address)
        before = self.serving()
        if before == address:
            return before
        if address in self.slots:
            slot = self.slots.index(address)
        else:
            slot = 1 if self.active == 0 else 0
            self.slots[slot] = address
        self.active = slot
        on_step(f"proxy: {self.key} -> {address}")
        return before

    def sessions(self, address: str) -> int:
        return self.sessions_of.get(address, 0) if address in self.slots else 0

    def wait_drained(self, address: str, timeout: float, on_step) -> bool:
        self._call("wait_drained", address, timeout)
        return self.sessions(address) == 0

    def forget(self, address: str, on_step) -> None:
        self._call("forget", address)
        if address in self.slots:
            slot = self.slots.index(address)
            self.slots[slot] = None
            if self.active == slot:
                self.active = None

    def by_hand(self, address: str) -> list[str]:
        return [f"echo 'set server {self.key}/s1 addr {address}' | socat stdio unix:admin.sock"]

    def routes(self) -> list[str]:
        return [c[1] for c in self.calls if c[0] == "route"]
