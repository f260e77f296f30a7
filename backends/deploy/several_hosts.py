"""One Docker service on several engines (`hosts:`): a DockerBackend per host. The calls of the
DeployBackend act on every host; the rollout host by host is the core's (bot/host_rollout.py,
through the SeveralHosts capability this backend offers)."""

from __future__ import annotations

import ipaddress
import shlex
from datetime import datetime
from typing import Callable, Mapping

import docker

from bot.config import DockerHost, Service
from bot.errors import BackendError
from bot.host_rollout import MIXED, agreed, in_batches, per_host
from bot.models import BackendStatus
from bot.ports import DeployBackend, ResourceUsage, StepCallback, Usage

from backends.deploy import docker as docker_backend


def _loopback_v4(host: str) -> bool:
    try:
        return ipaddress.IPv4Address(host).is_loopback
    except ValueError:
        return False


def published_on(ports: dict[str, str], address: str | None) -> dict[str, str]:
    """Ports published on 127.x moved onto `address` when it is a 127.x address too: two
    engines on one machine cannot both bind 127.0.0.1:18080 (127.0.0.2:18080 is free)."""
    if not address or not _loopback_v4(address):
        return dict(ports)
    out = {}
    for container_port, published in ports.items():
        ip, _, port = str(published).rpartition(":")
        out[container_port] = f"{address}:{port}" if _loopback_v4(ip) else published
    return out


def settings_on(settings: Service, host: DockerHost) -> Service:
    """The service's settings as one engine runs it."""
    opts = settings.backend
    moved = opts.model_copy(update={"hosts": None,
                                    "ports": published_on(opts.ports, host.reached_at)})
    return settings.model_copy(update={"backend": moved})


def client_for(engine: str, timeout: float) -> Callable[[], docker.DockerClient]:
    # use_ssh_client: the ssh binary with the user's ssh config and agent, no paramiko
    return lambda: docker.DockerClient(base_url=engine, timeout=int(timeout),
                                       use_ssh_client=engine.startswith("ssh://"))


class OneHost:
    """The service on one engine: its errors say which host, and "not reachable at" names it."""

    def __init__(self, engine: str, backend: DeployBackend) -> None:
        self.engine, self.backend = engine, backend
        self.method = backend.method

    def _call(self, fn, *args, **kwargs):
        token = docker_backend.ENGINE.set(self.engine)
        try:
            return fn(*args, **kwargs)
        except BackendError as exc:
            raise BackendError(f"on {self.engine}: {exc.message}", hint=exc.hint) from None
        finally:
            docker_backend.ENGINE.reset(token)

    def current_version(self) -> str | None:
        return self._call(self.backend.current_version)

    def running_image(self) -> str | None:
        return self._call(self.backend.running_image)

    def prepare(self, version: str, on_step: StepCallback, *, image: str | None = None) -> None:
        self._call(self.backend.prepare, version, self._said(on_step), image=image)

    def deploy(self, version: str, *, ticket_id: str, on_step: StepCallback,
               image: str | None = None) -> None:
        self._call(self.backend.deploy, version, ticket_id=ticket_id,
                   on_step=self._said(on_step), image=image)

    def rollback(self, to_version: str | None, on_step: StepCallback, *,
                 image: str | None = None) -> None:
        self._call(self.backend.rollback, to_version, self._said(on_step), image=image)

    def finalize(self, on_step: StepCallback) -> None:
        self._call(self.backend.finalize, self._said(on_step))

    def status(self) -> BackendStatus:
        return self._call(self.backend.status)

    def logs(self, since: datetime) -> str:
        return self._call(self.backend.logs, since)

    def plan(self, version: str) -> list[str]:
        return self._call(self.backend.plan, version)

    def usage(self) -> Usage | None:
        if not isinstance(self.backend, ResourceUsage):
            raise BackendError(f"on {self.engine}: no resource usage from this backend")
        return self._call(self.backend.usage)

    def rollback_steps(self, to_version: str | None) -> list[str]:
        # the same commands, sent to this host's engine
        return [f"docker -H {shlex.quote(self.engine)} {s[len('docker '):]}"
                if s.startswith("docker ") else s
                for s in self._call(self.backend.rollback_steps, to_version)]

    def _said(self, on_step: StepCallback) -> StepCallback:
        return lambda message: on_step(f"{self.engine}: {message}")


class SeveralHostsBackend:
    """DeployBackend + SeveralHosts over one backend per host (in `hosts:` order)."""

    def __init__(self, hosts: list[DockerHost], batch: int,
                 backends: dict[str, DeployBackend]) -> None:
        self._hosts = {h.engine: h for h in hosts}
        self._batch = batch
        self._one = {h.engine: OneHost(h.engine, backends[h.engine]) for h in hosts}
        self.method = next(iter(self._one.values())).method + f" on {len(hosts)} hosts"

    # -- SeveralHosts ---------------------------------------------------------------------------

    def hosts(self) -> list[str]:
        return list(self._hosts)

    def batches(self) -> list[list[str]]:
        return in_batches(self.hosts(), self._batch)

    def backend_for_host(self, host: str) -> OneHost:
        return self._one[host]

    def address_of(self, host: str) -> str | None:
        return self._hosts[host].reached_at

    # -- DeployBackend: every host ----------------------------------------------------------------

    def current_version(self) -> str | None:
        return agreed({h: b.current_version() for h, b in self._one.items()})

    def running_image(self) -> str | None:
        refs = {h: b.running_image() for h, b in self._one.items()}
        ref = agreed(refs)
        if ref is not None and ref.startswith(MIXED):
            raise BackendError(f"the hosts run different bytes ({ref[len(MIXED):]})")
        return ref

    def prepare(self, version: str, on_step: StepCallback, *, image: str | None = None) -> None:
        for b in self._one.values():
            b.prepare(version, on_step, image=image)

    def deploy(self, version: str, *, ticket_id: str, on_step: StepCallback,
               image: str | None = None) -> None:
        """Every host in order (bot/host_rollout.py verifies between batches; this does not);
        a host failing puts back what ran on the hosts done before it."""
        done: list[tuple[OneHost, str | None, str | None]] = []
        for b in self._one.values():
            before = (b, b.current_version(), b.running_image())
            try:
                b.deploy(version, ticket_id=ticket_id, on_step=on_step, image=image)
            except BackendError as exc:
                undone = self._undo(done, on_step)
                raise BackendError(f"{exc}; {undone}") from None
            done.append(before)

    def _undo(self, done: list[tuple[OneHost, str | None, str | None]],
              on_step: StepCallback) -> str:
        if not done:
            return "no other host was changed"
        failed = []
        for b, version, ref in reversed(done):
            try:
                b.rollback(version, on_step, image=ref)
            except BackendError as exc:
                failed.append(str(exc))
        names = ", ".join(b.engine for b, _, _ in done)
        if failed:
            return f"putting back {names} failed: {'; '.join(failed)}"
        return f"{names} put back"

    def rollback(self, to_version: str | None, on_step: StepCallback, *,
                 image: str | None = None) -> None:
        """Every host back to `to_version` (with "mixed: h1 v1, h2 v0", each to its own, by
        tag); a host already running it (those bytes) is left alone. The hosts are all tried;
        BackendError names those that failed."""
        wanted = self._wanted(to_version)
        failed = []
        for engine, b in reversed(self._one.items()):
            version, pin = wanted[engine], image if wanted[engine] == to_version else None
            try:
                if b.current_version() == version and (pin is None or
                                                       b.running_image() == pin):
                    on_step(f"{engine}: {version or 'nothing'} runs already")
                    continue
                b.rollback(version, on_step, image=pin)
            except BackendError as exc:
                failed.append(str(exc))
        if failed:
            raise BackendError("; ".join(failed))

    def _wanted(self, version: str | None) -> dict[str, str | None]:
        each = per_host(version)
        if each is not None and set(each) != set(self._one):
            raise BackendError(f"{version} does not name the configured hosts "
                               f"({', '.join(self._one)}): put each back by hand")
        return each if each is not None else {h: version for h in self._one}

    def finalize(self, on_step: StepCallback) -> None:
        failed = []
        for b in self._one.values():
            try:
                b.finalize(on_step)
            except BackendError as exc:
                failed.append(str(exc))
        if failed:
            raise BackendError("; ".join(failed))

    def status(self) -> BackendStatus:
        states = {h: b.status() for h, b in self._one.items()}
        detail = "; ".join(f"{h}: {s.detail}" for h, s in states.items())
        empty = [h for h, s in states.items() if not s.running and s.version is None]
        if empty and len(empty) < len(states):
            # The infrastructure check then blocks every deploy: say how a host is added.
            detail += (f"; nothing runs on {', '.join(empty)}: to add a host, deploy the running "
                       "version with hosts: naming only it, then list it with the others "
                       "(README: Several Docker hosts, Adding a host)")
        return BackendStatus(
            running=all(s.running for s in states.values()),
            version=agreed({h: s.version for h, s in states.items()}),
            detail=detail,
            failing="; ".join(f"{h}: {s.failing}" for h, s in states.items() if s.failing),
            final=any(s.final and s.failing for s in states.values()))

    def logs(self, since: datetime) -> str:
        return "".join(f"== {h} ==\n{b.logs(since)}" for h, b in self._one.items())

    def usage(self) -> Usage | None:
        """ResourceUsage: the busiest host's CPU and the largest memory (the watch window's
        limits are per container)."""
        each = [u for u in (b.usage() for b in self._one.values()) if u is not None]
        if not each:
            return None
        return Usage(cpu_percent=max(u.cpu_percent for u in each),
                     memory_bytes=max(u.memory_bytes for u in each))

    def plan(self, version: str) -> list[str]:
        steps = [f"host by host, {self._batch} at a time, each batch verified before the next: "
                 + ", ".join(self._one)]
        for h, b in self._one.items():
            steps += [f"{h}: {s}" for s in b.plan(version)]
        return steps

    def rollback_steps(self, to_version: str | None) -> list[str]:
        try:
            wanted = self._wanted(to_version)
        except BackendError:  # hosts changed since: no command would be exact
            return []
        return [s for h, b in self._one.items() for s in b.rollback_steps(wanted[h])]


def build(service: str, environment: str, settings: Service,
          credentials: Mapping[str, str] | None = None) -> SeveralHostsBackend:
    """The backend for a Docker service with `hosts:`; `credentials` as in build_backend."""
    from backends.deploy.docker import DockerBackend

    opts = settings.backend
    backends: dict[str, DeployBackend] = {
        h.engine: DockerBackend(service, environment, settings_on(settings, h),
                                client_factory=client_for(h.engine, opts.timeout),
                                environ=credentials)
        for h in opts.hosts}
    return SeveralHostsBackend(opts.hosts, opts.batch, backends)
