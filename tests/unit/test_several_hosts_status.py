"""A service on several hosts: `status` says how to fill a host that runs nothing; an engine
that does not answer points at `hosts:`."""

from __future__ import annotations

from backends.deploy.several_hosts import SeveralHostsBackend
from bot import config as configuration
from fakes.core import FakeBackend

ENGINES = ["unix:///run/h1.sock", "unix:///run/h2.sock"]


def backend(*running):
    cfg = configuration.parse({
        "environments": {"staging": {}},
        "services": {"web": {"image": "demo-web",
                             "backend": {"ports": {"8080": "127.0.0.1:18080"},
                                         "hosts": ENGINES}}}})
    return SeveralHostsBackend(cfg.service("web", "staging").backend.hosts, 1,
                               {e: FakeBackend(running=v) for e, v in zip(ENGINES, running)})


def test_a_host_running_nothing_beside_one_that_runs_says_how_to_add_it():
    # Walking the README: the checklist blocked with "no container" and no word on what to do.
    state = backend("v1", None).status()
    assert not state.running
    assert "nothing runs on unix:///run/h2.sock: to add a host, deploy the running version " \
           "with hosts: naming only it" in state.detail


def test_no_hint_when_every_host_runs_or_none_does():
    assert "to add a host" not in backend("v1", "v1").status().detail
    assert "to add a host" not in backend(None, None).status().detail


def test_an_engine_of_hosts_that_does_not_answer_points_at_hosts_not_docker_host(tmp_path):
    # Walking hosts: with the second engine down, the message said "is DOCKER_HOST right?".
    import pytest

    from backends.deploy import build_backend
    from bot.errors import BackendError

    missing = tmp_path / "no-engine.sock"
    cfg = configuration.parse({"environments": {"staging": {}}, "services": {"web": {
        "image": "demo-web", "backend": {"hosts": [f"unix://{missing}"], "timeout": 5}}}})
    with pytest.raises(BackendError) as caught:
        build_backend("web", "staging", cfg.service("web", "staging")).current_version()
    assert "(is it running? is the service's backend.hosts right?)" in str(caught.value)
    assert "DOCKER_HOST" not in str(caught.value)
