"""The local tracker's identities: logins as typed, no registry. (Its comment order, ties and
a clock stepped back, is in the tracker contract, test_tracker_contract.py.)"""

from __future__ import annotations

from datetime import datetime, timezone

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

