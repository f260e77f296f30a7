"""Imports a command may not need, made when first used: `deploybot --help` and `status` must
not pay for the Slack, Kubernetes, scheduler and deployment machinery (issue 13, start-up)."""

from __future__ import annotations

import importlib
import threading
from typing import Any, Callable

_UNSET = object()


class Lazy:
    """A module, or one name in it, imported on the first attribute access or call."""

    def __init__(self, module: str, name: str = "") -> None:
        self._module, self._name = module, name
        self._value: Any = _UNSET
        self._lock = threading.Lock()

    def _target(self) -> Any:
        if self._value is _UNSET:
            with self._lock:  # deployments run on threads: import once
                if self._value is _UNSET:
                    self._value = self._load()
        return self._value

    def _load(self) -> Any:
        module = importlib.import_module(self._module)
        return getattr(module, self._name) if self._name else module

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):  # copy, pickle and introspection ask for these
            raise AttributeError(attr)
        return getattr(self._target(), attr)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._target()(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<lazy {self._module}{'.' + self._name if self._name else ''}>"


class Deferred(Lazy):
    """An object made by `factory()` on its first attribute access: e.g. the HTTP probe (httpx,
    an SSL context) and the image builder (the Docker SDK), which `status` never uses."""

    def __init__(self, factory: Callable[[], Any], label: str) -> None:
        super().__init__(label)
        self._factory = factory

    def _load(self) -> Any:
        return self._factory()
