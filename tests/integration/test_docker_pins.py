"""Docker backend: the bytes deployed are recorded and rollbacks put those bytes back, whatever
the tag names by then. Real engine, real registry (127.0.0.1), real Pipeline.
"""

from __future__ import annotations

import uuid

import pytest

from bot.models import DeploymentStatus
from tests.integration.pins_harness import (
    PinBot, build, build_and_push, delete_from_registry, remove_local)


@pytest.fixture
def docker_service(docker_client, base_image, free_port, container_cleanup, tmp_path):
    """A config maker for a docker service `web` on a port of its own."""
    port = free_port()
    name = f"dbt-pin-{uuid.uuid4().hex[:6]}"
    container_cleanup(f"{name}-staging")
    container_cleanup(f"{name}-staging--previous")
    base = f"http://127.0.0.1:{port}"

    def make(image: str, pull: str = "missing") -> PinBot:
        bot = PinBot({"web": {
            "image": image,
            "backend": {"kind": "docker", "container_name": f"{name}-staging",
                        "ports": {"8080": f"127.0.0.1:{port}"}, "stop_timeout": 1,
                        "pull": pull, "restart_policy": "no"},
            "health": {"url": f"{base}/health"},
            "smoke": [{"url": f"{base}/api/ping", "contains": "pong"}],
            "verify": {"timeout": 8, "interval": 0.3}}}, tmp_path)
        bot.base, bot.container = base, f"{name}-staging"
        return bot

    return make


@pytest.fixture
def repo(registry):
    return f"{registry}/pins-{uuid.uuid4().hex[:8]}"


def served(http_get, bot) -> str:
    return http_get(f"{bot.base}/version").text.strip()


def test_docker_records_digests_and_the_automatic_rollback_restores_the_old_bytes(
        docker_service, docker_client, repo, http_get):
    v1 = build_and_push(docker_client, f"{repo}:v1", "v1-first")
    v2 = build_and_push(docker_client, f"{repo}:v2", "v2-first")
    build(docker_client, f"{repo}:v3", "v3", mode="unhealthy")
    bot = docker_service(repo)
    backend = bot.backend()
    assert backend.running_image() is None  # nothing runs: no error

    d1 = bot.deploy("v1")
    assert d1.status is DeploymentStatus.SUCCEEDED, d1.failure
    assert (d1.previous_image_ref, d1.image_ref) == ("", v1.digest_ref)
    d2 = bot.deploy("v2")
    assert d2.status is DeploymentStatus.SUCCEEDED, d2.failure
    assert (d2.previous_image_ref, d2.image_ref) == (v1.digest_ref, v2.digest_ref)
    assert f"Bytes deployed: {repo}:v2 = {v2.digest_ref} (before: {v1.digest_ref})" in d2.record
    # the by-hand rollback names v1's bytes, not its tag
    assert "--label io.deploybot.version=v1 -p 127.0.0.1:" in d2.record
    assert f":8080 {v1.digest_ref}`" in d2.record

    # v2 is pushed again with other bytes, and this host has pulled them under the tag
    v2b = build_and_push(docker_client, f"{repo}:v2", "v2-repushed")
    assert docker_client.images.get(f"{repo}:v2").id == v2b.id != v2.id
    d3 = bot.deploy("v3")
    assert d3.status is DeploymentStatus.ROLLED_BACK, d3.failure
    assert d3.previous_image_ref == v2.digest_ref
    assert served(http_get, bot) == "v2-first"  # the bytes that ran, not what v2 names now
    assert docker_client.containers.get(bot.container).attrs["Image"] == v2.id
    assert any(f"restarting the kept v2 container (same bytes: {v2.digest_ref})" in s
               for s in bot.steps())
    assert backend.current_version() == "v2"


def test_docker_rollback_without_a_kept_container_runs_the_recorded_bytes(
        docker_service, docker_client, repo, http_get):
    v1 = build_and_push(docker_client, f"{repo}:v1", "v1-first")
    build_and_push(docker_client, f"{repo}:v2", "v2-first")
    bot = docker_service(repo)
    backend = bot.backend()
    assert bot.deploy("v1").status is DeploymentStatus.SUCCEEDED
    steps: list[str] = []
    backend.prepare("v2", steps.append)
    backend.deploy("v2", ticket_id="T", on_step=steps.append)
    # the kept v1 container does not run v1's recorded bytes (someone replaced it): not used
    kept = docker_client.containers.get(bot.container + "--previous")
    kept.remove(force=True)
    other = build(docker_client, f"{repo}:v1-other", "v1-impostor")
    docker_client.containers.create(other.id, name=bot.container + "--previous",
                                    labels={"io.deploybot.version": "v1"})
    build_and_push(docker_client, f"{repo}:v1", "v1-repushed")  # and the tag moved on
    backend.rollback("v1", steps.append, image=v1.digest_ref)
    assert any("not the recorded bytes of v1" in s for s in steps)
    assert served(http_get, bot) == "v1-first"
    assert backend.running_image() == v1.digest_ref and backend.current_version() == "v1"

    # no kept container at all: the recorded bytes are run (pulled by digest when missing)
    backend.finalize(steps.append)
    backend.deploy("v2", ticket_id="T", on_step=steps.append)
    backend.finalize(steps.append)
    remove_local(docker_client, v1.id)
    steps.clear()
    backend.rollback("v1", steps.append, image=v1.digest_ref)
    assert f"pulling the bytes v1 ran as: {v1.digest_ref}" in steps
    assert served(http_get, bot) == "v1-first"


def test_docker_manual_rollback_after_the_tag_was_pushed_again_runs_the_old_bytes(
        docker_service, docker_client, repo, http_get):
    v1 = build_and_push(docker_client, f"{repo}:v1", "v1-first")
    build_and_push(docker_client, f"{repo}:v2", "v2-first")
    bot = docker_service(repo)
    assert bot.deploy("v1").status is DeploymentStatus.SUCCEEDED
    assert bot.deploy("v2").status is DeploymentStatus.SUCCEEDED
    v1b = build_and_push(docker_client, f"{repo}:v1", "v1-repushed")
    remove_local(docker_client, v1.id)  # only the registry has the old bytes now

    back = bot.rollback("v1")
    assert back.status is DeploymentStatus.SUCCEEDED, back.failure
    assert served(http_get, bot) == "v1-first"
    assert back.image_ref == v1.digest_ref != v1b.digest_ref
    assert f"pulling the bytes v1 ran as: {v1.digest_ref}" in bot.steps()
    assert bot.backend().current_version() == "v1"


def test_docker_manual_rollback_to_bytes_that_are_gone_fails_at_prepare_and_changes_nothing(
        docker_service, docker_client, repo, registry, http_get):
    v1 = build_and_push(docker_client, f"{repo}:v1", "v1-first")
    build_and_push(docker_client, f"{repo}:v2", "v2-first")
    bot = docker_service(repo)
    assert bot.deploy("v1").status is DeploymentStatus.SUCCEEDED
    assert bot.deploy("v2").status is DeploymentStatus.SUCCEEDED
    build_and_push(docker_client, f"{repo}:v1", "v1-repushed")
    delete_from_registry(registry, v1)
    remove_local(docker_client, v1.id)
    before = docker_client.containers.get(bot.container).id

    back = bot.rollback("v1")
    assert back.status is DeploymentStatus.FAILED
    assert "could not prepare v1: the bytes of v1 are gone" in back.failure
    assert v1.digest_ref in back.failure and "v2 is still running, nothing changed" in back.failure
    assert docker_client.containers.get(bot.container).id == before
    assert served(http_get, bot) == "v2-first"


def test_docker_local_images_are_pinned_by_image_id(docker_service, docker_client, tmp_path,
                                                    http_get):
    """Never pushed: the engine's image id is the record; gone means gone."""
    repo = f"dbt-pins-local-{uuid.uuid4().hex[:8]}"
    v1 = build(docker_client, f"{repo}:v1", "v1-first")
    build(docker_client, f"{repo}:v2", "v2-first")
    bot = docker_service(repo, pull="never")
    try:
        d1 = bot.deploy("v1")
        assert d1.status is DeploymentStatus.SUCCEEDED, d1.failure
        assert d1.image_ref == v1.id
        assert bot.deploy("v2").status is DeploymentStatus.SUCCEEDED
        v1b = build(docker_client, f"{repo}:v1", "v1-rebuilt")  # the tag moves, v1 dangles
        back = bot.rollback("v1")
        assert back.status is DeploymentStatus.SUCCEEDED, back.failure
        assert served(http_get, bot) == "v1-first" and back.image_ref == v1.id != v1b.id

        assert bot.deploy("v2").status is DeploymentStatus.SUCCEEDED
        remove_local(docker_client, v1.id)
        before = docker_client.containers.get(bot.container).id
        gone = bot.rollback("v1")
        assert gone.status is DeploymentStatus.FAILED
        assert f"the bytes of v1 are gone: image {v1.id} is no longer on this Docker host" \
            in gone.failure
        assert docker_client.containers.get(bot.container).id == before
        assert served(http_get, bot) == "v2-first"
    finally:
        for tag in ("v1", "v2"):
            try:
                docker_client.images.remove(f"{repo}:{tag}", force=True)
            except Exception:
                pass
