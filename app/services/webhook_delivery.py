"""Delivering webhook events: the worker that empties the outbox, one attempt at a time.

Each round (`deliver_due`) claims a batch of due deliveries (oldest first; on PostgreSQL
`FOR UPDATE SKIP LOCKED` plus a lease, so one replica at a time owns a delivery), sends them
concurrently, and records every attempt. The `DeliveryWorker` thread runs rounds while the
service serves: at once when the last round found a full batch, otherwise after
`WAJAH_WEBHOOKS_POLL_INTERVAL_S`, or sooner when a local commit wrote deliveries.

A request (Standard Webhooks 1.0)::

    POST <endpoint url>
    content-type: application/json
    user-agent: wajah-webhooks/<version>
    webhook-id: evt_<32 hex>         the event id: the same on every retry (dedupe on it)
    webhook-timestamp: <unix seconds of this attempt>
    webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body"> [v1,<previous secret's>]

    <the event's JSON>

Outcome: a 2xx is success. Anything else is a failed attempt with an error class:
`http_status` (any other status), `redirect` (3xx: never followed), `timeout` (10 s in all),
`connection_refused`, `connection_error`, `tls`, `refused_destination` (the host resolves to
an address webhooks may not reach, checked again before every attempt: DNS rebinding),
`signing_unavailable` (the org's keys are gone: a closed org).
A response body is read up to `RESPONSE_BODY_LIMIT` bytes and thrown away.

Retries (`RETRY_DELAYS`): after the first attempt, retries wait about 5 s, 30 s, 2 min,
10 min, 30 min, 1 h, 2 h, 4 h, 8 h and 8 h (each step's second half drawn at random, so
receivers coming back are not hit by every sender at once): 11 attempts over about a day,
then the delivery is `failed`. At-least-once: a replica that dies mid-attempt leaves the
delivery leased; when the lease ends, any replica sends it again under the same webhook-id.

An endpoint whose attempts have all failed for `WAJAH_WEBHOOKS_DISABLE_AFTER_HOURS` (72 by
default; `failing_since`, reset by any success) is disabled (`enabled=false`,
`disabled_reason`, audited); its pending deliveries wait until the org enables it again.
"""

from __future__ import annotations

import logging
import random
import ssl
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from importlib.metadata import PackageNotFoundError, version
from urllib.parse import urlsplit, urlunsplit

import httpx
from standardwebhooks import Webhook

from app.runtime import Runtime
from app.services.principal import record
from app.services.webhook_urls import WebhookDestinationForbiddenError, check_destination
from app.services.webhooks import WebhookNotFoundError, signing_secrets
from app.storage import Connection, read_transaction, utcnow, write_transaction
from app.storage import webhook_deliveries as store
from app.storage.webhook_deliveries import AttemptResult, DueDelivery

log = logging.getLogger("wajah")

#: How long each retry waits after the attempt before it (the second half drawn at random).
RETRY_DELAYS: tuple[timedelta, ...] = tuple(
    timedelta(seconds=s)
    for s in (5, 30, 120, 600, 1800, 3600, 2 * 3600, 4 * 3600, 8 * 3600, 8 * 3600)
)
MAX_ATTEMPTS = len(RETRY_DELAYS) + 1
#: Connect, send and read together: an attempt never takes longer.
ATTEMPT_TIMEOUT_S = 10.0
#: Beyond the longest a round can take, a claim lasts this much longer (see `lease`).
LEASE_MARGIN = timedelta(seconds=20)
#: Bytes of a response body read (then discarded): a receiver cannot make us read more.
RESPONSE_BODY_LIMIT = 4096


def _user_agent() -> str:
    try:
        return f"wajah-webhooks/{version('wajah')}"
    except PackageNotFoundError:  # a source checkout that was never installed
        return "wajah-webhooks/0"


USER_AGENT = _user_agent()


def lease(batch: int, concurrency: int) -> timedelta:
    """How long a round's claim lasts: its deliveries go out `concurrency` at a time, each
    within the timeout, so the last one starts no later than that; past the lease, another
    replica may send them (a replica that died)."""
    waves = -(-batch // concurrency)
    return timedelta(seconds=ATTEMPT_TIMEOUT_S * waves) + LEASE_MARGIN


def retry_delay(attempts_made: int, rng: random.Random | None = None) -> timedelta:
    """The wait before the next attempt after `attempts_made` attempts (1 based)."""
    step = RETRY_DELAYS[min(attempts_made, len(RETRY_DELAYS)) - 1]
    return step / 2 + step / 2 * (rng or random).random()


def signature_headers(
    event_id: str, payload: str, secrets: list[str], signed_at: datetime
) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt: one signature per secret (the current
    one first; during a rotation's overlap the previous one too), space separated."""
    signatures = [Webhook(s).sign(event_id, signed_at, payload) for s in secrets]
    return {
        "webhook-id": event_id,
        "webhook-timestamp": str(int(signed_at.timestamp())),
        "webhook-signature": " ".join(signatures),
        "content-type": "application/json",
        "user-agent": USER_AGENT,
    }


# --- one attempt --------------------------------------------------------------------------------


def _pinned(url: str, address: str) -> tuple[str, str, str]:
    """The URL with its host replaced by the checked address (so the connection goes where
    the check looked, not where a second DNS answer points), the Host header, and the name
    TLS verifies."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    literal = f"[{address}]" if ":" in address else address
    netloc = literal if parts.port is None else f"{literal}:{parts.port}"
    host_header = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=netloc)), host_header, host


def _error_class(exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return "timeout"
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLError):
            return "tls"
        if isinstance(cause, ConnectionRefusedError):
            return "connection_refused"
        cause = cause.__cause__ or cause.__context__
    text = str(exc).lower()
    if "ssl" in text or "certificate" in text:
        return "tls"
    if "refused" in text:
        return "connection_refused"
    return "connection_error"


def attempt(
    client: httpx.Client,
    delivery: DueDelivery,
    secrets: list[str],
    allow_private: bool,
    attempted_at: datetime,
) -> AttemptResult:
    """Send one delivery once; never raises for what the receiver or the network does."""
    started = time.perf_counter()

    def result(status: int | None, error: str | None) -> AttemptResult:
        latency = (time.perf_counter() - started) * 1000
        return AttemptResult(attempted_at, status, round(latency, 3), error)

    try:
        addresses = check_destination(delivery.url, allow_private)
    except WebhookDestinationForbiddenError:
        return result(None, "refused_destination")
    url, host_header, tls_name = _pinned(delivery.url, str(addresses[0]))
    headers = signature_headers(delivery.event_id, delivery.payload, secrets, datetime.now(UTC))
    headers["host"] = host_header
    try:
        with client.stream(
            "POST",
            url,
            content=delivery.payload.encode(),
            headers=headers,
            extensions={"sni_hostname": tls_name},
        ) as response:
            _drain(response)
            status = response.status_code
    except httpx.HTTPError as exc:
        return result(None, _error_class(exc))
    if 200 <= status < 300:
        return result(status, None)
    return result(status, "redirect" if 300 <= status < 400 else "http_status")


def _drain(response: httpx.Response) -> None:
    read = 0
    for chunk in response.iter_raw(1024):
        read += len(chunk)
        if read >= RESPONSE_BODY_LIMIT:
            break


def new_client() -> httpx.Client:
    return httpx.Client(
        timeout=httpx.Timeout(ATTEMPT_TIMEOUT_S),
        follow_redirects=False,
        # Every attempt resolves and checks its destination again: no pooled connection to
        # an address that was checked minutes ago.
        limits=httpx.Limits(max_keepalive_connections=0),
        trust_env=False,
    )


# --- a round ------------------------------------------------------------------------------------


def deliver_due(
    runtime: Runtime,
    now: datetime | None = None,
    *,
    limit: int | None = None,
    client: httpx.Client | None = None,
    stopping: threading.Event | None = None,
) -> int:
    """One round: claim due deliveries (at most `limit`, the batch size by default), send
    them concurrently, record each attempt; returns how many were claimed.

    `now` is the round's clock for what is due, when attempts were made and when retries
    fall (tests pass it to step through the schedule; by default each attempt's own time);
    signatures carry the wall clock, as receivers check it. Once `stopping` is set, claimed
    deliveries not yet sent are handed back, due at once (for the next start or replica)."""
    settings = runtime.settings
    moment = now or utcnow()
    batch = limit or settings.webhooks_batch_size
    until = moment + lease(batch, settings.webhooks_concurrency)
    with read_transaction(runtime.engine) as conn:
        if not store.any_due(conn, moment):
            return 0
    with write_transaction(runtime.engine) as conn:
        claimed = store.claim_due(conn, moment, batch, until)
    if not claimed:
        return 0
    owned = client is None
    http = client or new_client()
    try:
        workers = min(settings.webhooks_concurrency, len(claimed))
        with ThreadPoolExecutor(workers, thread_name_prefix="wajah-webhook") as pool:
            list(pool.map(lambda d: _deliver_one(runtime, http, d, now, stopping), claimed))
    finally:
        if owned:
            http.close()
    return len(claimed)


def _deliver_one(
    runtime: Runtime,
    client: httpx.Client,
    delivery: DueDelivery,
    clock: datetime | None,
    stopping: threading.Event | None,
) -> None:
    now = clock or utcnow()
    if stopping is not None and stopping.is_set():
        with write_transaction(runtime.engine) as conn:
            store.release(conn, delivery, now)
        return
    try:
        secrets = signing_secrets(runtime, delivery.org_id, delivery.endpoint_id, now)
    except WebhookNotFoundError:  # deleted since the claim, its pending deliveries with it
        return
    except Exception:  # the org's keys are gone (a closed org): nothing can be signed
        log.exception("webhooks: no signing secret for endpoint %s", delivery.endpoint_id)
        outcome = AttemptResult(now, None, 0.0, "signing_unavailable")
    else:
        allow_private = runtime.settings.webhooks_allow_private
        outcome = attempt(client, delivery, secrets, allow_private, now)
    _settle(runtime, delivery, outcome)


def _settle(runtime: Runtime, delivery: DueDelivery, outcome: AttemptResult) -> None:
    now = outcome.attempted_at
    made = delivery.attempts + 1
    with write_transaction(runtime.engine) as conn:
        store.record_attempt(conn, delivery, outcome)
        if outcome.error_class is None:
            store.settle(
                conn, delivery, status=store.SUCCEEDED, attempted_at=now, next_attempt_at=None
            )
            store.endpoint_succeeded(conn, delivery.endpoint_id)
            return
        if made >= MAX_ATTEMPTS:
            store.settle(
                conn, delivery, status=store.FAILED, attempted_at=now, next_attempt_at=None
            )
        else:
            store.settle(
                conn,
                delivery,
                status=store.PENDING,
                attempted_at=now,
                next_attempt_at=now + retry_delay(made),
            )
        since = store.endpoint_failed(conn, delivery.endpoint_id, now)
        limit = timedelta(hours=runtime.settings.webhooks_disable_after_hours)
        if since is not None and now - since >= limit:
            _disable(conn, runtime, delivery, since, now)


def _disable(
    conn: Connection, runtime: Runtime, delivery: DueDelivery, since: datetime, now: datetime
) -> None:
    reason = f"every delivery failed since {since.isoformat()}"
    if store.disable_endpoint(conn, delivery.endpoint_id, now, reason):
        log.warning("webhooks: endpoint %s disabled (%s)", delivery.endpoint_id, reason)
        record(
            conn,
            runtime,
            None,
            org_id=delivery.org_id,
            action="webhook.disabled",
            target=delivery.endpoint_id,
            details={"failing_since": since.isoformat(), "last_error": "delivery failed"},
            actor="webhooks",
        )


# --- the worker thread --------------------------------------------------------------------------


class DeliveryWorker:
    """Runs `deliver_due` rounds on a thread of its own while the service serves."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="wajah-webhooks", daemon=True)
        self._client = new_client()
        self._listener: Callable[..., None] | None = None
        self.rounds = 0  # rounds run so far (tests wait for the first)

    def start(self) -> None:
        self._listener = store.nudge_after(self.runtime.engine, self._wake.set)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        # A round in flight finishes its attempts (10 s at most each).
        self._thread.join(timeout=ATTEMPT_TIMEOUT_S + 5)
        if self._listener is not None:  # stop() runs twice: at stop_runtime and close
            store.stop_nudging(self.runtime.engine, self._listener)
            self._listener = None
        self._client.close()

    def _run(self) -> None:
        settings = self.runtime.settings
        while not self._stop.is_set():
            self._wake.clear()
            try:
                sent = deliver_due(self.runtime, client=self._client, stopping=self._stop)
            except Exception:  # the database may be away for a moment: keep going
                log.exception("webhooks: delivery round failed")
                sent = 0
            self.rounds += 1
            if sent < settings.webhooks_batch_size:
                self._wake.wait(settings.webhooks_poll_interval_s)


def start_worker(runtime: Runtime) -> DeliveryWorker | None:
    """The delivery worker of a serving runtime, started (None when turned off)."""
    if not runtime.settings.webhooks_worker:
        return None
    worker = DeliveryWorker(runtime)
    worker.start()
    return worker
