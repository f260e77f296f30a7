"""What the image-pin tests of every backend share: demo builds whose bytes differ under one tag,
pushes to the session's registry, and a real Pipeline (local tracker) to deploy and roll back.

A "re-pushed tag" is the demo built again with another VERSION build argument (so `/version`
answers differently and the image id differs), tagged and pushed under the same name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import docker
import httpx

from tests.conftest import DEMO_DIR
from fakes.core import RecordingReporter, ScriptedApprover
from fakes.people import PEOPLE


@dataclass
class Build:
    name: str  # repository:tag it was built (and maybe pushed) as
    id: str  # the engine's image id, sha256:…
    digest_ref: str = ""  # repository@sha256:… once pushed

    @property
    def digest(self) -> str:
        return self.digest_ref.partition("@")[2]


def build(client: docker.DockerClient, name: str, body: str, mode: str = "healthy") -> Build:
    """The demo image with /version answering `body`, tagged `name` (moves the tag)."""
    image, _ = client.images.build(path=str(DEMO_DIR), buildargs={"VERSION": body, "MODE": mode},
                                   tag=name, rm=True, forcerm=True)
    return Build(name, image.id)


def push(client: docker.DockerClient, b: Build) -> Build:
    """Push `b.name` to its registry; the digest the registry gave it."""
    repo, _, tag = b.name.rpartition(":")
    for chunk in client.images.push(repo, tag=tag, stream=True, decode=True):
        if "error" in chunk:
            raise AssertionError(f"push of {b.name} failed: {chunk['error']}")
    image = client.images.get(b.id)
    refs = [d for d in image.attrs.get("RepoDigests") or [] if d.startswith(repo + "@")]
    assert refs, f"{b.name} has no repository digest after the push: {image.attrs.get('RepoDigests')}"
    b.digest_ref = refs[0]
    return b


def build_and_push(client, name: str, body: str, mode: str = "healthy") -> Build:
    return push(client, build(client, name, body, mode))


def delete_from_registry(registry: str, b: Build) -> None:
    """Make the registry forget `b`'s manifest (its storage has `delete: enabled`)."""
    repo = b.digest_ref.partition("@")[0].partition("/")[2]
    answer = httpx.delete(f"http://{registry}/v2/{repo}/manifests/{b.digest}", timeout=10)
    assert answer.status_code == 202, answer.text
    gone = httpx.head(f"http://{registry}/v2/{repo}/manifests/{b.digest}", timeout=10, headers={
        "Accept": "application/vnd.docker.distribution.manifest.v2+json"})
    assert gone.status_code == 404


def remove_local(client: docker.DockerClient, image_id: str) -> None:
    """Remove an image from the engine by id, whatever names it has."""
    client.images.remove(image_id, force=True)
    try:
        client.images.get(image_id)
    except docker.errors.ImageNotFound:
        return
    raise AssertionError(f"{image_id} is still on the engine")


class PinBot:
    """A real Pipeline (handlers.wiring.build_pipeline) with the local tracker in `folder`."""

    def __init__(self, services: dict, folder: Path, backend_for=None, probe=None, clock=None,
                 environ=None):
        from backends.trackers.local import LocalTracker
        from bot import config as config_mod
        from bot.store import Store
        from handlers.wiring import build_pipeline

        self.config = config_mod.parse({
            "people": PEOPLE, "tracker": {"kind": "local"}, "environments": {"staging": {}},
            "services": services}, "pins-test")
        self.store = Store(folder / "deploybot.db")
        self.tracker = LocalTracker(self.store)
        self.reporter = RecordingReporter()
        self.pipeline = build_pipeline(self.config, self.store, reporter=self.reporter,
                                       approver=ScriptedApprover(), tracker=self.tracker,
                                       backend_for=backend_for, probe=probe, clock=clock,
                                       environ=environ)

    def deploy(self, version: str, service: str = "web"):
        tid = self.tracker.create_ticket(f"release {version}", status="Ready for Production")
        self.tracker.add_comment(tid, "CQ approved", author="bob")
        self.tracker.add_comment(tid, "QA PASS", author="carol")
        d = self.pipeline.request_deploy(tid, requested_by="alice", target=f"{service}@{version}",
                                         environment="staging")
        return self.pipeline.run(d.id)

    def rollback(self, to_version: str | None = None, service: str = "web"):
        d = self.pipeline.request_rollback(requested_by="alice", service=service,
                                           environment="staging", to_version=to_version)
        return self.pipeline.run(d.id)

    def steps(self) -> list[str]:
        return [m for kind, m in self.reporter.events if kind == "step"]

    def backend(self, service: str = "web"):
        return self.pipeline.backend_for(service, "staging")
