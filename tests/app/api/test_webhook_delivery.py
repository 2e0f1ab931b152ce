"""Webhook delivery end to end, on SQLite and PostgreSQL: events from the outbox reach a
real HTTP receiver on loopback, which verifies every request with `standardwebhooks`.

Time is driven by passing `now` to `deliver_due` (never by sleeping through the backoff);
signatures carry the wall clock, which the receiver checks.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from standardwebhooks import Webhook, WebhookVerificationError

from app.crypto import Scope
from app.runtime import Runtime
from app.services import webhook_delivery, webhook_history, webhooks
from app.services.principal import Principal
from app.services.retention import purge_webhook_deliveries
from app.storage import create_engine_for, read_transaction, utcnow, write_transaction
from app.storage import webhook_deliveries as store
from app.storage import webhooks as rows
from tests.app.api.conftest import Org
from tests.app.api.helpers import error_code
from tests.app.api.webhook_receiver import Receiver, free_port, self_signed_tls

EVENT = "enrollment.created"


@pytest.fixture()
def receiver() -> Iterator[Receiver]:
    started = Receiver().start()
    yield started
    started.stop()


@dataclasses.dataclass
class Hooked:
    admin: Principal
    endpoint_id: str
    secret: str


def hook(runtime: Runtime, org: Org, receiver: Receiver, url: str | None = None) -> Hooked:
    admin = Principal(org.org_id, "test", frozenset({Scope.ADMIN}))
    made = webhooks.create_endpoint(runtime, admin, url or receiver.url, [EVENT])
    receiver.secrets.append(made["secret"])
    return Hooked(admin, made["id"], made["secret"])


def emit(runtime: Runtime, org_id: str, n: int = 1, now: datetime | None = None) -> list[str]:
    with write_transaction(runtime.engine) as conn:
        return [
            rows.record_event(conn, org_id, EVENT, {"subject_id": f"s{i}"}, now) for i in range(n)
        ]


def deliveries(runtime: Runtime, org_id: str, endpoint_id: str) -> list[store.DeliveryRow]:
    with read_transaction(runtime.engine) as conn:
        return store.list_deliveries(conn, org_id, endpoint_id=endpoint_id, limit=200)


def attempts(runtime: Runtime, org_id: str, endpoint_id: str) -> list[store.AttemptRow]:
    with read_transaction(runtime.engine) as conn:
        return store.list_attempts(conn, org_id, endpoint_id=endpoint_id, limit=200)


def drain(runtime: Runtime, now: datetime) -> int:
    """Rounds until nothing is due at `now` (other tests' leftovers in the shared database
    may be due too: each round sends them once, which is harmless)."""
    total = 0
    while sent := webhook_delivery.deliver_due(runtime, now):
        total += sent
    return total


def test_a_delivery_verifies_at_the_receiver(
    runtime: Runtime, new_org: Callable[[], Org], receiver: Receiver
) -> None:
    org = new_org()
    hooked = hook(runtime, org, receiver)
    (event_id,) = emit(runtime, org.org_id)
    drain(runtime, utcnow())
    (got,) = receiver.wait_for(1)
    assert got.verified, got.error
    assert got.headers["webhook-id"] == event_id
    assert got.headers["content-type"] == "application/json"
    assert got.headers["user-agent"].startswith("wajah-webhooks/")
    assert got.path == "/hooks/wajah"
    body = Webhook(hooked.secret).verify(got.body, got.headers)
    assert (body["id"], body["type"], body["org_id"]) == (event_id, EVENT, org.org_id)
    (row,) = deliveries(runtime, org.org_id, hooked.endpoint_id)
    assert (row.status, row.attempts, row.last_status_code, row.last_error_class) == (
        "succeeded",
        1,
        204,
        None,
    )
    (tried,) = attempts(runtime, org.org_id, hooked.endpoint_id)
    assert (tried.status_code, tried.error_class) == (204, None)
    assert tried.latency_ms >= 0


def test_a_tampered_body_or_an_old_timestamp_fails_the_receivers_check(
    runtime: Runtime, new_org: Callable[[], Org], receiver: Receiver
) -> None:
    org = new_org()
    hooked = hook(runtime, org, receiver)
    emit(runtime, org.org_id)
    drain(runtime, utcnow())
    (got,) = receiver.wait_for(1)
    receiving = Webhook(hooked.secret)
    receiving.verify(got.body, got.headers)
    with pytest.raises(WebhookVerificationError, match="No matching signature"):
        receiving.verify(got.body.replace(b"s0", b"s1"), got.headers)
    # The same request replayed six minutes later, or re-stamped without the secret.
    old = datetime.now(UTC) - timedelta(minutes=6)
    replayed = {
        **got.headers,
        "webhook-timestamp": str(int(old.timestamp())),
        "webhook-signature": receiving.sign(got.headers["webhook-id"], old, got.body.decode()),
    }
    with pytest.raises(WebhookVerificationError, match="too old"):
        receiving.verify(got.body, replayed)
    restamped = {**got.headers, "webhook-timestamp": str(int(datetime.now(UTC).timestamp()) + 1)}
    with pytest.raises(WebhookVerificationError):
        receiving.verify(got.body, restamped)


def test_both_secrets_sign_during_a_rotation_overlap(
    runtime: Runtime, new_org: Callable[[], Org], receiver: Receiver
) -> None:
    org = new_org()
    hooked = hook(runtime, org, receiver)
    rotated = webhooks.rotate_secret(runtime, hooked.admin, hooked.endpoint_id, timedelta(hours=1))
    emit(runtime, org.org_id)
    drain(runtime, utcnow())
    (got,) = receiver.wait_for(1)
    assert len(got.headers["webhook-signature"].split(" ")) == 2
    # A receiver holding either secret accepts the delivery.
    Webhook(rotated["secret"]).verify(got.body, got.headers)
    Webhook(hooked.secret).verify(got.body, got.headers)
    # After the overlap only the new secret signs.
    emit(runtime, org.org_id)
    drain(runtime, utcnow() + timedelta(hours=2))
    later = receiver.wait_for(2)[1]
    assert len(later.headers["webhook-signature"].split(" ")) == 1
    Webhook(rotated["secret"]).verify(later.body, later.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(hooked.secret).verify(later.body, later.headers)


def test_receiver_down_then_failing_then_up_is_delivered_after_retries(
    runtime: Runtime, new_org: Callable[[], Org]
) -> None:
    port = free_port()
    receiver = Receiver()
    org = new_org()
    hooked = hook(runtime, org, receiver, f"http://127.0.0.1:{port}/hooks/wajah")
    (event_id,) = emit(runtime, org.org_id)
    start = utcnow()
    drain(runtime, start)  # nothing listens: refused
    (row,) = deliveries(runtime, org.org_id, hooked.endpoint_id)
    assert (row.status, row.attempts, row.last_error_class) == ("pending", 1, "connection_refused")
    assert row.next_attempt_at is not None
    assert start + timedelta(seconds=2.5) <= row.next_attempt_at <= start + timedelta(seconds=5)
    drain(runtime, start + timedelta(seconds=2))  # not due yet
    assert deliveries(runtime, org.org_id, hooked.endpoint_id)[0].attempts == 1
    receiver.mode = "fail"
    receiver.start(port)
    try:
        drain(runtime, start + timedelta(seconds=5))
        (row,) = deliveries(runtime, org.org_id, hooked.endpoint_id)
        assert (row.status, row.attempts, row.last_status_code, row.last_error_class) == (
            "pending",
            2,
            500,
            "http_status",
        )
        receiver.mode = "ok"
        drain(runtime, start + timedelta(seconds=40))
        (row,) = deliveries(runtime, org.org_id, hooked.endpoint_id)
        assert (row.status, row.attempts, row.last_status_code) == ("succeeded", 3, 204)
        got = receiver.wait_for(2)
        assert [g.headers["webhook-id"] for g in got] == [event_id, event_id]
        assert all(g.verified for g in got)
        assert [a.error_class for a in attempts(runtime, org.org_id, hooked.endpoint_id)] == [
            "connection_refused",
            "http_status",
            None,
        ]
    finally:
        receiver.stop()


def test_a_delivery_fails_for_good_after_the_schedule(
    runtime: Runtime, new_org: Callable[[], Org], receiver: Receiver
) -> None:
    receiver.mode = "fail"
    org = new_org()
    hooked = hook(runtime, org, receiver)
    emit(runtime, org.org_id)
    moment = utcnow()
    for step in (timedelta(0), *webhook_delivery.RETRY_DELAYS):
        moment += step
        drain(runtime, moment)
    (row,) = deliveries(runtime, org.org_id, hooked.endpoint_id)
    assert (row.status, row.attempts) == ("failed", webhook_delivery.MAX_ATTEMPTS)
    assert row.completed_at is not None
    assert len(receiver.received) == webhook_delivery.MAX_ATTEMPTS == 11
    assert sum(webhook_delivery.RETRY_DELAYS, timedelta()) == timedelta(
        hours=23, minutes=42, seconds=35
    )


def test_a_redirect_is_not_followed(
    runtime: Runtime, new_org: Callable[[], Org], receiver: Receiver
) -> None:
    receiver.mode = "redirect"
    org = new_org()
    hooked = hook(runtime, org, receiver)
    emit(runtime, org.org_id)
    drain(runtime, utcnow())
    got = receiver.wait_for(1)
    assert [g.path for g in got] == ["/hooks/wajah"]  # never /elsewhere
    (row,) = deliveries(runtime, org.org_id, hooked.endpoint_id)
    assert (row.status, row.last_status_code, row.last_error_class) == (
        "pending",
        302,
        "redirect",
    )


def test_a_big_response_body_is_not_read_whole(
    runtime: Runtime, new_org: Callable[[], Org], receiver: Receiver
) -> None:
    receiver.mode = "big"
    org = new_org()
    hooked = hook(runtime, org, receiver)
    emit(runtime, org.org_id)
    drain(runtime, utcnow())
    receiver.wait_for(1)
    (row,) = deliveries(runtime, org.org_id, hooked.endpoint_id)
    assert (row.status, row.last_status_code) == ("succeeded", 200)
    # The sender hung up after a few KiB: the receiver could not write its 64 MiB.
    for _ in range(100):
        if receiver.body_write_failed:
            break
        threading.Event().wait(0.05)
    assert receiver.body_write_failed
    assert receiver.body_bytes_sent < receiver.big_bytes


def test_a_private_destination_is_refused_at_delivery(
    runtime: Runtime, new_org: Callable[[], Org], receiver: Receiver
) -> None:
    org = new_org()
    hooked = hook(runtime, org, receiver)  # created while private destinations were allowed
    emit(runtime, org.org_id)
    strict = dataclasses.replace(
        runtime, settings=runtime.settings.model_copy(update={"webhooks_allow_private": False})
    )
    drain(strict, utcnow())
    assert receiver.received == []
    (row,) = deliveries(runtime, org.org_id, hooked.endpoint_id)
    assert (row.status, row.last_status_code, row.last_error_class) == (
        "pending",
        None,
        "refused_destination",
    )


def test_concurrent_workers_never_send_a_delivery_twice(
    runtime: Runtime, new_org: Callable[[], Org], receiver: Receiver
) -> None:
    receiver.stall_s, receiver.mode = 0.05, "stall"
    org = new_org()
    hooked = hook(runtime, org, receiver)
    events = emit(runtime, org.org_id, 24)
    # Two replicas: each its own engine (connection pool) over the same database.
    replicas = [
        dataclasses.replace(
            runtime, engine=create_engine_for(runtime.settings.resolved_database_url)
        )
        for _ in range(2)
    ]
    moment, start = utcnow(), threading.Barrier(2)
    sent = [0, 0]

    def round_of(n: int) -> None:
        start.wait()
        sent[n] = webhook_delivery.deliver_due(replicas[n], moment, limit=12)

    threads = [threading.Thread(target=round_of, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for replica in replicas:
        replica.engine.dispose()
    drain(runtime, moment)
    got = receiver.wait_for(24)
    ids = [g.headers["webhook-id"] for g in got]
    assert sorted(ids) == sorted(events)  # each exactly once
    assert all(r.status == "succeeded" for r in deliveries(runtime, org.org_id, hooked.endpoint_id))
    if runtime.settings.uses_postgresql:
        assert sent == [12, 12]  # both claimed at once, disjoint batches (SKIP LOCKED)


def test_an_endpoint_failing_for_the_period_is_disabled_and_enabled_again(
    client: TestClient, runtime: Runtime, new_org: Callable[[], Org], receiver: Receiver
) -> None:
    receiver.mode = "fail"
    org = new_org()
    hooked = hook(runtime, org, receiver)
    start = utcnow()
    emit(runtime, org.org_id, now=start)
    drain(runtime, start)
    endpoint = webhooks.get_endpoint(runtime, hooked.admin, hooked.endpoint_id)
    assert endpoint["enabled"] is True
    # Three days on, the next failure disables it.
    later = start + timedelta(hours=72)
    emit(runtime, org.org_id, now=later)
    drain(runtime, later)
    endpoint = webhooks.get_endpoint(runtime, hooked.admin, hooked.endpoint_id)
    assert endpoint["enabled"] is False
    assert "failed since" in endpoint["disabled_reason"]
    audit = client.get("/v1/audit", headers=org.admin).json()["items"]
    disabled = [e for e in audit if e["action"] == "webhook.disabled"]
    assert [(e["target"], e["actor"]) for e in disabled] == [(hooked.endpoint_id, "webhooks")]
    with read_transaction(runtime.engine) as conn:
        count = store.list_deliveries(conn, org.org_id, endpoint_id=hooked.endpoint_id)
    assert [d.status for d in count] == ["pending", "pending"]
    before = len(receiver.received)
    drain(runtime, later + timedelta(hours=9))  # its deliveries wait
    assert len(receiver.received) == before
    # The org enables it again: the waiting deliveries go out.
    receiver.mode = "ok"
    webhooks.update_endpoint(runtime, hooked.admin, hooked.endpoint_id, {"enabled": True})
    drain(runtime, later + timedelta(hours=9))
    statuses = [d.status for d in deliveries(runtime, org.org_id, hooked.endpoint_id)]
    assert statuses == ["succeeded", "succeeded"]
    endpoint = webhooks.get_endpoint(runtime, hooked.admin, hooked.endpoint_id)
    assert (endpoint["enabled"], endpoint["disabled_reason"]) == (True, None)


def test_history_per_endpoint_and_per_event_and_redelivery(
    runtime: Runtime, new_org: Callable[[], Org], receiver: Receiver
) -> None:
    org = new_org()
    hooked = hook(runtime, org, receiver)
    other = hook(runtime, org, receiver)
    events = emit(runtime, org.org_id, 3)
    drain(runtime, utcnow())
    first, cursor = webhook_history.deliveries_to_endpoint(
        runtime, hooked.admin, hooked.endpoint_id, limit=2
    )
    assert cursor is not None
    rest, end = webhook_history.deliveries_to_endpoint(
        runtime, hooked.admin, hooked.endpoint_id, limit=2, cursor=cursor
    )
    assert end is None
    listed = first + rest
    assert sorted(d["event_id"] for d in listed) == sorted(events)
    assert {d["webhook_id"] for d in listed} == {hooked.endpoint_id}
    assert {(d["status"], d["attempts"], d["last_status_code"]) for d in listed} == {
        ("succeeded", 1, 204)
    }
    per_event, _ = webhook_history.deliveries_of_event(runtime, hooked.admin, events[0])
    assert sorted(d["webhook_id"] for d in per_event) == sorted(
        [hooked.endpoint_id, other.endpoint_id]
    )
    delivery_id = listed[0]["id"]
    again = webhook_history.redeliver(runtime, hooked.admin, hooked.endpoint_id, delivery_id)
    assert (again["status"], again["next_attempt_at"] is not None) == ("pending", True)
    # Asking twice sends it once.
    webhook_history.redeliver(runtime, hooked.admin, hooked.endpoint_id, delivery_id)
    drain(runtime, utcnow())
    got = receiver.wait_for(7)
    assert len(got) == 7
    assert got[-1].headers["webhook-id"] == listed[0]["event_id"]
    detail = webhook_history.get_delivery(runtime, hooked.admin, hooked.endpoint_id, delivery_id)
    assert (detail["status"], detail["attempts"]) == ("succeeded", 2)
    assert [a["status_code"] for a in detail["attempt_log"]] == [204, 204]


def test_another_orgs_ids_are_not_found(
    runtime: Runtime, new_org: Callable[[], Org], receiver: Receiver
) -> None:
    mine, theirs = new_org(), new_org()
    hooked = hook(runtime, mine, receiver)
    (event_id,) = emit(runtime, mine.org_id)
    drain(runtime, utcnow())
    (delivery,) = deliveries(runtime, mine.org_id, hooked.endpoint_id)
    stranger = Principal(theirs.org_id, "test", frozenset({Scope.ADMIN}))
    with pytest.raises(webhooks.WebhookNotFoundError):
        webhook_history.deliveries_to_endpoint(runtime, stranger, hooked.endpoint_id)
    with pytest.raises(webhook_history.WebhookEventNotFoundError):
        webhook_history.deliveries_of_event(runtime, stranger, event_id)
    with pytest.raises(webhooks.WebhookNotFoundError):
        webhook_history.redeliver(runtime, stranger, hooked.endpoint_id, delivery.id)
    with pytest.raises(webhook_history.WebhookDeliveryNotFoundError):
        webhook_history.get_delivery(runtime, hooked.admin, hooked.endpoint_id, "dlv_" + "0" * 32)
    assert deliveries(runtime, mine.org_id, hooked.endpoint_id)[0].status == "succeeded"


def test_retention_purges_history_older_than_the_orgs_period(
    runtime: Runtime, new_org: Callable[[], Org], receiver: Receiver
) -> None:
    org = new_org()
    hooked = hook(runtime, org, receiver)
    old = utcnow() - timedelta(days=31)
    (old_event,) = emit(runtime, org.org_id, now=old)
    drain(runtime, old)
    (recent_event,) = emit(runtime, org.org_id)
    drain(runtime, utcnow())
    assert len(attempts(runtime, org.org_id, hooked.endpoint_id)) == 2
    purged = purge_webhook_deliveries(runtime)
    assert purged[org.org_id] == 3  # the old attempt, its delivery, its event
    left = deliveries(runtime, org.org_id, hooked.endpoint_id)
    assert [d.event_id for d in left] == [recent_event]
    assert [a.event_id for a in attempts(runtime, org.org_id, hooked.endpoint_id)] == [recent_event]
    with read_transaction(runtime.engine) as conn:
        assert rows.find_event(conn, org.org_id, old_event) is None
        assert rows.find_event(conn, org.org_id, recent_event) is not None


def test_the_history_api_lists_shows_and_redelivers(
    client: TestClient, runtime: Runtime, new_org: Callable[[], Org], receiver: Receiver
) -> None:
    org, stranger = new_org(), new_org()
    hooked = hook(runtime, org, receiver)
    (event_id,) = emit(runtime, org.org_id)
    drain(runtime, utcnow())
    base = f"/v1/webhooks/{hooked.endpoint_id}/deliveries"
    page = client.get(base, headers=org.admin)
    assert page.status_code == 200, page.text
    (listed,) = page.json()["items"]
    assert page.json()["next_cursor"] is None
    assert (listed["event_id"], listed["status"], listed["attempts"]) == (event_id, "succeeded", 1)
    per_event = client.get(f"/v1/webhook-events/{event_id}/deliveries", headers=org.admin)
    assert per_event.json()["items"] == [listed]
    detail = client.get(f"{base}/{listed['id']}", headers=org.admin).json()
    assert [(a["status_code"], a["error_class"]) for a in detail["attempt_log"]] == [(204, None)]
    again = client.post(f"{base}/{listed['id']}/redeliver", headers=org.admin)
    assert again.status_code == 202, again.text
    assert again.json()["status"] == "pending"
    repeat = client.post(f"{base}/{listed['id']}/redeliver", headers=org.admin)
    assert repeat.status_code == 202
    drain(runtime, utcnow())
    assert [g.headers["webhook-id"] for g in receiver.wait_for(2)] == [event_id, event_id]
    audit = client.get("/v1/audit", headers=org.admin).json()["items"]
    assert [e["action"] for e in audit].count("webhook.redeliver") == 1
    # Another org's ids, garbage ids and cursors: clear 4xx, nothing changed.
    foreign = [
        ("get", base),
        ("get", f"{base}/{listed['id']}"),
        ("get", f"/v1/webhook-events/{event_id}/deliveries"),
        ("post", f"{base}/{listed['id']}/redeliver"),
    ]
    for method, path in foreign:
        answer = client.request(method.upper(), path, headers=stranger.admin)
        assert answer.status_code == 404, (method, path)
        assert error_code(answer).startswith("webhook_"), (method, path)
    for path, code in (
        ("/v1/webhooks/wh_nothex/deliveries", "webhook_not_found"),
        (f"{base}/dlv_{'0' * 32}", "webhook_delivery_not_found"),
        (f"{base}/{'x' * 5000}", "webhook_delivery_not_found"),
        (f"/v1/webhook-events/evt_{'f' * 32}/deliveries", "webhook_event_not_found"),
    ):
        answer = client.get(path, headers=org.admin)
        assert (answer.status_code, error_code(answer)) == (404, code), path
    bad_cursor = client.get(base, headers=org.admin, params={"cursor": "%%%"})
    assert (bad_cursor.status_code, error_code(bad_cursor)) == (422, "invalid_cursor")
    bad_limit = client.get(base, headers=org.admin, params={"limit": 0})
    assert (bad_limit.status_code, error_code(bad_limit)) == (422, "invalid_request")
    unauthenticated = client.get(base)
    assert unauthenticated.status_code == 401
    after = client.get(f"{base}/{listed['id']}", headers=org.admin).json()
    assert (after["status"], after["attempts"]) == ("succeeded", 2)


def test_the_worker_is_woken_by_a_commit_not_its_poll(
    runtime: Runtime, new_org: Callable[[], Org], receiver: Receiver
) -> None:
    """The worker polls once a minute here: only the wake-up can deliver in time. SQLite: the
    committing connection's nudge in this process. PostgreSQL: the event is written by
    another engine (another replica), and the change feed's `wh:due` notification wakes it."""
    org = new_org()
    hooked = hook(runtime, org, receiver)
    slow_poll = runtime.settings.model_copy(update={"webhooks_poll_interval_s": 60})
    served = dataclasses.replace(runtime, settings=slow_poll)
    worker = webhook_delivery.DeliveryWorker(served)
    worker.start()
    runtime.background.append(worker)  # where the change feed finds it
    other = create_engine_for(runtime.settings.resolved_database_url)
    try:
        for _ in range(600):
            if worker.rounds:
                break
            threading.Event().wait(0.05)
        assert worker.rounds >= 1
        writer = dataclasses.replace(
            runtime, engine=other if runtime.settings.uses_postgresql else runtime.engine
        )
        (event_id,) = emit(writer, org.org_id)
        (got,) = receiver.wait_for(1, timeout=30)
        assert got.headers["webhook-id"] == event_id and got.verified
    finally:
        runtime.background.remove(worker)
        worker.stop()
        other.dispose()
    assert [d.status for d in deliveries(runtime, org.org_id, hooked.endpoint_id)] == ["succeeded"]


def test_an_untrusted_certificate_is_a_tls_failure(
    runtime: Runtime, new_org: Callable[[], Org], tmp_path: Path
) -> None:
    receiver = Receiver(tls=self_signed_tls(tmp_path)).start()
    try:
        org = new_org()
        hooked = hook(runtime, org, receiver)
        emit(runtime, org.org_id)
        drain(runtime, utcnow())
        assert receiver.received == []
        (row,) = deliveries(runtime, org.org_id, hooked.endpoint_id)
        assert (row.status, row.last_status_code, row.last_error_class) == (
            "pending",
            None,
            "tls",
        )
    finally:
        receiver.stop()


def test_a_receiver_slower_than_the_timeout_is_a_timeout(
    runtime: Runtime, new_org: Callable[[], Org], receiver: Receiver
) -> None:
    receiver.mode, receiver.stall_s = "stall", 3.0
    org = new_org()
    hooked = hook(runtime, org, receiver)
    emit(runtime, org.org_id)
    # The service's 10 s, shortened for the test through the round's own client.
    with httpx.Client(timeout=httpx.Timeout(0.5), follow_redirects=False) as quick:
        while webhook_delivery.deliver_due(runtime, utcnow(), client=quick):
            pass
    (row,) = deliveries(runtime, org.org_id, hooked.endpoint_id)
    assert (row.status, row.last_status_code, row.last_error_class) == (
        "pending",
        None,
        "timeout",
    )
    assert len(receiver.wait_for(1)) == 1


def test_a_stopping_worker_hands_its_claims_back_unsent(
    runtime: Runtime, new_org: Callable[[], Org], receiver: Receiver
) -> None:
    org = new_org()
    hooked = hook(runtime, org, receiver)
    emit(runtime, org.org_id, 3)
    moment, stopping = utcnow(), threading.Event()
    stopping.set()
    while webhook_delivery.deliver_due(runtime, moment, stopping=stopping):
        if all(
            d.next_attempt_at == moment for d in deliveries(runtime, org.org_id, hooked.endpoint_id)
        ):
            break
    assert receiver.received == []
    rows_now = deliveries(runtime, org.org_id, hooked.endpoint_id)
    assert [(d.status, d.attempts, d.next_attempt_at) for d in rows_now] == [
        ("pending", 0, moment)
    ] * 3
    drain(runtime, moment)
    assert len(receiver.wait_for(3)) == 3


def test_an_orgs_own_webhook_days_decides_what_is_purged(
    client: TestClient, runtime: Runtime, new_org: Callable[[], Org], receiver: Receiver
) -> None:
    short, default = new_org(), new_org()
    patched = client.patch(
        "/v1/org/settings", headers=short.admin, json={"retention": {"webhook_days": 5}}
    )
    assert patched.status_code == 200, patched.text
    refused = client.patch(
        "/v1/org/settings", headers=short.admin, json={"retention": {"webhook_days": 0}}
    )
    assert refused.status_code == 422
    six_days_ago = utcnow() - timedelta(days=6)
    hooks = {org.org_id: hook(runtime, org, receiver) for org in (short, default)}
    for org in (short, default):
        emit(runtime, org.org_id, now=six_days_ago)
    drain(runtime, six_days_ago)
    purged = purge_webhook_deliveries(runtime)
    assert purged.get(short.org_id) == 3
    assert default.org_id not in purged
    assert deliveries(runtime, short.org_id, hooks[short.org_id].endpoint_id) == []
    kept = deliveries(runtime, default.org_id, hooks[default.org_id].endpoint_id)
    assert [d.status for d in kept] == ["succeeded"]
    audit = client.get("/v1/audit", headers=short.admin).json()["items"]
    assert "retention.purge_webhook_history" in [e["action"] for e in audit]
