"""examples/deploybot-proxy.yaml: the demo service behind the proxy is a valid configuration
whose checks name the proxy's public address in every environment."""

from pathlib import Path
from urllib.parse import urlsplit

from bot import config as configuration

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_proxy_example_is_valid_and_checks_go_to_the_proxy():
    cfg = configuration.load(EXAMPLES / "deploybot-proxy.yaml")
    listens = set()
    for env in ("staging", "production"):
        svc = cfg.service("web", env)
        proxy = svc.backend.proxy
        assert proxy is not None and not svc.backend.ports
        assert (proxy.port, proxy.run) == (8080, "container")
        public = f"{urlsplit(str(svc.health.url)).hostname}:{urlsplit(str(svc.health.url)).port}"
        assert public == proxy.listen
        assert all(urlsplit(str(t.url)).netloc == proxy.listen for t in svc.smoke)
        listens.add(proxy.listen)
    assert len(listens) == 2  # staging and production do not share a frontend


def test_proxy_example_is_the_plain_example_but_for_the_service():
    plain = configuration.load(EXAMPLES / "deploybot.yaml")
    proxied = configuration.load(EXAMPLES / "deploybot-proxy.yaml")
    assert proxied.environments == plain.environments
    assert proxied.people == plain.people
    assert proxied.tracker == plain.tracker
