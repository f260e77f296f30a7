"""Several `deploybot run --http` replicas on one real PostgreSQL (issue 12): what Slack sends to
any of them happens exactly once, decided by the database, not by a process's memory.

Real processes (tests/integration/replicas_harness.py), the session's test PostgreSQL
(tests/fakes/postgres.py), a fresh database per test.
"""

from __future__ import annotations

import threading

import pytest

from fakes.slack_harness import ALICE, BOB, DANA
from replicas_harness import Replicas, fresh_database, project_of

pytestmark = pytest.mark.integration


@pytest.fixture(params=["postgresql", "sqlite"])
def replicas(request, tmp_path):
    """Replicas on a fresh PostgreSQL database; also on one SQLite file (replicas on one host)."""
    if request.param == "postgresql":
        db = fresh_database(request.getfixturevalue("postgres_server"))
    else:
        db = str(tmp_path / "deploybot.db")
    with Replicas.create(tmp_path / "replicas", db) as running:
        assert running.store.db.dialect == request.param
        yield running


def at_once(*calls):
    """Run the calls in threads released together; their results in order."""
    barrier = threading.Barrier(len(calls))
    results: list = [None] * len(calls)
    errors: list[BaseException] = []

    def run(i: int, call) -> None:
        barrier.wait()
        try:
            results[i] = call()
        except BaseException as exc:  # re-raised below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=pair) for pair in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    if errors:
        raise errors[0]
    return results


def ephemeral_with(rs: Replicas, user: str, text: str):
    return rs.wait_for(lambda: next((t for t in rs.slack.ephemerals(user) if text in t), None),
                       30, f"an ephemeral message to {user} saying {text!r}")


def thread_message(rs: Replicas, deployment_id: int, text: str):
    """The message of the deployment's Slack thread (root included) that contains `text`."""
    def find():
        ref = rs.store.deployment(deployment_id).thread_ref
        if not ref:
            return None
        root_ts = ref.split(" ")[0].split(":", 1)[1]
        return next((m for m in [rs.slack.messages[root_ts], *rs.slack.thread(root_ts)]
                     if text in m.everything), None)
    return rs.wait_for(find, 30, f"a message of deployment #{deployment_id}'s thread with {text!r}")


def status_of(rs: Replicas, deployment_id: int, *statuses: str, timeout: float = 60):
    return rs.wait_for(lambda: rs.store.deployment(deployment_id).status.value in statuses,
                       timeout, f"deployment #{deployment_id} to become {'/'.join(statuses)}")


def test_a_slack_retry_delivered_to_another_replica_starts_nothing_new(replicas):
    a, b = replicas.start(2)
    ticket = replicas.ready_ticket()
    body = replicas.sender(a).command_body(f"{ticket} web@v2", user=ALICE)
    # Slack's retry carries the same trigger_id (the request key) and X-Slack-Retry-Num.
    answers = at_once(
        lambda: replicas.sender(a).post(body, replicas.sender(a).signed_headers(body)),
        lambda: replicas.sender(b).post(body, replicas.sender(b).signed_headers(
            body, retry_num=1)))
    assert [r.status_code for r in answers] == [200, 200]

    told = ephemeral_with(replicas, ALICE, "Already received: deployment #")
    (d,) = replicas.store.deployments(limit=10)
    assert f"#{d.id}" in told
    status_of(replicas, d.id, "succeeded")
    assert len(replicas.store.deployments(limit=10)) == 1, "one deployment for one request"
    kinds = [e["kind"] for e in replicas.store.events(d.id)]
    assert kinds.count("deploying") == 1, kinds
    assert replicas.compose.running(project_of("staging")) == "demo-web:v2"


def test_two_deploys_of_one_ticket_on_two_replicas_make_one_deployment(replicas):
    a, b = replicas.start(2)
    ticket = replicas.ready_ticket()
    # dana, not carol: carol gave the QA PASS, and nobody passes their own QA.
    # The first rollout waits in `compose up` until both requests have been answered.
    replicas.compose.hold(project_of("staging"))
    answers = at_once(lambda: replicas.sender(a).command(f"{ticket} web@v2", user=ALICE),
                      lambda: replicas.sender(b).command(f"{ticket} web@v2", user=DANA))
    assert [r.status_code for r in answers] == [200, 200]

    refused = replicas.wait_for(
        lambda: [(who, t) for who in (ALICE, DANA) for t in replicas.slack.ephemerals(who)
                 if "already being deployed" in t],
        30, "one of the two to be told the ticket is already being deployed")
    assert len(refused) == 1, refused
    assert ticket in refused[0][1]
    replicas.compose.release(project_of("staging"))
    (d,) = replicas.store.deployments(limit=10)
    status_of(replicas, d.id, "succeeded")
    winner = ALICE if refused[0][0] == DANA else DANA
    assert d.requested_by == {ALICE: "alice", DANA: "dana"}[winner]
    assert len(replicas.store.deployments(limit=10)) == 1


def test_two_clicks_on_one_gate_on_two_replicas_make_one_decision_and_one_rollout(replicas):
    a, b = replicas.start(2)
    ticket = replicas.ready_ticket()
    assert replicas.sender(a).command(f"{ticket} web@v2 to production",
                                      user=ALICE).status_code == 200
    d = replicas.wait_for(lambda: next(iter(replicas.store.deployments(limit=10)), None), 30,
                          "the deployment")
    status_of(replicas, d.id, "awaiting_approval")
    gate = thread_message(replicas, d.id, '"gate_approve"')

    answers = at_once(lambda: replicas.sender(a).click(gate, "gate_approve", user=BOB),
                      lambda: replicas.sender(b).click(gate, "gate_approve", user=BOB))
    assert [r.status_code for r in answers] == [200, 200]
    status_of(replicas, d.id, "succeeded", timeout=60)
    ephemeral_with(replicas, BOB, "was already approved by")

    trail = replicas.store.audit_trail(deployment_id=d.id)
    kinds = [e["kind"] for e in trail]
    assert kinds.count("gate.approved") == 1, kinds
    assert kinds.count("deploying") == 1, kinds
    ups = [c for c in replicas.compose.calls() if " up " in f" {c} "
           and project_of("production") in c]
    assert len(ups) == 1, ups
    assert [g.status.value for g in replicas.store.gates(d.id)] == ["approved"]
    assert len(replicas.store.deployments(limit=10)) == 1
