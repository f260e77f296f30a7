"""Compose backend: the bytes deployed are recorded, and rollbacks pin them in the override file
(`image: repo@sha256:…`, or the image id for images never pushed), whatever the tag names by
then. Real engine, Compose v2, registry on 127.0.0.1, real Pipeline.
"""

from __future__ import annotations

import uuid

import pytest
import yaml

from backends.deploy.compose import find_compose, run_streaming
from bot.models import DeploymentStatus
from tests.integration.pins_harness import (
    PinBot, build, build_and_push, delete_from_registry, remove_local)


@pytest.fixture
def compose_service(docker_client, base_image, free_port, tmp_path):
    port = free_port()
    project = f"dbt-cpin-{uuid.uuid4().hex[:8]}"
    file = tmp_path / "compose.yml"
    file.write_text(yaml.safe_dump({"services": {"web": {
        "image": "deploybot/busybox:latest",  # deploybot's override sets the real one
        "ports": [f"127.0.0.1:{port}:8080"], "stop_grace_period": "1s"}}}))
    base = f"http://127.0.0.1:{port}"

    def make(image: str, pull: str = "missing") -> PinBot:
        bot = PinBot({"web": {
            "image": image,
            "backend": {"kind": "compose", "file": str(file), "project": project, "pull": pull,
                        "timeout": 60, "stop_timeout": 1},
            "health": {"url": f"{base}/health"},
            "smoke": [{"url": f"{base}/api/ping", "contains": "pong"}],
            "verify": {"timeout": 10, "interval": 0.5}}}, tmp_path)
        bot.base, bot.project = base, project
        bot.override = lambda version: yaml.safe_load(
            (tmp_path / ".deploybot" / f"{project}.{version}.yml").read_text())
        return bot

    yield make
    run_streaming([*find_compose().argv, "-p", project, "-f", str(file), "down",
                   "--remove-orphans", "--timeout", "1"], timeout=60)


@pytest.fixture
def repo(registry):
    return f"{registry}/cpins-{uuid.uuid4().hex[:8]}"


def served(http_get, bot) -> str:
    return http_get(f"{bot.base}/version").text.strip()


def running_id(docker_client, bot) -> str:
    [c] = docker_client.containers.list(filters={"label": f"com.docker.compose.project={bot.project}"})
    return c.attrs["Image"]


def test_compose_records_digests_and_the_automatic_rollback_restores_the_old_bytes(
        compose_service, docker_client, repo, http_get):
    v1 = build_and_push(docker_client, f"{repo}:v1", "v1-first")
    v2 = build_and_push(docker_client, f"{repo}:v2", "v2-first")
    build(docker_client, f"{repo}:v3", "v3", mode="unhealthy")
    bot = compose_service(repo)
    assert bot.backend().running_image() is None

    d1 = bot.deploy("v1")
    assert d1.status is DeploymentStatus.SUCCEEDED, d1.failure
    assert (d1.previous_image_ref, d1.image_ref) == ("", v1.digest_ref)
    d2 = bot.deploy("v2")
    assert d2.status is DeploymentStatus.SUCCEEDED, d2.failure
    assert (d2.previous_image_ref, d2.image_ref) == (v1.digest_ref, v2.digest_ref)
    assert f"Bytes deployed: {repo}:v2 = {v2.digest_ref} (before: {v1.digest_ref})" in d2.record
    # the by-hand rollback command's override file pins v1's bytes
    assert f"{bot.project}.v1.yml up -d" in d2.record
    assert bot.override("v1")["services"]["web"]["image"] == v1.digest_ref

    v2b = build_and_push(docker_client, f"{repo}:v2", "v2-repushed")  # the tag moves on
    assert docker_client.images.get(f"{repo}:v2").id == v2b.id
    d3 = bot.deploy("v3")
    assert d3.status is DeploymentStatus.ROLLED_BACK, d3.failure
    assert d3.previous_image_ref == v2.digest_ref
    assert served(http_get, bot) == "v2-first"  # not "v2-repushed"
    assert running_id(docker_client, bot) == v2.id
    assert bot.override("v2")["services"]["web"]["image"] == v2.digest_ref
    assert bot.backend().current_version() == "v2"


def test_compose_manual_rollback_after_the_tag_was_pushed_again_runs_the_old_bytes(
        compose_service, docker_client, repo, http_get):
    v1 = build_and_push(docker_client, f"{repo}:v1", "v1-first")
    build_and_push(docker_client, f"{repo}:v2", "v2-first")
    bot = compose_service(repo)
    assert bot.deploy("v1").status is DeploymentStatus.SUCCEEDED
    assert bot.deploy("v2").status is DeploymentStatus.SUCCEEDED
    build_and_push(docker_client, f"{repo}:v1", "v1-repushed")
    remove_local(docker_client, v1.id)  # only the registry has the old bytes now

    back = bot.rollback("v1")
    assert back.status is DeploymentStatus.SUCCEEDED, back.failure
    assert served(http_get, bot) == "v1-first"
    assert back.image_ref == v1.digest_ref and running_id(docker_client, bot) == v1.id
    assert f"pulling the bytes v1 ran as: {v1.digest_ref}" in bot.steps()
    assert any("(pinned to " + v1.digest_ref + ")" in s for s in bot.steps())
    assert bot.backend().current_version() == "v1"


def test_compose_rollback_to_bytes_that_are_gone_fails_at_prepare_and_changes_nothing(
        compose_service, docker_client, repo, registry, http_get):
    v1 = build_and_push(docker_client, f"{repo}:v1", "v1-first")
    build_and_push(docker_client, f"{repo}:v2", "v2-first")
    bot = compose_service(repo)
    assert bot.deploy("v1").status is DeploymentStatus.SUCCEEDED
    assert bot.deploy("v2").status is DeploymentStatus.SUCCEEDED
    before = docker_client.containers.list(
        filters={"label": f"com.docker.compose.project={bot.project}"})[0].id
    build_and_push(docker_client, f"{repo}:v1", "v1-repushed")
    delete_from_registry(registry, v1)
    remove_local(docker_client, v1.id)

    back = bot.rollback("v1")
    assert back.status is DeploymentStatus.FAILED
    assert "could not prepare v1: the bytes of v1 are gone" in back.failure
    assert "v2 is still running, nothing changed" in back.failure
    assert docker_client.containers.list(
        filters={"label": f"com.docker.compose.project={bot.project}"})[0].id == before
    assert served(http_get, bot) == "v2-first"


def test_compose_pins_images_never_pushed_by_their_image_id(compose_service, docker_client,
                                                           http_get):
    repo = f"dbt-cpins-local-{uuid.uuid4().hex[:8]}"
    v1 = build(docker_client, f"{repo}:v1", "v1-first")
    build(docker_client, f"{repo}:v2", "v2-first")
    bot = compose_service(repo, pull="never")
    try:
        d1 = bot.deploy("v1")
        assert d1.status is DeploymentStatus.SUCCEEDED, d1.failure
        assert d1.image_ref == v1.id
        assert bot.deploy("v2").status is DeploymentStatus.SUCCEEDED
        v1b = build(docker_client, f"{repo}:v1", "v1-rebuilt")  # the tag moves, v1 dangles
        back = bot.rollback("v1")
        assert back.status is DeploymentStatus.SUCCEEDED, back.failure
        assert served(http_get, bot) == "v1-first" and back.image_ref == v1.id != v1b.id
        # compose takes the image id as the service's image as it is
        assert bot.override("v1")["services"]["web"]["image"] == v1.id

        assert bot.deploy("v2").status is DeploymentStatus.SUCCEEDED
        remove_local(docker_client, v1.id)
        gone = bot.rollback("v1")
        assert gone.status is DeploymentStatus.FAILED
        assert f"the bytes of v1 are gone: image {v1.id} is no longer on the Docker host of " \
               f"project {bot.project}" in gone.failure
        assert served(http_get, bot) == "v2-first"
    finally:
        for tag in ("v1", "v2"):
            try:
                docker_client.images.remove(f"{repo}:{tag}", force=True)
            except Exception:
                pass
