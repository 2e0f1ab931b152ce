"""The API request log: one row per authenticated request, kept per org (90 days by default)
and listable by the org (`GET /v1/request-logs`).

A row holds the request id, method, route *template* (`/v1/subjects/{subject_id}`, never the
path: no subject id, no query, no body), status, latency and the key id: nothing personal.
The edge (`app.api.edge`) already computes these for the access log; writing the row there
would add a database round trip to every request. Instead the edge offers it to a bounded
in-process queue (`RequestLogBuffer.offer`: a lock and an append, it never waits) and a
background thread (`RequestLogWriter`) stores what is queued in batches, at least every
`FLUSH_INTERVAL_S`. When the queue is full (the database slower than the traffic for a
while) a row is dropped and counted (`wajah_request_log_dropped_total{reason="queue_full"}`);
a batch the database refuses is dropped and counted too (`reason="database"`). The log is a
record of traffic, not of state: the audit log is the record that must never lose a row.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Any

from app.metrics import REQUEST_LOG_DROPPED
from app.runtime import Runtime
from app.services import pages
from app.services.principal import Principal
from app.storage import read_transaction, retention, write_transaction
from app.storage.retention import RequestLogRow

log = logging.getLogger("wajah")

#: Rows waiting at most: at 2,000 requests a second, five seconds of traffic.
QUEUE_CAPACITY = 10_000
#: Rows one INSERT writes at most.
FLUSH_BATCH = 1_000
FLUSH_INTERVAL_S = 1.0


class RequestLogBuffer:
    """Rows the edge offered and the writer has not stored yet; bounded, never blocking."""

    def __init__(self, capacity: int = QUEUE_CAPACITY) -> None:
        self.capacity = capacity
        self.dropped = 0
        self._rows: deque[RequestLogRow] = deque()
        self._lock = threading.Lock()
        self._ready = threading.Event()

    def offer(self, row: RequestLogRow) -> bool:
        """Queue ``row``; False (and counted) when the queue is full."""
        with self._lock:
            if len(self._rows) >= self.capacity:
                self.dropped += 1
                full = True
            else:
                self._rows.append(row)
                full = False
            if len(self._rows) >= FLUSH_BATCH:
                self._ready.set()
        if full:
            REQUEST_LOG_DROPPED.labels("queue_full").inc()
        return not full

    def take(self, limit: int = FLUSH_BATCH) -> list[RequestLogRow]:
        with self._lock:
            taken = [self._rows.popleft() for _ in range(min(limit, len(self._rows)))]
            if len(self._rows) < FLUSH_BATCH:
                self._ready.clear()
            return taken

    def wait(self, timeout: float) -> None:
        """Until a full batch is queued (or `wake`), or ``timeout`` seconds."""
        self._ready.wait(timeout)

    def wake(self) -> None:
        self._ready.set()

    def __len__(self) -> int:
        return len(self._rows)


def store(runtime: Runtime, rows: list[RequestLogRow]) -> int:
    """Write ``rows`` in one transaction; how many were written (0: the batch was dropped)."""
    if not rows:
        return 0
    try:
        with write_transaction(runtime.engine) as conn:
            retention.insert_request_logs(conn, rows)
    except Exception:  # keep serving: the request log may lose rows, requests may not fail
        log.exception("request log: dropped a batch of %d rows", len(rows))
        REQUEST_LOG_DROPPED.labels("database").inc(len(rows))
        return 0
    return len(rows)


def flush(runtime: Runtime, buffer: RequestLogBuffer) -> int:
    """Store everything queued now; how many rows were written."""
    written = 0
    while batch := buffer.take():
        written += store(runtime, batch)
    return written


class RequestLogWriter:
    """The background thread that empties a `RequestLogBuffer` into the database."""

    def __init__(self, runtime: Runtime, buffer: RequestLogBuffer) -> None:
        self.runtime = runtime
        self.buffer = buffer
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="wajah-request-log", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping.is_set():
            self.buffer.wait(FLUSH_INTERVAL_S)
            flush(self.runtime, self.buffer)

    def stop(self) -> None:
        """Stop the thread and store what is still queued."""
        self._stopping.set()
        self.buffer.wake()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        flush(self.runtime, self.buffer)


def request_logs_page(
    runtime: Runtime, principal: Principal, limit: int = 50, cursor: str | None = None
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of the org's requests, newest first; the cursor holds the row number to page
    below."""
    below = pages.decode(cursor)[0] if cursor is not None else None
    if below is not None and below < 1:
        return [], None
    with read_transaction(runtime.engine) as conn:
        rows = retention.request_logs_page(conn, principal.org_id, below, limit)
    items = [
        {
            "request_id": r.request_id,
            "occurred_at": r.occurred_at,
            "method": r.method,
            "route": r.route,
            "status": r.status,
            "latency_ms": r.latency_ms,
            "key_id": r.key_id,
        }
        for r in rows[:limit]
    ]
    next_cursor = pages.encode(rows[limit - 1].id, b"") if len(rows) > limit else None
    return items, next_cursor
