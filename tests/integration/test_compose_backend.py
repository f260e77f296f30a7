"""The Compose v2 backend against the real engine, through the real Pipeline.

Each test has its own compose project (random name), port and state folder, and takes its
project down at the end. Images come from the session's demo_image repository (pull: never);
tests that pull use the session's private registry on 127.0.0.1.
"""

from __future__ import annotations

import os
import time

import pytest

from backends.deploy.compose import ComposeBackend
from bot.errors import BackendError


def test_v1_v2_then_unhealthy_v3_is_rolled_back_to_v2(compose_env, demo_image, tmp_path,
                                                      http_get):
    for tag, mode in (("v1", "healthy"), ("v2", "healthy"), ("v3", "unhealthy")):
        demo_image(tag, mode)
    bot = compose_env.bot(compose_env.config(demo_image.repository))

    d1 = bot.deploy("v1")
    assert d1.status.value == "succeeded", d1.failure
    assert http_get(f"{compose_env.base}/version").text.strip() == "v1"

    started = time.monotonic()
    d2 = bot.deploy("v2")
    took = time.monotonic() - started
    assert d2.status.value == "succeeded", d2.failure
    assert d2.previous_version == "v1" and d2.method == "Docker Compose"
    assert http_get(f"{compose_env.base}/version").text.strip() == "v2"
    print(f"\ncompose deploy v1 -> v2 through the pipeline (checks, up --wait, verify): {took:.1f} s")
    # compose output reached the reporter line by line
    assert any(s.startswith("compose: ") and "Recreate" in s for s in bot.reporter.steps)
    assert any(s.startswith("compose ps: ") and "running (healthy)" in s
               for s in bot.reporter.steps)
    assert "**Previous Version:** v1" in d2.record
    assert "### Deployment Method\nDocker Compose" in d2.record
    assert f"{compose_env.project}.v1.yml up -d --remove-orphans" in d2.record  # exact command

    started = time.monotonic()
    d3 = bot.deploy("v3", "v3 with the new cache")
    took = time.monotonic() - started
    print(f"bad v3 -> automatic rollback to v2: {took:.1f} s")
    assert d3.status.value == "rolled_back", d3.failure
    assert http_get(f"{compose_env.base}/version").text.strip() == "v2"
    assert http_get(f"{compose_env.base}/health").status_code == 200
    assert any("automatic rollback of web v3" in a for a in bot.reporter.alerts)
    # the record carries compose's ps state of the failed version
    assert "ROLLED BACK" in d3.record
    assert "- [ ] Health checks passing — FAILED" in d3.record
    assert "compose ps: " in d3.record and "(unhealthy), image " in d3.record
    assert f"{demo_image.repository}:v3" in d3.record
    assert d3.record in bot.comments(d3.ticket_id)
    backend = bot.pipeline.backend_for("web", "staging")
    state = backend.status()
    assert state.running and state.version == "v2" and "running (healthy)" in state.detail
    # logs since the deploy: the command answers (the demo service itself logs nothing)
    assert isinstance(backend.logs(d3.created_at), str)


def test_first_deploy_that_fails_health_is_taken_down(compose_env, demo_image, tmp_path):
    demo_image("v3", "unhealthy")
    bot = compose_env.bot(compose_env.config(demo_image.repository))
    d = bot.deploy("v3")
    assert d.status.value == "rolled_back", d.failure
    state = bot.pipeline.backend_for("web", "staging").status()
    assert not state.running and state.version is None
    assert "no containers of web" in state.detail


def test_missing_image_fails_before_the_switch_and_v2_keeps_serving(compose_env, demo_image,
                                                                    tmp_path, http_get):
    demo_image("v2")
    bot = compose_env.bot(compose_env.config(demo_image.repository))
    assert bot.deploy("v2").status.value == "succeeded"
    d = bot.deploy("v9-missing")
    assert d.status.value == "failed"
    assert "could not prepare v9-missing" in d.failure
    assert f"image {demo_image.repository}:v9-missing is not on this Docker host" in d.failure
    assert "v2 is still running, nothing changed" in d.failure
    assert http_get(f"{compose_env.base}/version").text.strip() == "v2"


def test_engine_down_is_a_clear_error_and_v2_keeps_serving(compose_env, demo_image, tmp_path,
                                                           http_get, monkeypatch):
    demo_image("v2")
    demo_image("v4")
    cfg = compose_env.config(demo_image.repository)
    bot = compose_env.bot(cfg)
    assert bot.deploy("v2").status.value == "succeeded"
    dead = {"DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock", "PATH": os.environ["PATH"]}
    backend = ComposeBackend("web", "staging", cfg.service("web", "staging"), environ=dead)
    seen: list[str] = []
    step = seen.append
    with pytest.raises(BackendError) as err:
        backend.prepare("v4", step)
    assert "the Docker engine is not reachable at unix://" in str(err.value)
    assert "start the engine or set DOCKER_HOST" in str(err.value)
    with pytest.raises(BackendError, match="engine is not reachable"):
        backend.status()
    assert http_get(f"{compose_env.base}/version").text.strip() == "v2"


def test_broken_compose_file_and_unknown_service_are_caught_before_the_switch(
        compose_env, demo_image, tmp_path, http_get):
    demo_image("v2")
    demo_image("v4")
    cfg = compose_env.config(demo_image.repository)
    bot = compose_env.bot(cfg)
    assert bot.deploy("v2").status.value == "succeeded"
    other = ComposeBackend("web", "staging", compose_env.config(
        demo_image.repository, backend={"services": ["api"]}).service("web", "staging"))
    with pytest.raises(BackendError, match="has no service api"):
        other.prepare("v4", lambda m: None)
    assert http_get(f"{compose_env.base}/version").text.strip() == "v2"


def test_dry_run_plan_renders_the_exact_commands(compose_env, demo_image, tmp_path):
    demo_image("v2")
    bot = compose_env.bot(compose_env.config(demo_image.repository))
    tid = bot.ready_ticket("dry")
    d = bot.pipeline.request_deploy(tid, requested_by="alice", target="web@v2", dry_run=True)
    d = bot.pipeline.run(d.id)
    assert d.status.value == "succeeded"
    text = bot.reporter.records[-1]
    assert "Dry run" in text
    assert f"-p {compose_env.project} -f {compose_env.file}" in text
    assert "up -d --remove-orphans --no-build --pull never --timeout 1 --wait" in text
    assert "ps -a --format json" in text
    # nothing ran
    assert bot.pipeline.backend_for("web", "staging").current_version() is None
