"""`deploybot demo --proxy`: the quick start's config from examples/deploybot-proxy.yaml, with
the demo's ports and the proxy's files in the demo folder."""

from pathlib import Path

import yaml

from bot import config as configuration
from handlers import demo


def proxy_demo_config(port: int, folder: Path) -> str:
    example = (demo.EXAMPLES / "deploybot-proxy.yaml").read_text()
    return demo.proxy_in_folder(demo.demo_config(example, port, "deploybot-proxy.yaml"), folder)


def test_the_proxy_demo_listens_on_the_demo_ports_and_keeps_its_files_in_the_folder(tmp_path):
    folder = tmp_path / "a folder: with odd characters"
    text = proxy_demo_config(28000, folder)
    assert text.startswith("# Written by `deploybot demo` from examples/deploybot-proxy.yaml.")
    cfg = configuration.parse(yaml.safe_load(text), "demo")
    staging, production = cfg.service("web", "staging"), cfg.service("web", "production")
    assert staging.backend.proxy.listen == "127.0.0.1:28000"
    assert production.backend.proxy.listen == "127.0.0.1:28001"
    assert str(staging.health.url) == "http://127.0.0.1:28000/health"
    assert staging.backend.proxy.dir == production.backend.proxy.dir == str(folder / "proxy")
    assert demo.EXAMPLE_PROXY_DIR not in text


def test_the_demo_refuses_an_example_it_cannot_place_the_proxy_files_of(tmp_path):
    import pytest

    from bot.errors import ConfigError

    with pytest.raises(ConfigError):
        demo.proxy_in_folder("services: {}\n", tmp_path)


def test_demo_takes_proxy_on_its_command_line():
    import argparse

    parser = argparse.ArgumentParser()
    demo.add_parser(parser.add_subparsers())
    assert parser.parse_args(["demo", "--proxy"]).proxy is True
    assert parser.parse_args(["demo"]).proxy is False


def test_containers_another_demo_folder_left_on_the_engine_are_named_before_anything_runs(
        tmp_path):
    # `deploybot demo` then `deploybot demo --proxy` on one engine: web-staging is the first
    # folder's, and the proxy demo's checklist would block without saying why.
    cfg = configuration.parse(yaml.safe_load(proxy_demo_config(28000, tmp_path)), "demo")
    ours = demo.container_names(cfg)
    assert {"web-staging", "web-staging--previous", "web-production"} <= set(ours)
    on_engine = ["deploybot-proxy", "web-staging", "web-production", "registry"]
    assert demo.foreign(on_engine, ours, deployed_here=False) == ["web-staging",
                                                                  "web-production"]
    assert demo.foreign(on_engine, ours, deployed_here=True) == []
    assert demo._deployed_here(tmp_path / "deploybot.db") is False  # a new folder's store
