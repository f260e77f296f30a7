"""The outbox (bot/outbox.py): ticket comments, ticket moves and Slack posts stored with the state
change they report, delivered in order per target, exactly once, with backoff."""

from __future__ import annotations

import threading

import pytest

from bot import config as configuration
from bot import outbox as outboxing
from bot.models import CheckResult, CheckStatus, DeploymentStatus
from bot.outbox import Outbox
from bot.pipeline import Pipeline
from bot.scheduler import DeployScheduler
from bot.store import Store
from fakes.core import FakeBackend, FakeProbe, RecordingReporter, ScriptedApprover
from fakes.outbox import FlakyPoster, FlakyTracker
from fakes.schedule import ManualClock

CONFIG = {
    "tracker": {"kind": "redmine", "url": "http://127.0.0.1:9", "rules": {
        "cq_approval": {"authors": ["bob"]}, "qa_pass": {"authors": ["carol"]}}},
    "environments": {"production": {"production": True}},
    "services": {"web": {"image": "demo-web", "health": {"url": "http://127.0.0.1:9/health"}}},
    "people": {n: {"tracker": n} for n in ("alice", "bob", "carol")},
    "outbox": {"retry_first_seconds": 5, "retry_max_seconds": 60, "stuck_minutes": 30},
}


class World:
    """One deploybot process: a store on a shared file, a pipeline, a tracker and Slack."""

    def __init__(self, tmp_path, *, durable: bool = False, clock: ManualClock | None = None,
                 tracker: FlakyTracker | None = None, environments: dict | None = None) -> None:
        self.config = configuration.parse({**CONFIG, **(
            {"environments": environments} if environments else {})})
        self.clock = clock or ManualClock()
        self.store = Store(tmp_path / "deploybot.db", clock=self.clock.now)
        self.tracker = tracker or FlakyTracker()
        if tracker is None:
            for login, uid in (("alice", "11"), ("bob", "12"), ("carol", "13")):
                self.tracker.user(login, uid)
        self.backend = FakeBackend(running="v1")
        self.reporter = FlakyPoster() if durable else RecordingReporter()
        self.pipeline = Pipeline(config=self.config, store=self.store, tracker=self.tracker,
                                 backend_for=lambda s, e: self.backend, reporter=self.reporter,
                                 approver=ScriptedApprover(), probe=FakeProbe(self.backend),
                                 clock=self.clock, durable_posts=durable)
        self.outbox = self.pipeline.outbox

    def ready(self, tid: str = "7") -> str:
        self.tracker.ticket(tid)
        self.tracker.say(tid, "bob", "CQ approved")
        self.tracker.say(tid, "carol", "QA PASS")
        return tid

    def deploy(self, tid: str):
        d = self.pipeline.request_deploy(tid, requested_by="alice", target="web@v2")
        return self.pipeline.run(d.id)

    def bodies(self, tid: str, start: str) -> list[str]:
        return [c.body for c in self.tracker.notes[tid] if c.body.startswith(start)]


@pytest.fixture
def world(tmp_path):
    return World(tmp_path)


def _tracker_down_from_the_rollout(world) -> None:
    """The checklist and the re-check read the tracker; it goes away once the rollout runs."""
    real = world.backend.deploy

    def deploy_then_tracker_down(version, **kw):
        real(version, **kw)
        world.tracker.down = "connection refused"
    world.backend.deploy = deploy_then_tracker_down


def _deployment(world):
    d, _ = world.store.create_deployment(ticket_id="7", service="web", version="v2",
                                         environment="production", requested_by="alice")
    return d


# -- the normal path and an outage -------------------------------------------------------------

def test_the_record_and_the_move_are_delivered_at_once_when_the_tracker_answers(world):
    tid = world.ready()
    d = world.deploy(tid)
    assert d.status is DeploymentStatus.SUCCEEDED
    assert len(world.bodies(tid, "## Deployment Record")) == 1
    assert world.tracker.tickets[tid].status == "Deployed"
    assert d.record_commented and world.outbox.undelivered() == []
    kinds = [e["kind"] for e in world.store.events(d.id)]
    assert kinds.count("outbox.delivered") == 2
    # The terminal is told directly, in order; nothing of it is stored in the outbox.
    stored = [r["kind"] for r in world.store.db.query("SELECT kind FROM outbox ORDER BY id")]
    assert stored == ["comment", "transition"]
    assert world.reporter.kinds()[-1] == "finished" and len(world.reporter.records) == 1


def test_tracker_down_at_the_record_keeps_it_and_the_next_process_delivers_once(tmp_path):
    world = World(tmp_path)
    tid = world.ready()
    d = world.pipeline.request_deploy(tid, requested_by="alice", target="web@v2")
    _tracker_down_from_the_rollout(world)
    d = world.pipeline.run(d.id)
    assert d.status is DeploymentStatus.SUCCEEDED  # the deployment does not wait for the tracker
    assert not d.record_commented and world.bodies(tid, "## Deployment Record") == []
    waiting = world.outbox.undelivered()
    assert [(i.kind, i.attempts) for i in waiting] == [("comment", 1), ("transition", 0)]
    assert "connection refused" in waiting[0].last_error
    steps = [m for k, m in world.reporter.events if k == "step"]
    assert any("record comment on 7 not delivered yet" in s for s in steps)
    trail = [e["detail"] for e in world.store.events(d.id) if e["kind"] == "outbox.retrying"]
    assert len(trail) == 1 and "record comment on 7" in trail[0]

    world.tracker.down = ""
    later = World(tmp_path, clock=world.clock, tracker=world.tracker)  # the next process
    assert later.outbox.deliver().delivered == []  # not before its backoff
    world.clock.advance(seconds=5)
    done = later.outbox.deliver()
    assert [i.kind for i in done.delivered] == ["comment", "transition"]
    assert len(world.bodies(tid, "## Deployment Record")) == 1
    assert world.tracker.tickets[tid].status == "Deployed"
    assert later.store.deployment(d.id).record_commented
    assert later.outbox.deliver().delivered == []  # delivered items are never sent again
    assert len(world.tracker.posts) == 1


# -- order, backoff, Retry-After, giving up ----------------------------------------------------

def test_a_failing_head_holds_back_its_target_only(world):
    d = _deployment(world)
    world.tracker.ticket("7")
    world.tracker.ticket("8")
    other = world.store.create_deployment(ticket_id="8", service="web", version="v3",
                                          environment="production", requested_by="bob")[0]
    world.outbox.enqueue([outboxing.comment(d, "k1", "first", "a"),
                          outboxing.comment(d, "k2", "second", "a"),
                          outboxing.comment(other, "k3", "elsewhere", "a")])
    calls = []
    real = world.tracker.add_comment

    def flaky(ticket_id, markdown, *, key):
        calls.append(key)
        if key == "k1":
            raise TimeoutError("read timed out")
        real(ticket_id, markdown, key=key)
    world.tracker.add_comment = flaky
    done = world.outbox.deliver()
    assert calls == ["k1"]  # a failure marks the tracker down for this pass
    assert [i.key for i, _ in done.retrying] == ["k1"]
    world.outbox.deliver()  # the next pass: k1 waits for its backoff, k2 waits behind it
    assert calls == ["k1", "k3"]
    world.clock.advance(seconds=5)
    world.tracker.add_comment = lambda t, m, *, key: (calls.append(key), real(t, m, key=key))
    world.outbox.deliver()
    assert calls == ["k1", "k3", "k1", "k2"]
    assert [c.body for c in world.tracker.notes["7"]] == ["first", "second"]


def test_backoff_doubles_up_to_the_cap_on_the_injected_clock(world):
    d = _deployment(world)
    world.tracker.ticket("7")
    world.outbox.enqueue([outboxing.comment(d, "k", "text", "a")])
    world.tracker.down = "connection refused"
    start = world.clock.now()
    waits = []
    for _ in range(6):
        done = world.outbox.deliver()
        assert len(done.retrying) == 1
        item = world.outbox.undelivered()[0]
        waits.append((item.next_attempt_at - world.clock.now()).total_seconds())
        assert world.outbox.deliver().retrying == []  # nothing is tried before it is due
        world.clock.set(item.next_attempt_at)
    assert waits == [5, 10, 20, 40, 60, 60]
    assert (world.clock.now() - start).total_seconds() == sum(waits)
    trail = [e for e in world.store.events(d.id) if e["kind"] == "outbox.retrying"]
    assert len(trail) == 1  # the same error is said once, not at every attempt


def test_retry_after_is_honoured(tmp_path):
    world = World(tmp_path, durable=True)
    d = _deployment(world)
    world.reporter.down, world.reporter.retry_after = "ratelimited", 42
    world.pipeline.report.alert(d, "rollback!")
    item = world.outbox.undelivered()[0]
    assert (item.next_attempt_at - world.clock.now()).total_seconds() == 42
    assert "ratelimited" in item.last_error
    world.reporter.down = ""
    world.clock.advance(seconds=41)
    assert world.outbox.deliver().delivered == []
    world.clock.advance(seconds=1)
    assert len(world.outbox.deliver().delivered) == 1
    assert world.reporter.events == [("alert", "rollback!")]


def test_a_permanent_failure_gives_up_alerts_once_and_frees_its_target(tmp_path):
    world = World(tmp_path, durable=True)
    d = _deployment(world)
    world.tracker.ticket("7")
    world.outbox.enqueue([outboxing.comment(d, "k1", "first", "record"),
                          outboxing.comment(d, "k2", "second", "blocker")])
    world.tracker.permanent = "Redmine: no issue #7 (404)"
    done = world.outbox.deliver()
    assert [i.key for i, _ in done.failed] == ["k1", "k2"]
    assert world.outbox.undelivered()[0].state == "failed"
    alerts = [m for k, m in world.reporter.events if k == "alert"]
    assert len(alerts) == 2 and "record comment on 7 could not be delivered" in alerts[0]
    assert "404" in alerts[0]
    world.clock.advance(hours=2)
    assert world.outbox.deliver().delivered == [] and world.outbox.check_stuck() == []
    assert [e["kind"] for e in world.store.events(d.id)].count("outbox.failed") == 2


# -- exactly once with two deliverers ----------------------------------------------------------

def test_an_item_in_flight_is_not_claimed_by_a_second_process(tmp_path, world):
    d = _deployment(world)
    world.tracker.ticket("7")
    world.outbox.enqueue([outboxing.comment(d, "k", "text", "record")])
    other = Outbox(Store(tmp_path / "deploybot.db", clock=world.clock.now), world.tracker,
                   world.config.outbox)
    seen = []
    world.tracker.on_post = lambda: seen.append(other.deliver().delivered)
    world.outbox.deliver()
    assert seen == [[]] and len(world.tracker.posts) == 1


def test_a_crashed_deliverers_lease_ends_and_the_key_prevents_a_second_comment(tmp_path, world):
    d = _deployment(world)
    world.tracker.ticket("7")
    world.outbox.enqueue([outboxing.comment(d, "k", "text", "record")])
    item = world.outbox.table.claim("dead-process", outboxing.LEASE_SECONDS, ["comment"])
    world.tracker.add_comment("7", "text", key="k")  # it posted, then died before storing that
    assert world.outbox.deliver().delivered == []  # still leased
    world.clock.advance(seconds=outboxing.LEASE_SECONDS + 1)
    deduping = world.tracker.add_comment
    world.tracker.add_comment = lambda t, m, *, key: None if any(
        k == key for _, k in world.tracker.posts) else deduping(t, m, key=key)
    assert [i.id for i in world.outbox.deliver().delivered] == [item.id]
    assert world.tracker.posts == [("7", "k")]


def test_two_concurrent_deliverers_send_every_item_exactly_once(tmp_path, world):
    world.tracker.ticket("7")
    deployments = [_deployment(world) for _ in range(3)]
    for n in range(30):
        d = deployments[n % 3]
        world.outbox.enqueue([outboxing.comment(d, f"k{n}", f"text {n}", "a")])
    outboxes = [world.outbox] + [Outbox(Store(tmp_path / "deploybot.db", clock=world.clock.now),
                                        world.tracker, world.config.outbox)]
    barrier = threading.Barrier(2)
    results = []

    def run(box):
        barrier.wait()
        results.append(len(box.deliver().delivered))
    threads = [threading.Thread(target=run, args=(box,)) for box in outboxes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(results) == 30
    keys = [k for _, k in world.tracker.posts]
    assert sorted(keys) == sorted(f"k{n}" for n in range(30))  # none twice
    assert keys == [f"k{n}" for n in range(30)]  # one ticket: strictly in order


# -- stuck items ---------------------------------------------------------------------------------

def test_a_stuck_item_raises_one_alert_and_the_alert_never_alerts_again(tmp_path):
    world = World(tmp_path, durable=True)
    d = _deployment(world)
    world.tracker.ticket("7")
    world.tracker.down = "connection refused"
    world.outbox.enqueue([outboxing.comment(d, "k", "the record", "record")])
    world.outbox.deliver()
    world.clock.advance(minutes=29)
    assert world.outbox.check_stuck() == []
    world.clock.advance(minutes=2)
    said = world.outbox.check_stuck()
    assert len(said) == 1 and "record comment on 7 is still undelivered after 31 min" in said[0]
    assert "connection refused" in said[0]
    alerts = [m for k, m in world.reporter.events if k == "alert"]
    assert alerts == said
    world.reporter.down = "Slack is down too"  # the alert itself gets stuck now and then
    for _ in range(3):
        world.clock.advance(hours=1)
        world.outbox.deliver()
        assert world.outbox.check_stuck() == []
    assert len([m for k, m in world.reporter.events if k == "alert"]) == 1
    assert [e["kind"] for e in world.store.events(d.id)].count("outbox.stuck") == 1


def test_the_scheduler_tick_delivers_and_watches_the_outbox(tmp_path):
    world = World(tmp_path, durable=True)
    tid = world.ready()
    d = world.pipeline.request_deploy(tid, requested_by="alice", target="web@v2")
    world.tracker.down = "connection refused"
    world.pipeline.run(d.id)  # blocked: the tracker cannot be read; Slack got the posts
    assert world.store.deployment(d.id).status is DeploymentStatus.BLOCKED
    assert [k for k, _ in world.reporter.events if k in ("blocked", "finished")] == \
        ["blocked", "finished"]
    assert [i.kind for i in world.outbox.undelivered()] == ["comment"]
    scheduler = DeployScheduler(world.pipeline, tick_seconds=3600)
    world.clock.advance(minutes=31)
    said = scheduler.tick()
    assert any("blocker comment on 7 is still undelivered" in s for s in said)
    world.tracker.down = ""
    world.clock.advance(minutes=10)
    scheduler.tick()
    assert world.outbox.undelivered() == []
    assert len(world.bodies(tid, "**Deployment blocked:**")) == 1


# -- the pipeline's writes: same transaction, durable posts, dedupe -----------------------------

def test_blocked_and_its_messages_are_stored_together_or_not_at_all(tmp_path, monkeypatch):
    world = World(tmp_path, durable=True)
    d = world.store.transition(_deployment(world).id, DeploymentStatus.CHECKING)
    blocker = CheckResult(d.id, "ticket_status", "Ticket status", 3, CheckStatus.FAILED,
                          "status is 'In Progress', not 'Ready for Production'")

    def crash(messages):
        raise RuntimeError("the process died here")
    monkeypatch.setattr(world.outbox, "enqueue", crash)
    with pytest.raises(RuntimeError):
        world.pipeline.finishing.block(d, [blocker])
    assert world.store.deployment(d.id).status is DeploymentStatus.CHECKING  # neither
    assert world.outbox.undelivered() == [] and world.reporter.events == []
    monkeypatch.undo()
    world.reporter.down = "Slack unreachable"
    world.tracker.down = "connection refused"
    d = world.pipeline.finishing.block(d, [blocker])
    assert d.status is DeploymentStatus.BLOCKED  # both
    waiting = world.outbox.undelivered()
    assert [(i.kind, i.payload.get("event")) for i in waiting] == [
        ("post", "blocked"), ("comment", None), ("post", "finished")]
    assert "status is 'In Progress'" in waiting[1].payload["markdown"]


def test_the_record_and_its_deliveries_are_stored_together(tmp_path, monkeypatch):
    world = World(tmp_path)
    tid = world.ready()
    d = world.pipeline.request_deploy(tid, requested_by="alice", target="web@v2")
    real = world.outbox.enqueue
    calls = []

    def crash_on_record(messages):
        messages = list(messages)
        if any(m is not None and m.key.startswith("deploybot-record-") for m in messages):
            calls.append(messages)
            raise RuntimeError("the process died here")
        return real(messages)
    monkeypatch.setattr(world.outbox, "enqueue", crash_on_record)
    d = world.pipeline.run(d.id)
    assert calls  # the crash happened while storing the record's messages
    assert world.store.deployment(d.id).record == ""  # so the record was not stored either
    assert world.outbox.undelivered() == []


def test_slack_down_keeps_the_posts_in_order_and_delivers_them_later(tmp_path):
    world = World(tmp_path, durable=True)
    tid = world.ready()
    world.reporter.down = "connection reset"
    d = world.deploy(tid)
    assert d.status is DeploymentStatus.SUCCEEDED
    assert world.tracker.tickets[tid].status == "Deployed"  # the tracker does not wait for Slack
    assert [i.payload["event"] for i in world.outbox.undelivered()] == ["finished"]
    world.reporter.down = ""
    world.clock.advance(seconds=5)
    world.outbox.deliver()
    assert world.reporter.kinds()[-1] == "finished" and len(world.reporter.records) == 1
    world.clock.advance(minutes=60)
    world.outbox.deliver()
    assert len(world.reporter.records) == 1


def test_the_same_blockers_on_a_rerun_comment_once(world):
    world.tracker.ticket("7", status="In Progress")
    first = world.deploy("7")
    second = world.deploy("7")
    assert first.status is second.status is DeploymentStatus.BLOCKED
    assert len(world.bodies("7", "**Deployment blocked:**")) == 1
    world.tracker.say("7", "bob", "CQ approved")  # one blocker fewer: a different set
    world.deploy("7")
    assert len(world.bodies("7", "**Deployment blocked:**")) == 2


def test_a_move_is_skipped_when_someone_moved_the_ticket_meanwhile(world):
    tid = world.ready()
    d = world.pipeline.request_deploy(tid, requested_by="alice", target="web@v2")
    _tracker_down_from_the_rollout(world)
    world.pipeline.run(d.id)
    world.tracker.down = ""
    world.tracker.transition(tid, "Closed")  # a person closed it while the tracker was away
    world.clock.advance(seconds=5)
    world.outbox.deliver()
    assert world.tracker.tickets[tid].status == "Closed"
    assert world.tracker.moves == [(tid, "Closed")]
    trail = [e["detail"] for e in world.store.events(d.id) if e["kind"] == "outbox.delivered"]
    assert any("not moved: 7 is 'Closed' now, no longer 'Ready for Production'" in t
               for t in trail)


def test_what_the_outbox_keeps_passes_through_the_redaction(world):
    world.store.redact = lambda text: text.replace("s3cr3t", "[redacted]")
    d = _deployment(world)
    world.tracker.ticket("7")
    world.tracker.down = "token s3cr3t refused"
    world.outbox.enqueue([outboxing.comment(d, "k", "the s3cr3t record", "record")])
    world.outbox.deliver()
    item = world.outbox.undelivered()[0]
    assert item.payload["markdown"] == "the [redacted] record"
    assert item.last_error == "Redmine did not answer: token [redacted] refused"
    raw = "\n".join(str(r) for r in world.store.db.query("SELECT * FROM outbox"))
    raw += "\n".join(str(r) for r in world.store.db.query("SELECT * FROM events"))
    assert "s3cr3t" not in raw


def test_a_rejection_and_its_comment_are_stored_together_and_the_comment_waits(tmp_path):
    world = World(tmp_path, durable=True, environments={"production": {
        "production": True, "approvals_required": 1, "approvers": ["bob"]}})
    tid = world.ready()
    d = world.deploy(tid)
    assert d.status is DeploymentStatus.AWAITING_APPROVAL, d.failure
    world.tracker.down = "connection refused"
    world.reporter.down = "Slack unreachable"
    gate = world.pipeline.pending_gates(d.id)[0]
    d = world.pipeline.decide_gate(gate.id, decided_by="bob", approved=False,
                                   reason="not tonight").deployment
    assert d.status is DeploymentStatus.REJECTED
    waiting = world.outbox.undelivered(d.id)
    assert [(i.kind, i.target) for i in waiting] == [("comment", "ticket:7"),
                                                     ("post", f"thread:{d.id}")]
    assert "rejected by bob: not tonight" in waiting[0].payload["markdown"]
    world.tracker.down = world.reporter.down = ""
    world.clock.advance(minutes=1)
    world.outbox.deliver()
    assert len(world.bodies(tid, "**Deployment rejected:**")) == 1
    assert world.reporter.kinds()[-1] == "finished"
