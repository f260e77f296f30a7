"""run: container -- the shared HAProxy container of a proxy `dir`, through the Docker SDK.

Host networking (it listens where `listen` says, and reaches the versions on 127.0.0.1), the dir
bind-mounted at the same path (the sockets and files are where deploybot looks for them).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Callable

import docker.errors

from bot.errors import BackendError
from bot.ports import StepCallback

from backends.deploy.docker import explain
from backends.proxy import haproxy_config as cfg

if TYPE_CHECKING:
    from backends.proxy.haproxy import HaproxyProxy

LABEL = "io.deploybot.proxy"
BUILD_HINT = ("docker pull haproxy:2.6, or build deploybot/haproxy:2.6 from the host's haproxy "
              "with scripts/build-proxy-image.sh and set proxy.image to it")


def haproxy_command(dir: str) -> list[str]:
    """Master-worker with the master CLI on dir/master.sock (deploy/haproxy's unit: the same)."""
    return ["haproxy", "-W", "-S", f"{dir}/master.sock,mode,600", "-f", f"{dir}/conf.d"]


class ProxyContainer:
    def __init__(self, proxy: "HaproxyProxy", docker_client: Callable[[], object] | None) -> None:
        if docker_client is None:
            raise BackendError("proxy run: container needs a Docker engine to run "
                               f"{proxy.settings.container_name} on")
        self.proxy = proxy
        self.name = proxy.settings.container_name
        self.image = proxy.settings.image
        try:
            self.client = docker_client()
        except Exception as exc:  # the SDK raises DockerException, requests' errors or OSError
            raise BackendError(f"Docker (for the proxy): {explain(exc)}") from None
        self._created = False

    def _get(self):
        try:
            return self.client.containers.get(self.name)
        except docker.errors.NotFound:
            return None
        except Exception as exc:
            raise BackendError(f"Docker: cannot inspect {self.name}: {explain(exc)}") from None

    def running(self) -> bool:
        container = self._get()
        return container is not None and container.status == "running"

    def start(self, on_step: StepCallback) -> None:
        """Create (when missing) and start it, then wait until its master answers; on failure
        HAProxy's own reason (from the container's log) is said and the new file put back."""
        container = self._get()
        try:
            if container is None:
                container = self._create()
                self._created = True
            on_step(f"proxy: starting container {self.name}")
            container.start()
        except BackendError:
            raise
        except Exception as exc:
            raise BackendError(f"cannot start the proxy container {self.name}: "
                               f"{explain(exc)}") from None
        self._wait_started(container)

    def _create(self):
        d = str(self.proxy.dir)
        try:
            return self.client.containers.create(
                self.image, haproxy_command(d), name=self.name, network_mode="host",
                volumes={d: {"bind": d, "mode": "rw"}},
                restart_policy={"Name": "unless-stopped"},
                stop_signal="SIGUSR1",  # soft stop: in-flight requests finish
                # deploybot's own user: the sockets (mode 600) and files it makes are its to use
                # (Docker Hub's haproxy image would otherwise run as its user `haproxy`).
                user=f"{os.getuid()}:{os.getgid()}",
                labels={LABEL: "true", f"{LABEL}.dir": d}, detach=True)
        except docker.errors.ImageNotFound:
            raise BackendError(f"the proxy image {self.image} is not on the Docker engine: "
                               f"{BUILD_HINT}") from None
        except Exception as exc:
            raise BackendError(f"cannot create the proxy container {self.name} from "
                               f"{self.image}: {explain(exc)}") from None

    def _wait_started(self, container) -> None:
        proxy = self.proxy
        limit = max(15.0, proxy.settings.timeout)
        deadline = proxy._monotonic() + limit
        while True:
            try:
                container.reload()
                state = container.attrs.get("State", {})
            except Exception as exc:
                raise BackendError(f"Docker: cannot inspect {self.name}: {explain(exc)}") from None
            if state.get("Status") in ("exited", "dead") or state.get("Restarting"):
                self._failed(container)
            try:
                # A worker exists only once the configuration loaded and the ports are bound;
                # the master answers a moment before that, also when the bind then fails.
                if cfg.parse_proc(proxy.master.call("show proc")).workers:
                    return
            except (BackendError, cfg.ProxyAnswerError):
                pass
            if proxy._monotonic() >= deadline:
                self._failed(container, f"its master did not answer on {proxy.master.path} "
                                        f"within {limit:g} s")
            proxy._sleep(0.1)

    def _failed(self, container, why: str = "") -> None:
        reasons = self.alerts(container)
        if self._created:
            try:
                container.remove(force=True)
            except Exception:
                pass
        detail = "; ".join(reasons) or why or f"see docker logs {self.name}"
        raise BackendError(f"the proxy container {self.name} did not start: {detail}"
                           + ("" if self._created else f" (docker logs {self.name})"))

    def alerts(self, container=None) -> list[str]:
        """HAProxy's [ALERT] lines of the last start or reload, from the container's log."""
        try:
            container = container or self._get()
            if container is None:
                return []
            log = container.logs(tail=40).decode(errors="replace")
        except Exception:
            return []
        return cfg.alerts(log)
