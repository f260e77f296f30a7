"""DockerBackend behind the proxy (`proxy:`): blue/green with three names per service.

    NAME            what the proxy serves
    NAME--next      the staged candidate: answers on its own 127.0.0.1 port, gets no traffic
    NAME--previous  what served before: warm until finalize, then kept stopped for a rollback

The proxy's serving address is the truth. Every operation that changes something first makes the
names follow it (the container publishing that address is NAME), so renames cut short by a
kill -9 are finished by the next run; read-only calls look the serving container up by address.
"""

from __future__ import annotations

from typing import Any, Callable
from urllib.parse import urlsplit

import docker.errors
import requests.exceptions

from backends.deploy.direct_health import DirectHealth
from bot.errors import BackendError
from bot.models import BackendStatus
from bot.ports import StepCallback

NEXT_SUFFIX = "--next"
PROXIED_LABEL = "io.deploybot.proxied"  # created for the proxy: its port is engine-chosen
DOCKER_ERRORS = (docker.errors.DockerException, requests.exceptions.RequestException)


class StagedContainers:
    """The StagedDeploy half of DockerBackend; used only when `backend.proxy` is set.

    Expects from DockerBackend: name, kept_name, opts, client, health, verify, clock, service,
    environment, _container, _remove, _version_of, _runs, _run_kwargs, _ref, _status_of,
    _known_bytes, prepare, and the proxy factory."""

    next_name: str
    _proxy: Any
    _proxy_factory: Callable[..., Any]
    _http_status: Callable[[str, float], int | None]  # raises BackendError: no use waiting
    _direct_health: DirectHealth

    # -- plumbing -------------------------------------------------------------------------------

    def staged(self) -> bool:
        return self.opts.proxy is not None

    @property
    def proxy(self):
        if self._proxy is None:
            self._proxy = self._proxy_factory(self.opts.proxy, f"{self.service}-{self.environment}",
                                              docker_client=lambda: self.client)
        return self._proxy

    @property
    def _listen_port(self) -> str:
        return self.opts.proxy.listen.rpartition(":")[2]

    def _address(self, container) -> str | None:
        """127.0.0.1:PORT where `container` answers on the application port (running only)."""
        ports = ((container.attrs or {}).get("NetworkSettings") or {}).get("Ports") or {}
        for binding in ports.get(f"{self.opts.proxy.port}/tcp") or []:
            if binding.get("HostIp") == "127.0.0.1" and binding.get("HostPort"):
                return f"127.0.0.1:{binding['HostPort']}"
        return None

    def _publishes_listen(self, container) -> bool:
        """A container of the `ports:` days that itself publishes the port the proxy will take."""
        if container is None or (container.labels or {}).get(PROXIED_LABEL) == "true":
            return False
        ports = ((container.attrs or {}).get("NetworkSettings") or {}).get("Ports") or {}
        return any(b.get("HostPort") == self._listen_port for bs in ports.values() for b in bs or [])

    @staticmethod
    def _running(container) -> bool:
        state = (container.attrs or {}).get("State") or {}
        return bool(state.get("Running")) and not state.get("Restarting")

    def _rename(self, container, name: str) -> None:
        try:
            container.rename(name)
        except DOCKER_ERRORS as exc:
            raise BackendError(f"cannot rename {container.name} to {name}: "
                               f"{self._explain(exc)}") from None
        container.reload()

    def _explain(self, exc: Exception) -> str:
        from backends.deploy.docker import explain

        return explain(exc)

    def _reload(self, container) -> None:
        try:
            container.reload()
        except DOCKER_ERRORS as exc:
            raise BackendError(f"cannot inspect {container.name}: {self._explain(exc)}") from None

    def _named(self) -> dict[str, Any]:
        return {n: self._container(n) for n in (self.name, self.next_name, self.kept_name)}

    def _holder(self, named: dict[str, Any], address: str | None) -> str | None:
        if address is None:
            return None
        return next((n for n, c in named.items() if c is not None and self._address(c) == address),
                    None)

    def _truth(self, on_step: StepCallback, *, converge: bool = True) -> tuple[Any, dict]:
        """The proxy is up and the names follow what it serves. Returns (the container that
        serves, NAME, or None when nothing does; {name: container or None} of the three names).
        A `ports:` container still holding the listen port (no switch to the proxy yet) is what
        serves: the proxy is left alone until the switch. converge=False (rollback: every ms
        counts) skips ensure() while the proxy answers with a route for this service; stage and
        switch always converge it to the settings."""
        named = self._named()
        current = named[self.name]
        if self._publishes_listen(current) and self._running(current):
            return current, named
        serving = None
        if not converge:
            try:
                serving = self.proxy.serving()
            except BackendError:
                serving = None
        if serving is None:
            self.proxy.ensure(on_step)
            serving = self.proxy.serving()
        holder = self._holder(named, serving)
        if holder is None:
            if serving is not None:
                on_step(f"the proxy sends {self.service} to {serving}, which none of "
                        f"{self.name}, {self.next_name}, {self.kept_name} publishes")
            return None, named
        if holder != self.name:
            self._follow(named, holder, on_step)
            named = self._named()
        return named[self.name], named

    def _follow(self, named: dict[str, Any], holder: str, on_step: StepCallback) -> None:
        """`holder` serves: it becomes NAME. The one it displaces served before a switch (it
        becomes NAME--previous, warm) or is the bad version of a rollback (NAME--next, to go)."""
        displaced = named[self.name]
        serving = named[holder]
        if displaced is not None:
            spot = self.kept_name if holder == self.next_name else self.next_name
            if named[spot] is not None:
                on_step(f"removing {spot} ({self._version_of(named[spot])}): no longer needed")
                self._drop(named[spot], on_step)
            self._rename(displaced, spot)
        self._rename(serving, self.name)
        on_step(f"{self.name} is now {self._version_of(serving)}, the container the proxy serves"
                + (f"; {self._version_of(displaced)} is {displaced.name}" if displaced else ""))

    def _drop(self, container, on_step: StepCallback) -> None:
        """Remove a container the proxy must not know any more."""
        address = self._address(container)
        if address:
            self.proxy.forget(address, on_step)
        self._remove(container)

    def _served_name(self) -> str:
        """The name of the container the proxy serves, without changing anything (read-only
        calls: status, logs, ...); NAME when that cannot be told."""
        current = self._container(self.name)
        if self._publishes_listen(current):
            return self.name
        try:
            serving = self.proxy.serving()
        except BackendError:
            return self.name
        return self._holder(self._named(), serving) or self.name

    # -- StagedDeploy ---------------------------------------------------------------------------

    def stage(self, version: str, *, ticket_id: str, on_step: StepCallback,
              image: str | None = None) -> str:
        current, named = self._truth(on_step)
        if self._publishes_listen(current):
            on_step(f"{self.name} publishes {self._listen_port} itself (ports:): the proxy takes "
                    "the port over at the switch")
        stale = named[self.next_name]
        if stale is not None:
            on_step(f"removing {self.next_name} ({self._version_of(stale)}) left from an earlier "
                    "deployment")
            self._drop(stale, on_step)
        kept = named[self.kept_name]
        if kept is not None and self._reusable(kept, version, image):
            on_step(f"starting the kept {version} container {self.kept_name} as {self.next_name}")
            self._rename(kept, self.next_name)
            candidate = kept
            created = False
        else:
            candidate = self._create(self.next_name, version, ticket_id, on_step, image=image)
            created = True
        try:
            if not self._running(candidate):
                candidate.start()
            self._reload(candidate)
            address = self._address(candidate)
            if address is None:
                raise BackendError(f"{self.next_name} publishes no 127.0.0.1 port for "
                                   f"{self.opts.proxy.port}/tcp (state "
                                   f"{(candidate.attrs.get('State') or {}).get('Status')})")
        except (BackendError, *DOCKER_ERRORS) as exc:
            message = exc.message if isinstance(exc, BackendError) else self._explain(exc)
            self._undo_candidate(candidate, created, on_step)
            raise BackendError(f"cannot start {self.next_name} ({version}): {message}") from None
        beside = f"beside {self.name}" if current is not None else "(nothing serves yet)"
        on_step(f"{self.next_name} ({version}) started {beside}, answering on {address} "
                "(no traffic yet)")
        return address

    def _reusable(self, kept, version: str, image: str | None) -> bool:
        if (kept.labels or {}).get(PROXIED_LABEL) != "true" or self._version_of(kept) != version:
            return False
        return image is None or self._runs(kept, image)

    def _undo_candidate(self, candidate, created: bool, on_step: StepCallback) -> None:
        """A failed start: a created candidate goes; a kept one is stopped and kept again."""
        try:
            if created:
                self._remove(candidate)
                return
            candidate.stop(timeout=self.opts.stop_timeout)
            self._rename(candidate, self.kept_name)
        except (BackendError, *DOCKER_ERRORS) as exc:
            on_step(f"could not clean up {candidate.name}: {exc}")

    def _create(self, name: str, version: str, ticket_id: str, on_step: StepCallback, *,
                image: str | None):
        ref = image or self._ref(version)
        kwargs = self._run_kwargs(version, ticket_id)
        kwargs["name"] = name
        kwargs["labels"][PROXIED_LABEL] = "true"
        # the engine picks the host port: two versions run side by side, the proxy holds `listen`
        kwargs["ports"] = {**kwargs["ports"], f"{self.opts.proxy.port}/tcp": ("127.0.0.1", None)}
        on_step(f"creating {name} from {ref}" + (f" ({version})" if image else ""))
        try:
            return self.client.containers.create(ref, **kwargs)
        except DOCKER_ERRORS as exc:
            raise BackendError(f"cannot create {name} from {ref}: {self._explain(exc)}") from None

    def candidate_status(self) -> BackendStatus:
        return self._status_of(self.next_name)

    def discard(self, on_step: StepCallback) -> None:
        candidate = self._truth(on_step, converge=False)[1][self.next_name]
        if candidate is None:
            return
        on_step(f"removing {self.next_name} ({self._version_of(candidate)})")
        self._drop(candidate, on_step)

    def switch(self, on_step: StepCallback) -> None:
        current, named = self._truth(on_step)
        candidate = named[self.next_name]
        address = self._address(candidate) if candidate is not None else None
        if address is None:
            raise BackendError(f"nothing to switch to: {self.next_name} "
                               + ("does not exist" if candidate is None else "is not running"),
                               hint="stage the version first")
        self._warm = None
        if self._publishes_listen(current):
            self._first_switch(current, address, on_step)
        else:
            before = self.proxy.route(address, on_step)
            if current is not None and before and before == self._address(current):
                # what a rollback within the window switches back to without asking the engine
                self._warm = (self._version_of(current), (current.attrs or {}).get("Image"),
                              before)
        on_step(f"the proxy sends new requests to {self.next_name} ({address})")
        self._truth(on_step, converge=False)

    def _first_switch(self, current, address: str, on_step: StepCallback) -> None:
        """From `ports:`: the old container holds the listen port; a short gap is unavoidable."""
        on_step(f"first switch to the proxy: {self.name} gives up {self._listen_port}")
        try:
            current.stop(timeout=self.opts.stop_timeout)
        except DOCKER_ERRORS as exc:
            raise BackendError(f"cannot stop {self.name}: {self._explain(exc)}") from None
        try:
            self.proxy.ensure(on_step)
            self.proxy.route(address, on_step)
        except BackendError as exc:
            try:
                current.start()
            except DOCKER_ERRORS as again:
                raise BackendError(f"{exc}; {self.name} could not be started again: "
                                   f"{self._explain(again)}") from None
            raise BackendError(f"{exc}; {self.name} serves {self._listen_port} again",
                               hint=exc.hint) from None
        self._reload(current)

    # -- DeployBackend, staged ------------------------------------------------------------------

    def _staged_deploy(self, version: str, ticket_id: str, on_step: StepCallback,
                       image: str | None) -> None:
        self.stage(version, ticket_id=ticket_id, on_step=on_step, image=image)
        try:
            self.switch(on_step)
        except BackendError:
            self.discard(on_step)
            raise

    def _staged_finalize(self, on_step: StepCallback) -> None:
        kept = self._truth(on_step, converge=False)[1][self.kept_name]
        if kept is None or not self._running(kept):
            return
        self._retire(kept, on_step)
        try:
            kept.stop(timeout=self.opts.stop_timeout)
        except DOCKER_ERRORS as exc:
            raise BackendError(f"cannot stop {self.kept_name}: {self._explain(exc)}") from None
        on_step(f"stopped {self.kept_name} ({self._version_of(kept)}), kept for a manual rollback")

    def _retire(self, container, on_step: StepCallback) -> None:
        """Let `container`'s in-flight requests finish (at most `drain` s), then the proxy
        forgets it."""
        address = self._address(container)
        if address is None:
            return
        drain = self.opts.proxy.drain
        if not self.proxy.wait_drained(address, drain, on_step):
            on_step(f"{container.name} still had {self.proxy.sessions(address)} session(s) after "
                    f"{drain:g} s of drain; going on")
        self.proxy.forget(address, on_step)

    def _switch_back_at_once(self, to_version: str | None, image: str | None,
                             on_step: StepCallback) -> bool:
        """Within the watch window the old version runs warm where this process switched away
        from it: one look at that container, then one runtime API call. True when done."""
        warm, self._warm = self._warm, None
        if warm is None or to_version is None or warm[0] != to_version:
            return False
        version, image_id, address = warm
        if image is not None and image not in (image_id, self._seen.get(version)):
            return False
        kept = self._container(self.kept_name)
        if kept is None or not self._running(kept) or self._address(kept) != address \
                or (kept.attrs or {}).get("Image") != image_id:
            return False
        try:
            self.proxy.route(address, on_step)
        except BackendError as exc:  # the proxy is down: the long way starts it first
            on_step(f"the proxy did not switch back at once ({exc.message})")
            return False
        on_step(f"{self.kept_name} ({version}) was still running: the proxy sends new requests "
                f"to it again ({address})")
        return True

    def _staged_rollback(self, to_version: str | None, on_step: StepCallback,
                         image: str | None) -> None:
        if self._switch_back_at_once(to_version, image, on_step):
            # the names follow the proxy; the bad version finishes its requests, then goes
            bad = self._truth(on_step, converge=False)[1][self.next_name]
            if bad is not None:
                self._retire(bad, on_step)
                on_step(f"removing {self.next_name} ({self._version_of(bad)})")
                self._remove(bad)
            return
        current, named = self._truth(on_step, converge=False)
        if to_version is None:
            for name in (self.next_name, self.name):
                c = named[name]
                if c is not None:
                    on_step(f"removing {name} ({self._version_of(c)}): nothing ran before it")
                    self._drop(c, on_step)
            return
        if current is not None and self._version_of(current) == to_version and (
                image is None or self._runs(current, image)):
            on_step(f"{to_version} still serves: removing the staged version")
            self.discard(on_step)
            return
        if self._publishes_listen(current):
            raise BackendError(f"{self.name} ({self._version_of(current)}) still serves on "
                               f"{self._listen_port} without the proxy, and {to_version} is not "
                               "it: nothing to switch back to")
        address = self._previous_address(named[self.kept_name], to_version, on_step, image)
        self.proxy.route(address, on_step)
        on_step(f"the proxy sends new requests to {to_version} ({address}) again")
        bad = self._truth(on_step, converge=False)[1][self.next_name]
        if bad is not None:
            self._retire(bad, on_step)
            on_step(f"removing {self.next_name} ({self._version_of(bad)})")
            self._remove(bad)

    def _previous_address(self, kept, version: str, on_step: StepCallback,
                          image: str | None) -> str:
        """Where `version` answers: the warm `kept` container at once; the stopped kept one or a
        new one from the image after the engine says running and its health URL answers 2xx."""
        if kept is not None and self._reusable(kept, version, image):
            address = self._address(kept) if self._running(kept) else None
            if address:
                on_step(f"{self.kept_name} ({version}) is still running: switching back to it")
                return address
            on_step(f"starting the kept {version} container {self.kept_name}")
            try:
                kept.start()
            except DOCKER_ERRORS as exc:
                raise BackendError(f"cannot start {self.kept_name}: {self._explain(exc)}") from None
            return self._checked(kept, version, created=False, on_step=on_step)
        if kept is not None:
            on_step(f"removing {self.kept_name} ({self._version_of(kept)}): not the bytes of "
                    f"{version} behind the proxy")
            self._drop(kept, on_step)
        self.prepare(version, on_step, image=image)
        fresh = self._create(self.kept_name, version, "rollback", on_step, image=image)
        try:
            fresh.start()
        except DOCKER_ERRORS as exc:
            self._remove(fresh)
            raise BackendError(f"cannot start {self.kept_name}: {self._explain(exc)}") from None
        return self._checked(fresh, version, created=True, on_step=on_step)

    def _checked(self, container, version: str, *, created: bool, on_step: StepCallback) -> str:
        """The address of a container just started, once it is healthy; else it is stopped (a
        kept one) or removed (a new one) and BackendError says why. What serves is untouched."""
        try:
            address = self._wait_healthy(container, on_step)
        except BackendError as exc:
            try:
                if created:
                    self._remove(container)
                else:
                    container.stop(timeout=self.opts.stop_timeout)
            except (BackendError, *DOCKER_ERRORS):
                pass
            raise BackendError(f"{version} cannot serve again: {exc.message}") from None
        on_step(f"{container.name} ({version}) is healthy on {address}")
        return address

    def _wait_healthy(self, container, on_step: StepCallback) -> str:
        limit = max(self.verify.timeout, 1.0)
        deadline = self.clock.monotonic() + limit
        last = "not running yet"
        while True:
            self._reload(container)
            state = (container.attrs or {}).get("State") or {}
            if state.get("Status") in ("exited", "dead") or state.get("Restarting"):
                raise BackendError(f"{container.name} stopped (exit code {state.get('ExitCode')})")
            address = self._address(container) if self._running(container) else None
            if address is not None:
                url = self._direct_health.url(address)
                if url is None:
                    return address
                remaining = max(deadline - self.clock.monotonic(), 0.1)
                code = self._http_status(url, min(self.health.timeout, remaining))
                if code is not None and 200 <= code < 300:
                    return address
                last = f"{url} answered {code}" if code is not None else f"{url} did not answer"
            if self.clock.monotonic() >= deadline:
                raise BackendError(f"{container.name} not healthy within {limit:g} s: {last}")
            self.clock.sleep(min(self.verify.interval, 0.5))

    # -- dry run and by-hand steps --------------------------------------------------------------

    def _staged_plan(self, version: str) -> list[str]:
        p = self.opts.proxy
        ref = self._ref(version)
        current = self._container(self.name)
        now = f"{self.name} ({self._version_of(current)})" if current else "nothing"
        runs = (f"container {p.container_name}, started when it is not running"
                if p.run == "container" else "run: host, started by you")
        proxy_up = f"the proxy (HAProxy in {p.dir}, {runs}) has this service on {p.listen}"
        migrating = self._publishes_listen(current)
        steps = [f"make sure {ref} is on the Docker host (pull: {self.opts.pull})"]
        if not migrating:
            steps.append(f"make sure {proxy_up}")
        steps += [f"start {self.next_name} from {ref} beside {now}, {p.port}/tcp published on a "
                  "127.0.0.1 port the engine picks; it gets no traffic",
                  f"check {self.next_name} directly on its own address"]
        if migrating:
            steps.append(f"first switch to the proxy: stop {self.name}, which gives up "
                         f"{self._listen_port} (a short gap); then {proxy_up}")
        steps += [f"switch the proxy ({p.listen}) to {self.next_name} in one runtime API call; "
                  f"{now} drains and keeps running",
                  "check and watch through the proxy; a rollback switches back to the warm "
                  "previous container",
                  f"then wait up to {p.drain:g} s for the old one's requests, stop it and keep it "
                  f"as {self.kept_name}"]
        return steps

    def _staged_rollback_steps(self, to_version: str | None) -> list[str]:
        if to_version is None:
            return [f"docker rm -f {self.name}",
                    f"(the proxy keeps {self.opts.proxy.listen} but sends nothing anywhere)"]
        kept = self._container(self.kept_name)
        address = "127.0.0.1:PORT"
        steps: list[str] = []
        if kept is not None and self._version_of(kept) == to_version:
            if self._running(kept) and self._address(kept):
                address = self._address(kept)
            else:
                steps.append(f"docker start {self.kept_name}")
        else:
            steps.append(self._staged_run_command(to_version, self._known_bytes(to_version)))
        if address == "127.0.0.1:PORT":
            steps.append(f"docker port {self.kept_name} {self.opts.proxy.port}/tcp   "
                         "# -> 127.0.0.1:PORT")
            if self.health is not None:
                path = urlsplit(str(self.health.url)).path or "/"
                steps.append(f"curl -fsS http://127.0.0.1:PORT{path}   # must answer 2xx")
        steps += self.proxy.by_hand(address)
        steps += [f"docker rm -f {self.name}", f"docker rename {self.kept_name} {self.name}"]
        return steps

    def _staged_run_command(self, version: str, image: str | None) -> str:
        return self._run_command(version, image, name=self.kept_name, extra=(
            "--label", f"{PROXIED_LABEL}=true", "-p", f"127.0.0.1::{self.opts.proxy.port}"))
