"""Image build/tag/push against the real engine and the session's private registry, then deploys
of the pushed image by tag with the Docker and the Compose backends (pulling it back)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import docker.errors
import pytest

from backends.deploy.compose import ComposeBackend
from backends.deploy.docker import DockerBackend
from backends.deploy.images import DockerImageBuilder
from bot import config as config_mod
from bot.config import ImageBuild
from bot.errors import BackendError

DEMO_DIR = Path(__file__).resolve().parents[2] / "examples" / "demo"


@pytest.fixture
def pushed_repo(registry, docker_client):
    """A repository name in the session's registry; its local tags are removed afterwards."""
    repo = f"{registry}/dbt-demo-{uuid.uuid4().hex[:8]}"
    yield repo
    _forget_locally(docker_client, repo)


def _forget_locally(docker_client, repo: str) -> None:
    """Untag repo's tags only: the same image may carry other tests' tags (build cache)."""
    for image in docker_client.images.list(name=repo):
        for tag in image.tags:
            if tag.startswith(repo + ":"):
                try:
                    docker_client.images.remove(tag)
                except docker.errors.NotFound:
                    pass


def build_settings(version: str, **extra) -> ImageBuild:
    return ImageBuild(context=str(DEMO_DIR), build_args={"VERSION": version, "MODE": "healthy"},
                      timeout=120, **extra)


def test_build_tag_push_returns_the_registry_digest(pushed_repo, docker_client, base_image,
                                                    registry):
    steps: list[str] = []
    digest = DockerImageBuilder().build(pushed_repo, "v5", build_settings("v5"), steps.append)
    assert digest.startswith("sha256:") and len(digest) == 71
    assert any(s.startswith("build: Step 1/") for s in steps)  # build output streamed
    assert any(s.startswith("pushing ") and registry in s for s in steps)
    local = docker_client.images.get(f"{pushed_repo}:v5")
    assert f"{pushed_repo}:latest" in local.tags
    assert f"{pushed_repo}@{digest}" in local.attrs["RepoDigests"]
    # both tags are in the registry: a pull after forgetting them locally brings them back
    _forget_locally(docker_client, pushed_repo)
    assert docker_client.images.pull(pushed_repo, tag="v5").id == local.id
    assert docker_client.images.pull(pushed_repo, tag="latest").id == local.id


def test_credentials_come_from_the_environment_and_never_show(pushed_repo, base_image):
    secret = f"s3cret-{uuid.uuid4().hex}"
    settings = build_settings("v6", username_env="DBT_REG_USER", password_env="DBT_REG_PASS")
    steps: list[str] = []
    with pytest.raises(BackendError, match="DBT_REG_PASS not set"):
        DockerImageBuilder(environ={"DBT_REG_USER": "ci"}).build(pushed_repo, "v6", settings,
                                                                 steps.append)
    # the registry here has no auth: credentials are sent and accepted, and appear nowhere
    env = {"DBT_REG_USER": "ci", "DBT_REG_PASS": secret,
           **{k: v for k, v in os.environ.items() if k.startswith("DOCKER_")}}
    digest = DockerImageBuilder(environ=env).build(pushed_repo, "v6", settings, steps.append)
    assert digest.startswith("sha256:")
    assert not any(secret in s for s in steps)


def test_registry_unreachable_is_said_plainly(free_port, docker_client, base_image):
    repo = f"127.0.0.1:{free_port()}/dbt-nowhere-{uuid.uuid4().hex[:8]}"
    try:
        with pytest.raises(BackendError) as err:
            DockerImageBuilder().build(repo, "v1", build_settings("v1"), lambda m: None)
        text = str(err.value)
        assert f"the registry {repo.split('/')[0]} is unreachable" in text
        assert "check the registry is running" in text
    finally:
        _forget_locally(docker_client, repo)


def test_engine_down_is_said_plainly(tmp_path):
    builder = DockerImageBuilder(environ={"DOCKER_HOST": f"unix://{tmp_path}/none.sock"})
    with pytest.raises(BackendError, match="Docker engine is not reachable"):
        builder.build("127.0.0.1:5000/x", "v1", build_settings("v1"), lambda m: None)


def test_pushed_image_deploys_by_tag_with_the_docker_backend(pushed_repo, docker_client,
                                                             container_cleanup, free_port,
                                                             base_image, http_get, wait_for_http):
    DockerImageBuilder().build(pushed_repo, "v5", build_settings("v5"), lambda m: None)
    _forget_locally(docker_client, pushed_repo)
    port = free_port()
    name = f"dbt-pushed-{uuid.uuid4().hex[:6]}"
    container_cleanup(name)
    container_cleanup(name + "--previous")
    cfg = config_mod.parse({"environments": {"staging": {}}, "services": {"web": {
        "image": pushed_repo,
        "backend": {"kind": "docker", "container_name": name, "pull": "always",
                    "ports": {"8080": f"127.0.0.1:{port}"}, "stop_timeout": 1}}}})
    backend = DockerBackend("web", "staging", cfg.service("web", "staging"))
    steps: list[str] = []
    backend.prepare("v5", steps.append)
    assert f"pulled {pushed_repo}:v5" in steps
    backend.deploy("v5", ticket_id="DEMO-1", on_step=steps.append)
    wait_for_http(f"http://127.0.0.1:{port}/version")
    assert http_get(f"http://127.0.0.1:{port}/version").text.strip() == "v5"


def test_build_push_and_compose_deploy_through_the_pipeline(pushed_repo, compose_env,
                                                            docker_client, base_image, tmp_path,
                                                            http_get):
    """A service with `build:`: the pipeline builds, pushes, then compose pulls it by tag."""
    cfg = compose_env.config(pushed_repo, backend={"pull": "always"},
                      build={"context": str(DEMO_DIR), "build_args": {"VERSION": "v7"}})
    bot = compose_env.bot(cfg)
    d = bot.deploy("v7")
    assert d.status.value == "succeeded", d.failure
    assert d.image_digest and d.image_digest.startswith("sha256:")
    assert f"Image built from source: {pushed_repo}:v7 = {d.image_digest}" in d.record
    assert http_get(f"{compose_env.base}/version").text.strip() == "v7"
    assert any(s.startswith("compose: ") and "Pull" in s for s in bot.reporter.steps)


def test_compose_pulls_a_pushed_tag_and_a_missing_tag_fails_before_the_switch(
        pushed_repo, compose_env, docker_client, base_image, tmp_path, http_get):
    DockerImageBuilder().build(pushed_repo, "v5", build_settings("v5"), lambda m: None)
    _forget_locally(docker_client, pushed_repo)
    cfg = compose_env.config(pushed_repo, backend={"pull": "missing"})
    backend = ComposeBackend("web", "staging", cfg.service("web", "staging"))
    steps: list[str] = []
    backend.prepare("v5", steps.append)
    backend.deploy("v5", ticket_id="DEMO-2", on_step=steps.append)
    assert http_get(f"{compose_env.base}/version").text.strip() == "v5"
    with pytest.raises(BackendError) as err:
        backend.prepare("v404", steps.append)
    assert f"cannot pull {pushed_repo}:v404" in str(err.value)
    assert backend.current_version() == "v5"
    assert http_get(f"{compose_env.base}/version").text.strip() == "v5"


def test_registry_down_during_a_build_deploy_leaves_the_running_version(
        compose_env, demo_image, docker_client, free_port, base_image, tmp_path, http_get):
    demo_image("v2")
    bot = compose_env.bot(compose_env.config(demo_image.repository))
    assert bot.deploy("v2").status.value == "succeeded"
    dead_repo = f"127.0.0.1:{free_port()}/dbt-gone-{uuid.uuid4().hex[:6]}"
    cfg = compose_env.config(dead_repo,
                      build={"context": str(DEMO_DIR), "build_args": {"VERSION": "v8"}})
    bot2 = compose_env.bot(cfg)
    try:
        d = bot2.deploy("v8")
    finally:
        _forget_locally(docker_client, dead_repo)
    assert d.status.value == "failed"
    assert "is unreachable" in d.failure and "nothing changed" in d.failure
    assert http_get(f"{compose_env.base}/version").text.strip() == "v2"
