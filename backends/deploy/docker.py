"""Direct container deployments through the Docker SDK; the previous container is kept for rollback."""

from __future__ import annotations

import contextvars
import os
import shlex
from datetime import datetime
from typing import Any, Callable, Mapping

import docker
import docker.errors
import requests.exceptions

from bot.clock import Clock, SystemClock
from bot.envfile import read_env_file
from bot.config import DockerBackendSettings, Service
from bot.errors import BackendError, InputError
from bot.models import BackendStatus
from bot.ports import StepCallback, Usage

from backends.deploy import pins
from backends.deploy.direct_health import DirectHealth
from backends.deploy.docker_staged import NEXT_SUFFIX, StagedContainers

KEPT_SUFFIX = "--previous"
LABEL = "io.deploybot"
# The engine the calls in this context go to, when it is not DOCKER_HOST (a service on several
# hosts: backends/deploy/several_hosts.py), so "not reachable at" names the right one.
ENGINE: contextvars.ContextVar[str | None] = contextvars.ContextVar("docker_engine", default=None)


def explain(exc: Exception, docker_host: str | None = None) -> str:
    """A Docker SDK error as a sentence a person can act on (shared by the Docker adapters)."""
    text = str(exc)
    where = (docker_host or ENGINE.get() or os.environ.get("DOCKER_HOST")
             or "unix:///var/run/docker.sock")
    # An engine of `hosts:` does not come from DOCKER_HOST: name where it does come from.
    source = "the service's backend.hosts" if ENGINE.get() and not docker_host else "DOCKER_HOST"
    unreachable = (f"the Docker engine is not reachable at {where} "
                   f"(is it running? is {source} right?)")
    if isinstance(exc, docker.errors.DockerException) and "paramiko" in text:
        return ("an ssh:// engine needs the ssh extra: pip install 'deploybot[ssh]' "
                "(and an ssh client on PATH)")
    if isinstance(exc, docker.errors.DockerException) and "fetching server API version" in text:
        # docker.from_env() asks the engine its API version first and wraps the socket error
        return unreachable
    if isinstance(exc, docker.errors.APIError):
        return str(exc.explanation or exc)
    if isinstance(exc, (requests.exceptions.ConnectionError, FileNotFoundError)):
        return unreachable
    if isinstance(exc, requests.exceptions.Timeout):
        return "the Docker engine did not answer in time"
    return text


def _build_proxy(settings, key, docker_client):
    from backends.proxy import build_proxy

    return build_proxy(settings, key, docker_client=docker_client)


def _port_bindings(ports: dict[str, str]) -> dict[str, Any]:
    """{"8080": "127.0.0.1:18080"} -> {"8080/tcp": ("127.0.0.1", 18080)} as the SDK wants."""
    out: dict[str, Any] = {}
    for container_port, host in ports.items():
        key = container_port if "/" in container_port else f"{container_port}/tcp"
        ip, _, port = str(host).rpartition(":")
        out[key] = (ip, int(port)) if ip else int(port)
    return out


class DockerBackend(StagedContainers, pins.SeenBytes):
    """With `proxy:` set, also StagedDeploy (backends/deploy/docker_staged.py): NAME is then
    always what the proxy serves."""

    method = "Direct Container"

    def __init__(self, service: str, environment: str, settings: Service,
                 client_factory: Callable[..., docker.DockerClient] | None = None, *,
                 proxy_factory: Callable[..., Any] | None = None, clock: Clock | None = None,
                 http_status: Callable[[str, float], int | None] | None = None,
                 environ: Mapping[str, str] | None = None) -> None:
        """`environ`: where http_auth's token variable is read (None: this process's)."""
        assert isinstance(settings.backend, DockerBackendSettings)
        self.service = service
        self.environment = environment
        self.image = settings.image
        self.opts: DockerBackendSettings = settings.backend
        self.name = self.opts.container_name or f"{service}-{environment}"
        self.kept_name = self.name + KEPT_SUFFIX
        self.next_name = self.name + NEXT_SUFFIX
        self.health = settings.health
        self.verify = settings.verify
        self.clock = clock or SystemClock()
        self._proxy = None
        self._proxy_factory = proxy_factory or _build_proxy
        self._direct_health = DirectHealth(settings, environ)
        self._http_status = http_status or self._direct_health.status
        self._client_factory = client_factory or (lambda: docker.from_env(timeout=int(self.opts.timeout)))
        self._client: docker.DockerClient | None = None
        # version -> the immutable reference it last ran as here (from running_image), so the
        # by-hand rollback commands can name the bytes rather than the tag.
        self._seen: dict[str, str] = {}
        # behind a proxy: (version, image id, address) of the version a switch left warm
        self._warm: tuple[str | None, str | None, str] | None = None
        if self.opts.proxy is not None:  # the record says how traffic moved, not only what ran
            self.method = f"{DockerBackend.method} (blue/green behind HAProxy)"

    # -- plumbing -------------------------------------------------------------------------------

    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:
            try:
                self._client = self._client_factory()
                self._client.ping()
            except Exception as exc:
                self._client = None
                raise BackendError(f"Docker: {explain(exc)}") from None
        return self._client

    def _container(self, name: str):
        try:
            return self.client.containers.get(name)
        except docker.errors.NotFound:
            return None
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise BackendError(f"Docker: cannot inspect {name}: {explain(exc)}") from None

    def _ref(self, version: str) -> str:
        return f"{self.image}:{version}"

    @staticmethod
    def _version_of(container) -> str | None:
        labels = container.labels or {}
        if f"{LABEL}.version" in labels:
            return labels[f"{LABEL}.version"]
        tags = container.image.tags if container.image else []
        return tags[0].rsplit(":", 1)[-1] if tags else None

    # -- DeployBackend --------------------------------------------------------------------------

    def _served(self) -> str:
        """The name of the container that serves (behind the proxy: looked up by address)."""
        return self._served_name() if self.opts.proxy is not None else self.name

    def current_version(self) -> str | None:
        c = self._container(self._served())
        return self._version_of(c) if c else None

    def running_image(self) -> str | None:
        """The bytes of the container named NAME (whatever its state): its image's registry
        digest when one is known (`repo@sha256:…`), else the image id; None without one."""
        name = self._served()
        c = self._container(name)
        if c is None:
            return None
        image_id = (c.attrs or {}).get("Image") or ""
        try:
            ref = pins.image_ref_of(self.client, image_id, self.image)
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise BackendError(f"Docker: cannot inspect the image of {name}: "
                               f"{explain(exc)}") from None
        version = self._version_of(c)
        if version:
            self._seen[version] = ref
        return ref

    def prepare(self, version: str, on_step: StepCallback, *, image: str | None = None) -> None:
        if image:
            pins.ensure_local(self.client, image, version, pull=self.opts.pull, on_step=on_step)
            return
        ref = self._ref(version)
        try:
            present = True
            try:
                self.client.images.get(ref)
            except docker.errors.ImageNotFound:
                present = False
            if self.opts.pull == "never" or (self.opts.pull == "missing" and present):
                if not present:
                    raise BackendError(f"image {ref} is not on this Docker host (pull: never)")
                on_step(f"image {ref} is present")
                return
            on_step(f"pulling {ref}")
            repo, tag = ref.rsplit(":", 1)
            self.client.images.pull(repo, tag=tag)
            on_step(f"pulled {ref}")
        except BackendError:
            raise
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise BackendError(f"cannot pull {ref}: {explain(exc)}") from None

    def _run_kwargs(self, version: str, ticket_id: str) -> dict[str, Any]:
        policy: dict[str, Any] = {"Name": self.opts.restart_policy}
        if self.opts.restart_policy == "on-failure":
            policy["MaximumRetryCount"] = 5
        kwargs: dict[str, Any] = {
            "name": self.name,
            "detach": True,
            "labels": {f"{LABEL}.service": self.service, f"{LABEL}.environment": self.environment,
                       f"{LABEL}.version": version, f"{LABEL}.ticket": ticket_id,
                       f"{LABEL}.managed": "true"},
            "restart_policy": policy,
            "ports": _port_bindings(self.opts.ports),
            "stop_signal": "SIGTERM",
        }
        if self.opts.env_file:
            try:
                kwargs["environment"] = read_env_file(self.opts.env_file)
            except OSError as exc:
                raise BackendError(f"cannot read env file {self.opts.env_file}: {exc.strerror}") from None
            except InputError as exc:  # not a regular file, a line without a name
                raise BackendError(exc.message, hint=exc.hint) from None
        if self.opts.network:
            kwargs["network"] = self.opts.network
        if self.opts.command:
            kwargs["command"] = self.opts.command
        if self.opts.healthcheck:
            kwargs["healthcheck"] = {"test": ["CMD", *self.opts.healthcheck],
                                     "interval": 1_000_000_000, "timeout": 2_000_000_000,
                                     "retries": 3, "start_period": 1_000_000_000}
        return kwargs

    def _start_new(self, version: str, ticket_id: str, on_step: StepCallback,
                   image: str | None = None) -> None:
        ref = image or self._ref(version)
        on_step(f"starting {self.name} from {ref}" + (f" ({version})" if image else ""))
        try:
            container = self.client.containers.create(ref, **self._run_kwargs(version, ticket_id))
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise BackendError(f"cannot create {self.name} from {ref}: {explain(exc)}") from None
        try:
            container.start()
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            self._remove(container)
            raise BackendError(f"cannot start {self.name} from {ref}: {explain(exc)}") from None
        on_step(f"{self.name} started ({container.short_id})")

    def _remove(self, container) -> None:
        try:
            container.remove(force=True)
        except docker.errors.NotFound:
            pass
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise BackendError(f"cannot remove {container.name}: {explain(exc)}") from None

    def deploy(self, version: str, *, ticket_id: str, on_step: StepCallback,
               image: str | None = None) -> None:
        if self.opts.proxy is not None:
            return self._staged_deploy(version, ticket_id, on_step, image)
        stale = self._container(self.kept_name)
        if stale:
            on_step(f"removing {self.kept_name} left from an earlier deployment")
            self._remove(stale)
        old = self._container(self.name)
        old_version = self._version_of(old) if old else None
        if old:
            on_step(f"stopping {self.name} ({old_version}); keeping it as {self.kept_name}")
            try:
                old.stop(timeout=self.opts.stop_timeout)
                old.rename(self.kept_name)
            except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
                self._restore(old, on_step)
                raise BackendError(f"cannot stop {self.name}: {explain(exc)}; "
                                   f"{old_version} restarted") from None
        try:
            self._start_new(version, ticket_id, on_step, image=image)
        except BackendError as exc:
            if old:
                self._restore(old, on_step)
                raise BackendError(f"{exc}; {old_version} restored") from None
            raise

    def _restore(self, old, on_step: StepCallback) -> None:
        """Put the kept container back under its name and start it: the fast path back."""
        try:
            old.reload()
            if old.name != self.name:
                current = self._container(self.name)
                if current:
                    self._remove(current)
                old.rename(self.name)
            old.start()
            on_step(f"{self.name} ({self._version_of(old)}) running again")
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise BackendError(f"cannot restart the previous {self.name}: {explain(exc)}") from None

    def _runs(self, container, image: str) -> bool:
        """Does `container` run the bytes `image` (an image id or a repository digest)?"""
        image_id = (container.attrs or {}).get("Image")
        if pins.is_image_id(image):
            return image_id == image
        try:
            return self.client.images.get(image).id == image_id
        except docker.errors.ImageNotFound:
            return False
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise BackendError(f"Docker: cannot inspect {image}: {explain(exc)}") from None

    def rollback(self, to_version: str | None, on_step: StepCallback, *,
                 image: str | None = None) -> None:
        if self.opts.proxy is not None:
            return self._staged_rollback(to_version, on_step, image)
        kept = self._container(self.kept_name)
        current = self._container(self.name)
        if to_version is None:
            if current:
                on_step(f"removing {self.name} (nothing ran before it)")
                self._remove(current)
            return
        if kept and self._version_of(kept) == to_version:
            if image is None or self._runs(kept, image):
                if current:
                    on_step(f"removing {self.name} ({self._version_of(current)})")
                    self._remove(current)
                on_step(f"restarting the kept {to_version} container"
                        + (f" (same bytes: {image})" if image else ""))
                self._restore(kept, on_step)
                return
            on_step(f"the kept {self.kept_name} runs {(kept.attrs or {}).get('Image')}, not the "
                    f"recorded bytes of {to_version} ({image}); starting {to_version} from {image}")
        # No kept container of that version (verification had passed, or it is not the bytes
        # that ran): run the recorded bytes when known, else the version's tag.
        self.prepare(to_version, on_step, image=image)
        if current:
            on_step(f"removing {self.name} ({self._version_of(current)})")
            self._remove(current)
        if kept:
            self._remove(kept)
        self._start_new(to_version, ticket_id="rollback", on_step=on_step, image=image)

    def finalize(self, on_step: StepCallback) -> None:
        if self.opts.proxy is not None:
            return self._staged_finalize(on_step)
        kept = self._container(self.kept_name)
        if kept:
            self._remove(kept)
            on_step(f"removed the kept previous container {self.kept_name}")

    def status(self) -> BackendStatus:
        return self._status_of(self._served())

    def _status_of(self, name: str) -> BackendStatus:
        c = self._container(name)
        if c is None:
            return BackendStatus(running=False, version=None, detail=f"no container {name}")
        state = c.attrs.get("State", {})
        health = (state.get("Health") or {}).get("Status")
        running = state.get("Running", False) and not state.get("Restarting", False)
        detail = state.get("Status", "unknown")
        if state.get("Restarting"):
            detail = f"restarting (exit code {state.get('ExitCode')})"
        elif not running and state.get("ExitCode"):
            detail += f" (exit code {state.get('ExitCode')})"
        if health:
            detail += f", health {health}"
        # Exited, crash-restarting or unhealthy is up and failing; "created"/"starting" is not yet.
        failing = (state.get("Restarting") or state.get("Status") in ("exited", "dead")
                   or health == "unhealthy")
        return BackendStatus(running=running and health != "unhealthy",
                             version=self._version_of(c), detail=detail,
                             failing=f"container {detail}" if failing else "")

    def logs(self, since: datetime) -> str:
        c = self._container(self._served())
        if c is None:
            return ""
        try:
            return c.logs(since=since, timestamps=True).decode("utf-8", "replace")
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise BackendError(f"cannot read logs of {c.name}: {explain(exc)}") from None

    def usage(self) -> Usage | None:
        """ResourceUsage: CPU (% of one core) and memory of the running container, `docker stats`."""
        c = self._container(self._served())
        if c is None:
            return None
        try:
            stats = c.stats(stream=False)  # about 1 s: the engine samples CPU twice
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise BackendError(f"cannot read stats of {c.name}: {explain(exc)}") from None
        return usage_from_stats(stats)

    def _run_command(self, version: str, image: str | None = None, *, name: str | None = None,
                     extra: tuple[str, ...] = ()) -> str:
        args = ["docker", "run", "-d", "--name", name or self.name,
                "--restart", self.opts.restart_policy, *extra]
        if image:  # the bytes, not the tag: the label keeps `version` what deploybot reads
            args += ["--label", f"{LABEL}.version={version}"]
        for container_port, host in self.opts.ports.items():
            args += ["-p", f"{host}:{container_port}"]
        if self.opts.env_file:
            args += ["--env-file", self.opts.env_file]
        if self.opts.network:
            args += ["--network", self.opts.network]
        args.append(image or self._ref(version))
        args += self.opts.command or []
        return shlex.join(args)

    def plan(self, version: str) -> list[str]:
        if self.opts.proxy is not None:
            return self._staged_plan(version)
        ref = self._ref(version)
        steps = [f"make sure {ref} is on the Docker host (pull: {self.opts.pull})"]
        current = self._container(self.name)
        if current:
            steps.append(f"stop {self.name} ({self._version_of(current)}, stop timeout "
                         f"{self.opts.stop_timeout} s) and keep it as {self.kept_name}")
        steps.append(f"`{self._run_command(version)}`")
        return steps

    def rollback_steps(self, to_version: str | None) -> list[str]:
        if self.opts.proxy is not None:
            return self._staged_rollback_steps(to_version)
        if to_version is None:
            return [f"docker rm -f {self.name}"]
        # `docker run` pulls a missing repository digest itself; an image id must be there.
        return [f"docker rm -f {self.name}",
                self._run_command(to_version, self._known_bytes(to_version))]


def usage_from_stats(stats: dict) -> Usage:
    """`docker stats`' arithmetic: CPU delta over system delta × CPUs; memory minus page cache."""
    cpu, pre = stats.get("cpu_stats") or {}, stats.get("precpu_stats") or {}
    cpu_delta = (cpu.get("cpu_usage", {}).get("total_usage", 0)
                 - pre.get("cpu_usage", {}).get("total_usage", 0))
    system_delta = cpu.get("system_cpu_usage", 0) - pre.get("system_cpu_usage", 0)
    cpus = cpu.get("online_cpus") or len(cpu.get("cpu_usage", {}).get("percpu_usage") or []) or 1
    percent = cpu_delta / system_delta * cpus * 100.0 if cpu_delta > 0 and system_delta > 0 else 0.0
    mem = stats.get("memory_stats") or {}
    detail = mem.get("stats") or {}
    cache = detail.get("inactive_file", detail.get("total_inactive_file", 0))
    return Usage(cpu_percent=percent, memory_bytes=max(0.0, float(mem.get("usage", 0) - cache)))
