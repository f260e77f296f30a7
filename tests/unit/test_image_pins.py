"""Immutable image references (backends/deploy/pins.py): parsing, choosing, asking a registry."""

from __future__ import annotations

import httpx
import pytest

from backends.deploy import pins

D = "sha256:" + "a" * 64
ID = "sha256:" + "b" * 64


def test_references_are_told_apart():
    assert pins.is_image_id(ID) and not pins.is_image_id("sha256:abc") and not pins.is_image_id("")
    assert pins.split_digest(f"127.0.0.1:5000/team/web@{D}") == ("127.0.0.1:5000/team/web", D)
    assert pins.split_digest("web:v2") is None and pins.split_digest(ID) is None
    assert pins.is_pinned(f"web@{D}") and pins.is_pinned(ID)
    assert not pins.is_pinned("web:v2") and not pins.is_pinned(None)
    assert pins.repository("127.0.0.1:5000/team/web:v2") == "127.0.0.1:5000/team/web"
    assert pins.repository(f"127.0.0.1:5000/web@{D}") == "127.0.0.1:5000/web"
    assert pins.repository("localhost:5000/web") == "localhost:5000/web"


def test_the_configured_repositorys_digest_is_preferred_else_the_first_else_the_id():
    digests = [f"mirror.example/web@{D}", f"127.0.0.1:5000/web@{D}"]
    assert pins.best_ref(ID, digests, "127.0.0.1:5000/web") == f"127.0.0.1:5000/web@{D}"
    assert pins.best_ref(ID, digests, "elsewhere/web") == f"mirror.example/web@{D}"
    assert pins.best_ref(ID, [f"busybox@{D}"], "docker.io/library/busybox") == f"busybox@{D}"
    assert pins.best_ref(ID, [], "web") == ID and pins.best_ref(ID, None, None) == ID


@pytest.mark.parametrize("status,expected", [
    (f"docker-pullable://127.0.0.1:5000/web@{D}", f"127.0.0.1:5000/web@{D}"),
    (f"docker://{ID}", ID),
    (f"registry.example/web@{D}", f"registry.example/web@{D}"),  # containerd
    (ID, ID),
    ("", None), (None, None), ("docker://web:v2", None),
])
def test_pod_status_image_ids_become_references(status, expected):
    assert pins.from_status_image_id(status) == expected


def registry(handler):
    return httpx.MockTransport(handler)


def test_a_registry_that_serves_the_digest_or_answers_404():
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.method, str(request.url)))
        if request.url.scheme == "https":
            raise httpx.ConnectError("TLS handshake failed")
        return httpx.Response(200 if D in request.url.path else 404)

    ok, how = pins.registry_has(f"127.0.0.1:5000/team/web@{D}", transport=registry(handler))
    assert ok is True and "127.0.0.1:5000 serves team/web@" in how
    assert seen == [("HEAD", f"https://127.0.0.1:5000/v2/team/web/manifests/{D}"),
                    ("HEAD", f"http://127.0.0.1:5000/v2/team/web/manifests/{D}")]
    gone, how = pins.registry_has(f"127.0.0.1:5000/web@sha256:{'c' * 64}",
                                  transport=registry(handler))
    assert gone is False and "404" in how and "manifest unknown" in how


def test_docker_hub_style_anonymous_token_and_no_plain_http_off_loopback():
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.example":
            assert request.url.params["scope"] == "repository:library/busybox:pull"
            return httpx.Response(200, json={"token": "t0k"})
        assert request.url.scheme == "https" and request.url.host == "registry-1.docker.io"
        assert request.url.path == f"/v2/library/busybox/manifests/{D}"
        if request.headers.get("authorization") != "Bearer t0k":
            return httpx.Response(401, headers={"www-authenticate": (
                'Bearer realm="https://auth.example/token",service="registry.docker.io",'
                'scope="repository:library/busybox:pull"')})
        return httpx.Response(200)

    assert pins.registry_has(f"busybox@{D}", transport=registry(handler))[0] is True


def test_a_registry_that_cannot_be_asked_is_unknown_not_gone():
    def refused(request):
        raise httpx.ConnectError("connection refused")

    known, why = pins.registry_has(f"registry.example/web@{D}", transport=registry(refused))
    assert known is None and "not reachable" in why
    known, why = pins.registry_has(f"registry.example/web@{D}",
                                   transport=registry(lambda r: httpx.Response(401)))
    assert known is None and "401" in why
    assert pins.registry_has("web:v2")[0] is None
