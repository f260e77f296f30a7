"""A fake tracker that raised inside its handler answered 500: the adapters retry and verify
such answers, so the bug would pass unseen. It fails the test instead."""

from __future__ import annotations

import pytest

import tracker_fakes


@pytest.fixture(autouse=True)
def no_bug_in_the_fakes():
    start = len(tracker_fakes.BUGS)
    yield
    bugs = tracker_fakes.BUGS[start:]
    del tracker_fakes.BUGS[start:]
    assert not bugs, "a fake tracker raised (a bug in the fake): " + "; ".join(bugs[:3])
