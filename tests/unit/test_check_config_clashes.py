"""check-config names what two services or environments would fight over: a compose project
(one deploy removes the other's containers), a proxy's listen address."""

from __future__ import annotations

import yaml

from handlers import cli


def test_check_config_refuses_one_compose_project_for_two_services_or_environments(
        tmp_path, monkeypatch, capsys):
    # Walking the README: `project: shop` on two services took one's containers down.
    (tmp_path / "a.yml").write_text("services:\n  web: {image: x}\n")
    compose = {"kind": "compose", "file": str(tmp_path / "a.yml")}
    data = {"environments": {"staging": {}, "production": {}},
            "services": {"web": {"image": "demo-web", "backend": compose},
                         "api": {"image": "demo-api", "backend": {**compose, "project": "shop"}}},
            "overrides": {"production": {"api": {"backend": {"project": "shop-prod"}}}}}
    path = tmp_path / "deploybot.yaml"
    path.write_text(yaml.safe_dump(data))
    monkeypatch.setenv("DEPLOYBOT_DB", str(tmp_path / "db.sqlite"))
    assert cli.main(["--config", str(path), "check-config"]) == cli.EXIT_OK
    data["services"]["web"]["backend"] = {**compose, "project": "shop"}
    path.write_text(yaml.safe_dump(data))
    assert cli.main(["--config", str(path), "check-config"]) == cli.EXIT_FAILED
    out = capsys.readouterr().out
    assert ("[FAILED] compose project shop is used by api in staging, web in production, "
            "web in staging:") in out  # safe_dump sorted the keys
    assert "shop-prod" not in out


def test_check_config_refuses_one_proxy_listen_for_two_environments(tmp_path, monkeypatch,
                                                                    capsys):
    proxy = {"listen": "127.0.0.1:18532", "port": 8080, "dir": str(tmp_path / "proxy")}
    data = {"environments": {"staging": {}, "production": {}},
            "services": {"shop": {"image": "demo-web",
                                  "backend": {"kind": "docker", "proxy": proxy}}}}
    path = tmp_path / "deploybot.yaml"
    path.write_text(yaml.safe_dump(data))
    monkeypatch.setenv("DEPLOYBOT_DB", str(tmp_path / "db.sqlite"))
    assert cli.main(["--config", str(path), "check-config"]) == cli.EXIT_FAILED
    assert ("[FAILED] proxy listen 127.0.0.1:18532 is used by shop in production, shop in "
            "staging:") in capsys.readouterr().out  # safe_dump sorted the keys
    data["overrides"] = {"production": {"shop": {"backend": {
        "proxy": {**proxy, "listen": "127.0.0.1:18533"}}}}}
    path.write_text(yaml.safe_dump(data))
    assert cli.main(["--config", str(path), "check-config"]) == cli.EXIT_OK
