"""A store with a row in every table, for the tests of `deploybot db copy` (both engines)."""

from __future__ import annotations

from datetime import datetime, timezone

from backends.trackers.local import LocalTracker
from bot.models import CheckResult, CheckStatus, GateKind
from bot.outbox_store import OutboxTable
from bot.store import Store

AT = datetime(2026, 11, 26, 12, 0, tzinfo=timezone.utc)


def fixed_clock() -> datetime:
    return AT


def fill(store: Store) -> dict[str, int]:
    """Deployments (finished, waiting at a gate, a dry run), checks, gates (decided and
    pending), a lock, events, an outbox item, ticket times and local tickets with comments.
    Nothing is left for recovery to pick up: every command may open the store."""
    tracker = LocalTracker(store)
    for n in (1, 2):
        tracker.create_ticket(f"Ship v{n}", ticket_id=f"DEMO-{n}", status="Ready for Production")
        tracker.add_comment(f"DEMO-{n}", "QA PASS", author="carol")
    done, _ = store.create_deployment(ticket_id="DEMO-1", service="web", version="v1",
                                      environment="staging", requested_by="alice")
    store.save_check(CheckResult(done.id, "qa_pass", "QA pass", 1, CheckStatus.PASSED,
                                 "carol said QA PASS"))
    approval = store.create_gate(done.id, GateKind.APPROVAL, "approve web@v1")
    store.decide_gate(approval.id, approved=True, decided_by="bob")
    store.update_deployment(done.id, status="succeeded", finished_at=AT.isoformat(),
                            record="web v1 is live", record_posted=1, record_commented=1)
    waiting, _ = store.create_deployment(ticket_id="DEMO-2", service="web", version="v2",
                                         environment="staging", requested_by="alice")
    store.update_deployment(waiting.id, status="awaiting_approval")
    store.create_gate(waiting.id, GateKind.APPROVAL, "approve web@v2")
    store.acquire_lock("staging/web", holder="alice", reason="deploying DEMO-2",
                       deployment_id=waiting.id)
    dry, _ = store.create_deployment(ticket_id="DEMO-2", service="web", version="v2",
                                     environment="staging", requested_by="bob", dry_run=True)
    store.update_deployment(dry.id, status="blocked", finished_at=AT.isoformat())
    OutboxTable(store).add(deployment_id=done.id, kind="slack.post", target="slack",
                           key=f"record:{done.id}", payload={"text": "web v1 is live"})
    store.note_ticket_ready("DEMO-1", created_at=AT, ready_at=AT)
    store.record_event(None, "bob", "note", "a store-wide event")
    return {"done": done.id, "waiting": waiting.id, "dry": dry.id}
