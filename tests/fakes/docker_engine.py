"""A small in-memory Docker engine behind the SDK calls DockerBackend makes (containers: get,
create, start, stop, rename, remove, reload; images: get, pull), for unit tests only: whatever
depends on a real engine's behaviour is tested against one (tests/integration)."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import docker.errors


class FakeContainer:
    def __init__(self, engine: "FakeEngine", name: str, image_id: str, labels: dict,
                 ports: dict) -> None:
        self.engine = engine
        self.id = f"{next(engine.ids):064x}"
        self.short_id = self.id[:12]
        self.name = name
        self.labels = dict(labels)
        self.ports_spec = dict(ports)  # {"8080/tcp": ("127.0.0.1", None) or ("127.0.0.1", 18080)}
        self.image_id = image_id
        self.running = False
        self.exit_code = 0
        self.starts = 0
        self.removed = False
        self.published: dict[str, list[dict]] = {}
        self.attrs: dict = {}
        self.reload()

    @property
    def image(self):
        return SimpleNamespace(tags=[t for t, i in self.engine.images.items() if i == self.image_id])

    def reload(self) -> None:
        if self.removed:
            raise docker.errors.NotFound(f"No such container: {self.name}")
        status = "running" if self.running else ("exited" if self.starts else "created")
        self.attrs = {"Id": self.id, "Name": "/" + self.name, "Image": self.image_id,
                      "State": {"Status": status, "Running": self.running, "Restarting": False,
                                "ExitCode": self.exit_code},
                      "NetworkSettings": {"Ports": dict(self.published) if self.running else {}}}

    def start(self) -> None:
        if self.running:
            return
        for key, (ip, port) in self.ports_spec.items():
            host_port = port or next(self.engine.free_ports)
            if any(host_port == p for p in self.engine.taken_ports()):
                raise docker.errors.APIError(f"port {host_port} is already allocated")
            self.published[key] = [{"HostIp": ip, "HostPort": str(host_port)}]
        self.running = True
        self.starts += 1
        self.engine.log.append(("start", self.name))
        self.reload()

    def stop(self, timeout: int = 10) -> None:
        self.running = False
        self.published = {}
        self.engine.log.append(("stop", self.name))
        self.reload()

    def rename(self, name: str) -> None:
        if name in self.engine.containers:
            raise docker.errors.APIError(f"Conflict: the name {name} is already in use")
        del self.engine.containers[self.name]
        self.engine.containers[name] = self
        self.engine.log.append(("rename", self.name, name))
        if self.engine.crash_after_rename == name:
            self.engine.crash_after_rename = None
            self.name = name
            raise KeyboardInterrupt("killed after the rename")  # stands in for a kill -9
        self.name = name

    def remove(self, force: bool = False) -> None:
        self.engine.containers.pop(self.name, None)
        self.removed = True
        self.running = False
        self.engine.log.append(("remove", self.name))

    def logs(self, since=None, timestamps=False) -> bytes:
        return f"logs of {self.name}\n".encode()


class FakeEngine:
    """`engine.client()` is what DockerBackend's client_factory returns."""

    def __init__(self) -> None:
        self.containers: dict[str, FakeContainer] = {}
        self.images: dict[str, str] = {}  # tag -> image id
        self.ids = itertools.count(1)
        self.free_ports = itertools.count(32768)
        self.log: list[tuple] = []
        self.crash_after_rename: str | None = None

    def add_image(self, ref: str) -> str:
        image_id = f"sha256:{len(self.images) + 1:064x}"
        self.images[ref] = image_id
        return image_id

    def taken_ports(self):
        for c in self.containers.values():
            if c.running:
                for bindings in c.published.values():
                    for b in bindings:
                        yield int(b["HostPort"])

    def run(self, name: str, ref: str, *, labels: dict | None = None,
            ports: dict | None = None) -> FakeContainer:
        """A container as an earlier deploybot (or a person) left it, running."""
        c = FakeContainer(self, name, self.images[ref], labels or {}, ports or {})
        self.containers[name] = c
        c.start()
        return c

    def client(self):
        engine = self

        class Containers:
            def get(self, name):
                if name not in engine.containers:
                    raise docker.errors.NotFound(f"No such container: {name}")
                c = engine.containers[name]
                c.reload()
                return c

            def create(self, ref, **kwargs):
                if ref not in engine.images and ref not in engine.images.values():
                    raise docker.errors.ImageNotFound(f"No such image: {ref}")
                name = kwargs["name"]
                if name in engine.containers:
                    raise docker.errors.APIError(f"Conflict: the name {name} is already in use")
                image_id = engine.images.get(ref, ref)
                c = FakeContainer(engine, name, image_id, kwargs.get("labels") or {},
                                  kwargs.get("ports") or {})
                engine.containers[name] = c
                engine.log.append(("create", name, ref))
                return c

        class Images:
            def get(self, ref):
                if ref in engine.images:
                    return SimpleNamespace(id=engine.images[ref], attrs={"RepoDigests": []})
                if ref in engine.images.values():
                    return SimpleNamespace(id=ref, attrs={"RepoDigests": []})
                raise docker.errors.ImageNotFound(f"No such image: {ref}")

            def pull(self, repo, tag=None):
                raise docker.errors.APIError("no registry in unit tests")

        return SimpleNamespace(containers=Containers(), images=Images(), ping=lambda: True)
