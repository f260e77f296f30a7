"""Each host's previous version, bytes and outcome (schema 10: deployments.hosts) kept the
same on both store engines (tests/integration/store_engines.py)."""

from __future__ import annotations

import pytest

from bot.models import HostOutcome, hosts_from_text, hosts_to_text
from tests.integration.store_engines import engine_store, store_template  # noqa: F401 fixtures

pytestmark = pytest.mark.integration


def test_the_hosts_of_a_deployment_are_stored_and_read_back(engine_store):
    store = engine_store.open()
    d = store.create_deployment(ticket_id="T-1", service="web", version="v2",
                                environment="staging", requested_by="ann")[0]
    assert store.deployment(d.id).hosts == ""
    outcomes = [HostOutcome(host="ssh://deploy@web1", address="web1", previous="v1",
                            previous_image="sha256:" + "a" * 64,
                            outcome="deployed and verified; rolled back to v1"),
                HostOutcome(host="unix:///run/docker.sock", previous=None)]
    store.update_deployment(d.id, hosts=hosts_to_text(outcomes))
    assert hosts_from_text(store.deployment(d.id).hosts) == outcomes
