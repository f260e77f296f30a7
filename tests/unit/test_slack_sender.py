"""Slack within its limits: coalesced updates, Retry-After, convergence, durable posts once.

The sender talks to the rate-limiting FakeSlack in-process (InProcessClient) and both count
time on one manual clock: nothing here waits on the real clock.
"""

from __future__ import annotations

import pytest

from bot.errors import DeliveryError
from bot.models import DeploymentStatus
from bot.store import Store
from handlers import blocks
from handlers.blocks import Message
from handlers.slack_budget import Limits
from handlers.slack_reporter import SlackReporter, ThreadRef
from handlers.slack_sender import SlackSender
from fakes.slack_api import FakeLimits, FakeSlack, InProcessClient
from fakes.slack_harness import slack_config

CHANNEL = "C0STANDUP"


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += max(seconds, 0.001)


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def slack(clock):
    return FakeSlack(limits=FakeLimits(), clock=clock)


def sender_for(slack, clock, limits=None, client=None):
    return SlackSender(client or InProcessClient(slack), limits=limits, clock=clock,
                       wait=lambda cond, seconds: clock.advance(seconds), background=False)


def drain(sender, clock, limit=10_000):
    """Pump until nothing waits, moving the clock over every pause; the seconds it took."""
    start = clock.t
    for _ in range(limit):
        pause = sender.pump()
        if pause is None:
            return clock.t - start
        if pause:
            clock.advance(pause)
    raise AssertionError("the sender never settled")


def msg(text: str) -> Message:
    return Message(text, [{"type": "section", "text": {"type": "mrkdwn", "text": text}}])


def test_waiting_updates_are_replaced_by_the_latest_render(slack, clock):
    sender = sender_for(slack, clock)
    root = slack.answer("chat.postMessage", {"channel": CHANNEL, "text": "v0"}, "xoxb-test")
    for i in range(300):  # a deployment's checklist, 300 renders in a burst
        sender.show("checklist", msg(f"render {i}"), lane=1, channel=CHANNEL, ts=root["ts"])
    took = drain(sender, clock)
    updates = slack.calls_to("chat.update")
    assert len(updates) == 1, "one update: the renders waiting in line replaced each other"
    assert slack.messages[root["ts"]].text == "render 299"
    assert took < 1


def test_updates_stay_within_tier_3_and_converge_after_a_429_storm(slack, clock):
    sender = sender_for(slack, clock, limits=Limits(updates_per_minute=500, update_burst=50))
    roots = [slack.answer("chat.postMessage", {"channel": CHANNEL, "text": "r"},
                          "xoxb-test")["ts"] for _ in range(10)]
    slack.storm(7)  # Slack answers 429 to everything for 7 s, whatever our own budget says
    for round_ in range(20):
        for n, ts in enumerate(roots):
            sender.show(("root", n), msg(f"deployment {n} state {round_}"), lane=n,
                        channel=CHANNEL, ts=ts)
        sender.pump()
        clock.advance(0.05)
    drain(sender, clock)
    assert all(slack.messages[ts].text == f"deployment {n} state 19"
               for n, ts in enumerate(roots)), "every message ends at its latest render"
    limited = [c for c in slack.calls if c.status == 429]
    assert limited, "the storm answered 429"
    after_first = [c for c in slack.calls if c.at > limited[0].at and c.at < limited[0].at + 7]
    assert len(after_first) <= 1, "Retry-After is honoured: nothing more during the storm"


def test_posts_in_one_channel_keep_a_second_apart_and_steps_are_coalesced(slack, clock):
    sender = sender_for(slack, clock)
    root = slack.answer("chat.postMessage", {"channel": CHANNEL, "text": "root"},
                        "xoxb-test")["ts"]
    sender.show((1, "checklist"), msg("checklist"), lane=1, channel=CHANNEL, thread_ts=root)
    for i in range(25):
        sender.add_step(1, f"step {i}", blocks.steps_message, channel=CHANNEL, thread_ts=root)
    drain(sender, clock)
    thread = slack.thread(root)
    assert thread[0].text == "checklist", "posts of a thread go out in the order asked"
    lines = "\n".join(m.text for m in thread[1:]).splitlines()
    assert lines == [f"→ step {i}" for i in range(25)], "every step, in order, none lost"
    assert len(thread) < 8, "steps that waited were posted together"
    assert slack.ratelimited == 0, "the sender kept within chat.postMessage's per-channel limit"


def test_a_call_raises_delivery_error_with_retry_after_when_the_storm_outlasts_it(slack, clock):
    sender = sender_for(slack, clock)
    slack.storm(60)
    with pytest.raises(DeliveryError) as caught:
        sender.call("chat_postMessage", max_wait=20, channel=CHANNEL, text="x")
    assert caught.value.retry_after and caught.value.retry_after > 20
    assert not caught.value.permanent
    assert [c.status for c in slack.calls] == [429], "one try, then the pause is honoured"


def test_a_call_waits_out_a_short_retry_after_and_gets_through(slack, clock):
    sender = sender_for(slack, clock)
    slack.storm(3)
    answer = sender.call("chat_postMessage", max_wait=20, channel=CHANNEL, text="x")
    assert answer["ok"] and [c.status for c in slack.calls] == [429, 200]
    assert slack.calls[1].at - slack.calls[0].at >= 3


# -- the reporter's durable posts ------------------------------------------------------------------

@pytest.fixture
def world(tmp_path, slack, clock):
    store = Store(tmp_path / "deploybot.db")
    config = slack_config(image="demo-web", prefix="unused", ports={"staging": 9,
                                                                     "production": 9})
    d, _ = store.create_deployment(ticket_id="DEMO-1", service="web", version="v2",
                                   environment="staging", requested_by="alice")
    yield store, config, d
    store.close()


class TimesOutAfterPosting(InProcessClient):
    """Slack stores the post, but the answer never arrives (a timeout), `times` times."""

    def __init__(self, slack, times: int = 1) -> None:
        super().__init__(slack)
        self.times = times

    def __getattr__(self, name):
        call = super().__getattr__(name)
        if name != "chat_postMessage":
            return call

        def post(**kwargs):
            answer = call(**kwargs)
            if kwargs.get("metadata") and self.times > 0:
                self.times -= 1
                raise TimeoutError("The read operation timed out")
            return answer
        return post


def test_a_record_whose_answer_timed_out_is_found_by_its_marker_not_posted_twice(
        world, slack, clock):
    store, config, d = world
    client = TimesOutAfterPosting(slack)
    reporter = SlackReporter(client, store, config, sender=sender_for(slack, clock, client=client))
    reporter.start_thread(d, CHANNEL)
    d = store.transition(d.id, DeploymentStatus.CANCELLED, failure="cancelled by alice")
    with pytest.raises(DeliveryError) as caught:
        reporter.finished(d, "")
    assert not caught.value.permanent
    assert ThreadRef.parse(store.deployment(d.id).thread_ref).parts["final"] == "?"

    reporter.finished(d, "")  # the outbox tries again
    root = ThreadRef.parse(store.deployment(d.id).thread_ref)
    finals = [m for m in slack.thread(root.ts)
              if (m.metadata or {}).get("event_payload", {}).get("key") == "final"]
    assert len(finals) == 1, "posted once"
    assert root.parts["final"] == finals[0].ts
    looked = slack.calls_to("conversations.replies")
    assert looked and looked[0].params["include_all_metadata"] in (True, "true", "1")
    posts = len(slack.calls_to("chat.postMessage"))
    reporter.finished(d, "")  # and again: the final message is known, nothing new is posted
    assert len(slack.calls_to("chat.postMessage")) == posts
    assert sum(bool(m.metadata) for m in slack.thread(root.ts)) == 1


def test_an_alert_through_a_429_storm_raises_with_retry_after_and_is_posted_on_retry(
        world, slack, clock):
    store, config, d = world
    reporter = SlackReporter(InProcessClient(slack), store, config,
                             sender=sender_for(slack, clock))
    reporter.start_thread(d, CHANNEL)
    slack.storm(120, {"chat.postMessage"})
    with pytest.raises(DeliveryError) as caught:
        reporter.alert(d, "automatic rollback of web v2 in staging")
    assert caught.value.retry_after and not caught.value.permanent
    clock.advance(caught.value.retry_after)
    reporter.alert(d, "automatic rollback of web v2 in staging")
    reporter.alert(d, "automatic rollback of web v2 in staging")  # a second retry: still once
    alerts = [m for m in slack.top_level(CHANNEL) if "automatic rollback" in m.text]
    assert len(alerts) == 1 and alerts[0].metadata["event_type"] == "deploybot_message"


@pytest.mark.parametrize("error", ["not_in_channel", "channel_not_found"])
def test_a_channel_the_bot_cannot_post_in_is_a_permanent_failure_with_the_fix(
        world, clock, error):
    store, config, d = world
    slack = FakeSlack(clock=clock, not_in={CHANNEL} if error == "not_in_channel" else None,
                      channels={} if error == "channel_not_found" else None)
    reporter = SlackReporter(InProcessClient(slack), store, config,
                             sender=sender_for(slack, clock))
    with pytest.raises(DeliveryError) as caught:
        reporter.start_thread(d, CHANNEL)
    assert caught.value.permanent and error in caught.value.message
    assert "/invite @deploybot in <#C0STANDUP>" in caught.value.hint
    assert store.deployment(d.id).thread_ref == ""


def test_a_durable_post_lands_after_its_threads_waiting_posts_and_older_threads_go_first(
        slack, clock):
    sender = sender_for(slack, clock, limits=Limits(post_burst=1))
    roots = [sender.deliver((n, "root"), msg(f"root {n}"), lane=n, channel=CHANNEL,
                            timeout=60)["ts"] for n in (1, 2)]
    sender.show((2, "checklist"), msg("checklist 2"), lane=2, channel=CHANNEL,
                thread_ts=roots[1])
    sender.show((1, "checklist"), msg("checklist 1"), lane=1, channel=CHANNEL,
                thread_ts=roots[0])
    sender.add_step(1, "pulled", blocks.steps_message, channel=CHANNEL, thread_ts=roots[0])
    sender.deliver((1, "final"), msg("record 1"), lane=1, channel=CHANNEL, thread_ts=roots[0],
                   extra={"metadata": {"event_type": "deploybot_message",
                                       "event_payload": {"deployment": 1, "key": "final"}}},
                   timeout=60)
    assert [m.text for m in slack.thread(roots[0])] == ["checklist 1", "→ pulled", "record 1"]
    assert slack.thread(roots[1]) == [], "the thread somebody waits on went first"
    drain(sender, clock)
    assert [m.text for m in slack.thread(roots[1])] == ["checklist 2"]
    assert slack.ratelimited == 0


def test_an_alert_whose_answer_timed_out_is_found_in_the_channel_history(world, slack, clock):
    store, config, d = world
    client = TimesOutAfterPosting(slack)
    reporter = SlackReporter(client, store, config, sender=sender_for(slack, clock, client=client))
    reporter.start_thread(d, CHANNEL)
    with pytest.raises(DeliveryError):
        reporter.alert(d, "ROLLBACK FAILED for web in staging")
    reporter.alert(d, "ROLLBACK FAILED for web in staging")
    alerts = [m for m in slack.top_level(CHANNEL) if "ROLLBACK FAILED" in m.text]
    assert len(alerts) == 1, "posted once"
    looked = slack.calls_to("conversations.history")
    assert len(looked) == 1 and looked[0].params["channel"] == CHANNEL


def test_a_thread_whose_first_post_failed_opens_later_without_holding_the_deployment(
        world, slack, clock):
    store, config, d = world
    reporter = SlackReporter(InProcessClient(slack), store, config,
                             sender=sender_for(slack, clock))
    slack.storm(45, {"chat.postMessage"})
    with pytest.raises(DeliveryError) as caught:
        reporter.start_thread(d, CHANNEL)
    assert not caught.value.permanent and caught.value.retry_after
    started = clock.t
    reporter.deployment_started(d)
    for n in range(20):
        reporter.step(d, f"step {n}")
    assert clock.t - started <= 16, "progress never waits for the root more than a while"
    d = store.transition(d.id, DeploymentStatus.CANCELLED, failure="cancelled by alice")
    reporter.finished(d, "")  # the record waits for its thread, then lands in it
    ref = ThreadRef.parse(store.deployment(d.id).thread_ref)
    assert ref.channel == CHANNEL, "opened later in the channel asked, named by its id"
    roots = [m for m in slack.top_level(CHANNEL) if "requested by" in m.text]
    assert [m.ts for m in roots] == [ref.ts] and "cancelled" in roots[0].text
    last = slack.thread(ref.ts)[-1]
    assert last.metadata["event_payload"] == {"deployment": d.id, "key": "final"}
    assert "cancelled by alice" in last.everything
