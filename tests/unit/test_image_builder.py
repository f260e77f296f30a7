"""The image builder against a fake Docker API client: streaming, digests, errors, secrets."""

from __future__ import annotations

import pytest

from backends.deploy.images import DockerImageBuilder, split_image
from bot.config import ImageBuild
from bot.errors import BackendError

DIGEST = "sha256:" + "ab" * 32


class FakeClient:
    def __init__(self, build=None, push=None, repo_digests=None):
        self.build_chunks = build if build is not None else [
            {"stream": "Step 1/2 : FROM base\n"}, {"stream": " ---> 123\nStep 2/2"},
            {"stream": " : RUN true\n"}, {"aux": {"ID": "sha256:" + "cd" * 32}},
            {"stream": "Successfully built cdcd\n"}]
        self.push_chunks = push if push is not None else [
            {"status": "Preparing", "id": "l1"}, {"status": "Pushing", "id": "l1"},
            {"status": "Pushed", "id": "l1"}, {"status": "v1: digest: ... size: 528"},
            {"aux": {"Tag": "v1", "Digest": DIGEST, "Size": 528}}]
        self.repo_digests = repo_digests or []
        self.calls: list[tuple] = []

    def ping(self):
        return True

    def build(self, **kwargs):
        self.calls.append(("build", kwargs))
        return iter(self.build_chunks)

    def tag(self, image, repository, tag):
        self.calls.append(("tag", image, repository, tag))

    def push(self, repository, tag, stream, decode, auth_config):
        self.calls.append(("push", repository, tag, auth_config))
        return iter(self.push_chunks)

    def inspect_image(self, ref):
        return {"Id": "sha256:" + "cd" * 32, "RepoDigests": self.repo_digests}

    def close(self):
        pass


def settings(tmp_path, **extra):
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    return ImageBuild(context=str(tmp_path), build_args={"VERSION": "v1"}, **extra)


def test_build_tag_push_streams_lines_and_returns_the_pushed_digest(tmp_path):
    client = FakeClient()
    steps: list[str] = []
    builder = DockerImageBuilder(environ={}, client_factory=lambda t: client)
    digest = builder.build("127.0.0.1:5000/web", "v1", settings(tmp_path), steps.append)
    assert digest == DIGEST
    assert "build: Step 1/2 : FROM base" in steps and "build: Step 2/2 : RUN true" in steps
    assert ("tag", "sha256:" + "cd" * 32, "127.0.0.1:5000/web", "latest") in client.calls
    pushes = [c for c in client.calls if c[0] == "push"]
    assert [c[2] for c in pushes] == ["v1", "latest"] and pushes[0][3] is None
    assert "push: l1: Pushed" in steps and not any("Pushing" in s for s in steps)
    build_call = client.calls[0][1]
    assert build_call["buildargs"] == {"VERSION": "v1"} and build_call["tag"] == "127.0.0.1:5000/web:v1"


def test_digest_falls_back_to_repo_digests(tmp_path):
    client = FakeClient(push=[{"status": "Pushed"}],
                        repo_digests=["other/x@sha256:" + "00" * 32, f"127.0.0.1:5000/web@{DIGEST}"])
    builder = DockerImageBuilder(environ={}, client_factory=lambda t: client)
    assert builder.build("127.0.0.1:5000/web", "v1", settings(tmp_path), lambda m: None) == DIGEST


def test_no_push_returns_the_local_image_id(tmp_path):
    client = FakeClient()
    builder = DockerImageBuilder(environ={}, client_factory=lambda t: client)
    image_id = builder.build("web", "v1", settings(tmp_path, push=False), lambda m: None)
    assert image_id == "sha256:" + "cd" * 32
    assert not [c for c in client.calls if c[0] == "push"]


def test_build_error_in_the_stream_is_a_backend_error(tmp_path):
    client = FakeClient(build=[{"stream": "Step 1/1 : RUN false\n"},
                               {"error": "The command '/bin/sh -c false' returned a non-zero code: 1",
                                "errorDetail": {"message": "returned a non-zero code: 1"}}])
    builder = DockerImageBuilder(environ={}, client_factory=lambda t: client)
    with pytest.raises(BackendError, match="building web:v1 failed: returned a non-zero code: 1"):
        builder.build("web", "v1", settings(tmp_path), lambda m: None)


def test_unreachable_registry_and_refused_credentials_are_told_apart_secret_scrubbed(tmp_path):
    refused = FakeClient(push=[{"error": "Get \"http://127.0.0.1:5999/v2/\": dial tcp "
                                         "127.0.0.1:5999: connect: connection refused"}])
    builder = DockerImageBuilder(environ={}, client_factory=lambda t: refused)
    with pytest.raises(BackendError) as err:
        builder.build("127.0.0.1:5999/web", "v1", settings(tmp_path), lambda m: None)
    assert "the registry 127.0.0.1:5999 is unreachable" in str(err.value)

    denied = FakeClient(push=[{"errorDetail": {"message": "unauthorized: bad password hunter2"}}])
    env = {"REG_USER": "ci", "REG_PASS": "hunter2"}
    builder = DockerImageBuilder(environ=env, client_factory=lambda t: denied)
    steps: list[str] = []
    with pytest.raises(BackendError) as err:
        builder.build("127.0.0.1:5000/web", "v1",
                      settings(tmp_path, username_env="REG_USER", password_env="REG_PASS"),
                      steps.append)
    assert "refused the credentials" in str(err.value)
    assert "hunter2" not in str(err.value) and not any("hunter2" in s for s in steps)
    push = [c for c in denied.calls if c[0] == "push"][0]
    assert push[3] == {"username": "ci", "password": "hunter2"}  # handed to the engine only


def test_missing_context_and_missing_credentials(tmp_path):
    builder = DockerImageBuilder(environ={}, client_factory=lambda t: FakeClient())
    with pytest.raises(BackendError, match="is not a directory"):
        builder.build("web", "v1", ImageBuild(context=str(tmp_path / "nope")), lambda m: None)
    with pytest.raises(BackendError, match="REG_PASS not set"):
        builder.build("web", "v1", settings(tmp_path, password_env="REG_PASS"), lambda m: None)


def test_split_image():
    assert split_image("127.0.0.1:5000/team/web") == ("127.0.0.1:5000", "team/web")
    assert split_image("registry.example/web") == ("registry.example", "web")
    assert split_image("localhost/web") == ("localhost", "web")
    assert split_image("team/web") == (None, "team/web")
    assert split_image("web") == (None, "web")
