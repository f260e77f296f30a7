"""The local tracker's identities (logins as typed, no registry) and its comment order."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from backends.trackers.local import LocalTracker
from bot.errors import TrackerError
from bot.models import Account
from bot.ports import Tracker
from bot.store import Store


class FixedClock:
    """Every call the same instant (two comments in one tick) until a test moves it."""

    def __init__(self) -> None:
        self.at = datetime(2024, 3, 1, 9, 0, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.at


@pytest.fixture
def local(tmp_path):
    return LocalTracker(Store(tmp_path / "deploybot.db", clock=FixedClock()))


def test_local_accounts_are_logins(local) -> None:
    assert isinstance(local, Tracker)
    assert local.current_account() == Account("deploybot", "deploybot", "deploybot")
    assert local.resolve_account(" carol.r@example ") == Account("carol.r@example", "carol.r@example",
                                                                 "carol.r@example")
    for bad in ("", "  ", "Carol Reviewer", "carol;drop"):
        with pytest.raises(TrackerError):
            local.resolve_account(bad)


def test_local_comments_in_rowid_order_when_times_tie(local) -> None:
    tid = local.create_ticket("Ship it")
    local.add_comment(tid, "CQ approved", author="carol")
    local.add_comment(tid, "CQ withdrawn", author="carol")
    local.store.now.at -= timedelta(hours=1)  # a clock stepped back: the rowid still decides
    local.add_comment(tid, "QA PASS", author="quinn")
    comments = local.comments(tid)
    assert [c.body for c in comments] == ["CQ approved", "CQ withdrawn", "QA PASS"]
    assert comments[0].created_at == comments[1].created_at
    assert [(c.author, c.author_name) for c in comments] == [("carol", "carol")] * 2 + [("quinn", "quinn")]
    assert local.resolve_account("carol").id == comments[0].author
    local.add_comment(tid, "record", key="k")
    assert local.comments(tid)[-1].author == local.current_account().id
