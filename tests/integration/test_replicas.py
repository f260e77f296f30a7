"""Several `deploybot run --http` replicas on one real PostgreSQL (issue 12): what Slack sends to
any of them happens exactly once, decided by the database, not by a process's memory.

Real processes (tests/integration/replicas_harness.py), the session's test PostgreSQL
(tests/fakes/postgres.py), a fresh database per test.
"""

from __future__ import annotations

import threading
import time

import pytest

from fakes.slack_harness import ALICE, BOB, DANA
from fakes.waiting import wait_until
from replicas_harness import Replicas, fresh_database, project_of

pytestmark = pytest.mark.integration

# The shipped defaults, set explicitly: what the hand-over figures below are measured against.
POLL_S, STALE_S = 5.0, 15.0
TAKEOVER_S, RECOVERY_S = 15.0, 30.0  # issue 12's promises
# Deadlines only, so a loaded machine does not fail the test; the figures are the benchmark's.
SLACK = 3


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


@pytest.fixture
def hosts(tmp_path, postgres_server):
    """Replicas that each believe they run on a machine of their own, on one PostgreSQL: one
    can tell another died only from the database (heartbeats, the leader's session lock)."""
    env = {"DEPLOYBOT_LEADER_POLL_SECONDS": f"{POLL_S:g}",
           "DEPLOYBOT_REPLICA_STALE_SECONDS": f"{STALE_S:g}"}
    with Replicas.create(tmp_path / "replicas", fresh_database(postgres_server), extra_env=env,
                         own_hosts=True) as running:
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
    # Each replica acks after asking the store whether it saw the request first: once both
    # answered, the redelivery has been dropped (or, were it not, handed to a worker).
    assert [r.status_code for r in answers] == [200, 200]

    d = replicas.wait_for(lambda: next(iter(replicas.store.deployments(limit=10)), None), 30,
                          "the deployment")
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


@pytest.mark.realtime
def test_a_killed_leader_is_replaced_and_scheduled_work_goes_on(hosts):
    hosts.start(3)
    old = hosts.wait_for(hosts.leader, 30, "one replica to lead")
    old_id = old.healthz()["replica"]
    assert old_id.startswith(f"replica-{old.name}/")
    ticket = hosts.ready_ticket()

    old.kill9()
    killed = time.monotonic()
    try:
        new = wait_until(hosts.leader, SLACK * (TAKEOVER_S + POLL_S), "another replica to lead",
                         every=0.1)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{hosts.logs()}") from None
    took = time.monotonic() - killed
    assert new is not old
    print(f"\ntakeover took {took:.1f} s (promise: {TAKEOVER_S + POLL_S:g} s; measured by benchmarks/replicas.py)")
    new_id = new.healthz()["replica"]
    acquired = [e["detail"] for e in hosts.store.audit_trail() if e["kind"] == "leader.acquired"]
    assert acquired[0] == old_id and acquired[-1] == new_id, acquired
    assert all(e["actor"] == "deploybot" for e in hosts.store.audit_trail()
               if e["kind"] == "leader.acquired")

    # Due only now, after the kill: only the leader's periodic work can start it.
    d = hosts.schedule_due(ticket, "v3")
    status_of(hosts, d.id, "succeeded", timeout=30)
    assert hosts.compose.running(project_of("staging")) == "demo-web:v3"
    drove = [r.name for r in hosts.alive() if f"[deployment {d.id} " in r.log()]
    assert drove == [new.name], drove


@pytest.mark.realtime
def test_a_replica_killed_mid_rollout_is_recovered_by_another(hosts):
    a, b = hosts.start(2)
    project = project_of("staging")
    ticket = hosts.ready_ticket()
    hosts.sender(a).command(f"{ticket} web@v1", user=ALICE)
    first = hosts.wait_for(lambda: next(iter(hosts.store.deployments(limit=5)), None), 30,
                           "the first deployment")
    status_of(hosts, first.id, "succeeded")

    hosts.compose.hold(project)  # v2's `compose up` waits: a slow rollout
    assert hosts.sender(a).command(f"{ticket} web@v2", user=ALICE).status_code == 200
    hosts.wait_for(lambda: hosts.compose.holding(project), 30, "v2's rollout to reach compose up")
    d = hosts.store.deployments(limit=1)[0]
    assert (d.version, d.status.value) == ("v2", "deploying")

    a.kill9()
    killed = time.monotonic()
    hosts.compose.release(project)  # the engine finishes what the dead replica started
    status_of(hosts, d.id, "rolled_back", "succeeded", "failed", "rollback_failed",
              timeout=SLACK * (RECOVERY_S + POLL_S))
    took = time.monotonic() - killed
    d = hosts.store.deployment(d.id)
    print(f"\nrecovery took {took:.1f} s (promise: {RECOVERY_S:g} s)")
    recovered = [e for e in hosts.store.events(d.id) if "recovered by process" in e["detail"]]
    assert recovered and f"process {b.pid} " in recovered[0]["detail"], \
        [e["detail"] for e in hosts.store.events(d.id)]
    assert d.status.value == "rolled_back", (d.status, d.failure)
    assert hosts.compose.running(project) == "demo-web:v1"


def test_socket_mode_replicas_share_slacks_events_and_each_request_happens_once(
        tmp_path, postgres_server):
    """Two replicas each hold a Socket Mode connection; Slack deals the envelopes out over
    both, a redelivery (same trigger) to the other connection: every /deploy runs once."""
    from test_slack_run import APP, SocketModeServer

    with SocketModeServer() as ws, Replicas.create(
            tmp_path / "replicas", fresh_database(postgres_server),
            extra_env={"SLACK_APP_TOKEN": APP}) as running:
        running.slack.socket_url = ws.url
        running.start(2, socket_mode=True)
        wait_until(lambda: ws.sessions == 2, 20, "both replicas connected")
        tickets = [running.ready_ticket(f"Ship {n}") for n in range(6)]
        envelopes = []
        for n, ticket in enumerate(tickets):
            command = {"command": "/deploy", "text": f"{ticket} web@v{n + 2} --dry-run",
                       "user_id": ALICE, "channel_id": "C0STANDUP", "channel_name": "standup",
                       "team_id": "T0FAKE", "trigger_id": f"7.{n}.socket", "api_app_id": "A0"}
            envelopes.append(ws.push("slash_commands", command))
            envelopes.append(ws.push("slash_commands", command))  # redelivered: next connection
        for envelope in envelopes:
            ws.wait_ack(envelope, 20)
        assert set(ws.acked_by[e] for e in envelopes) == {1, 2}, "both connections served"
        store = running.store

        def finished():
            rows = store.deployments(limit=100)
            return rows if len(rows) >= len(tickets) and all(
                d.status.value == "succeeded" for d in rows) else None
        rows = running.wait_for(finished, 90, "every dry run finished")
        assert sorted(d.ticket_id for d in rows) == sorted(tickets), "one deployment per ticket"
        assert len({m.ts for m in running.slack.top_level()
                    if "dry run of deploy of web" in m.text}) == len(tickets)
