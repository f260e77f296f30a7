"""Redeliveries: dropped by this process before the ack, by every replica on the worker."""

from __future__ import annotations

from bot.store import Store
from handlers.slack_app import Deliveries


def test_a_key_is_taken_once_here_and_once_across_replicas(tmp_path):
    one, two = Store(tmp_path / "d.db"), Store(tmp_path / "d.db")
    try:
        here, there = Deliveries(store=one), Deliveries(store=two)
        assert here.first_here("cmd:T1") and here.first_everywhere("cmd:T1")
        assert not here.first_here("cmd:T1")  # the redelivery, in the same process
        assert there.first_here("cmd:T1")  # another replica has not seen it...
        assert not there.first_everywhere("cmd:T1")  # ...but the store has
    finally:
        one.close()
        two.close()


def test_a_store_failure_drops_the_request_and_lets_a_redelivery_try_again(tmp_path):
    store = Store(tmp_path / "d.db")
    deliveries = Deliveries(store=store)
    assert deliveries.first_here("event:E1")
    store.close()  # the store is down
    assert not deliveries.first_everywhere("event:E1")
    assert deliveries.first_here("event:E1")  # not remembered: the redelivery is taken
    back = Store(tmp_path / "d.db")
    try:
        deliveries.store = back
        assert deliveries.first_everywhere("event:E1")
    finally:
        back.close()
