"""Webhook delivery: event-to-delivery latency, deliveries per second, and what the outbox
adds to an enroll (issue 20).

    python -m benchmarks.webhooks [--quick] [--postgres]

A serving runtime in this process (SQLite file by default; ``--postgres`` a fresh database
on ``$WAJAH_BENCH_POSTGRES_URL``, dropped after) with the delivery worker running as in
`wajah serve`, and a real HTTP receiver on loopback that verifies every request with
`standardwebhooks` (tests/app/api/webhook_receiver.py).

* **latency**: an event is committed (`record_event` in its own write transaction), then the
  clock runs until the receiver has it; one event at a time. The worker is woken by the
  commit (the connection's nudge), not by its 1 s poll.
* **throughput**: a burst of events committed in one transaction, until the receiver has
  them all (batch 50, 8 at once: the defaults).
* **enroll cost**: `enroll_subject` (one 640×480 capture) for an org with one endpoint
  subscribed to `enrollment.created` against the same enroll for an org with none,
  interleaved sample by sample (`time_alternating`); and the outbox write alone: a change's
  write transaction (an audit row) with `record_event` fanning out to one endpoint against
  the same for an org with none (which writes nothing: one indexed read). Each with the
  worker running (it delivers the hooked org's events meanwhile, on the same cores) and
  with it stopped (the outbox rows alone).
"""

from __future__ import annotations

import argparse
import base64
import os
import secrets
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from benchmarks.common import print_table, summarise, time_alternating, write_results

POSTGRES_URL = os.environ.get(
    "WAJAH_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


@contextmanager
def database_url(work: Path, postgres: bool) -> Iterator[str]:
    if not postgres:
        yield f"sqlite:///{work / 'wajah.db'}"
        return
    admin = sa.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    name = f"wajah_bench_webhooks_{secrets.token_hex(4)}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield sa.make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def start(work: Path, url: str) -> Any:
    from app.services.lifecycle import start_runtime
    from app.settings import Settings

    models = Path(os.environ.get("WAJAH_MODEL_CACHE_DIR", work / "models"))
    settings = Settings(
        home=work / "home",
        database_url=url,
        root_key=base64.b64encode(os.urandom(32)).decode(),  # type: ignore[arg-type]
        model_cache_dir=models,
        webhooks_allow_private=True,
    )
    return start_runtime(settings)


def org_with_endpoint(runtime: Any, receiver: Any, events: list[str] | None) -> Any:
    """A new org (its admin principal), with one endpoint at the receiver unless None."""
    from app.crypto import Scope
    from app.services import webhooks
    from app.services.orgs import create_org
    from app.services.principal import Principal

    org_id, _ = create_org(runtime, "Bench Bank")
    admin = Principal(org_id, "bench", frozenset({Scope.ADMIN}))
    if events is not None:
        made = webhooks.create_endpoint(runtime, admin, receiver.url, events)
        receiver.secrets.append(made["secret"])
    return admin


def emit(runtime: Any, org_id: str, count: int) -> None:
    from app.storage import webhooks as rows
    from app.storage import write_transaction

    with write_transaction(runtime.engine) as conn:
        for n in range(count):
            rows.record_event(conn, org_id, "enrollment.created", {"subject_id": f"b{n}"})


def latency(runtime: Any, receiver: Any, admin: Any, samples: int) -> dict[str, Any]:
    timings = []
    for _ in range(samples):
        expected = len(receiver.received) + 1
        emit(runtime, admin.org_id, 1)
        committed = time.time()
        got = receiver.wait_for(expected, timeout=30)
        timings.append((got[-1].at - committed) * 1000)
    assert all(r.verified for r in receiver.received)
    return summarise(timings, 0)


def throughput(runtime: Any, receiver: Any, admin: Any, burst: int) -> dict[str, Any]:
    expected = len(receiver.received) + burst
    started = time.perf_counter()
    emit(runtime, admin.org_id, burst)
    receiver.wait_for(expected, timeout=300)
    seconds = time.perf_counter() - started
    return {"events": burst, "seconds": round(seconds, 3), "per_second": round(burst / seconds, 1)}


def enroll_cost(runtime: Any, receiver: Any, samples: int, warmup: int) -> dict[str, Any]:
    from app.services.principal import record
    from app.services.subjects import CaptureBundle, enroll_subject
    from app.services.webhook_delivery import DeliveryWorker
    from app.storage import webhooks as rows
    from app.storage import write_transaction
    from benchmarks.pipeline import single_face_jpeg

    hooked = org_with_endpoint(runtime, receiver, ["enrollment.created"])
    plain = org_with_endpoint(runtime, receiver, None)
    bundle = CaptureBundle([single_face_jpeg()])
    counter = iter(range(10**9))

    def enroll(admin: Any) -> Any:
        return lambda: enroll_subject(runtime, admin, f"cust-{next(counter)}", bundle)

    enrolls = time_alternating(
        {"one endpoint": enroll(hooked), "no endpoint": enroll(plain)}, samples, warmup
    )

    def outbox(admin: Any) -> Any:
        # A change's transaction: its audit row (so both commit a write, as a real change
        # does: the fsync is paid either way) and the outbox write.
        def write() -> None:
            with write_transaction(runtime.engine) as conn:
                record(
                    conn,
                    runtime,
                    admin,
                    org_id=admin.org_id,
                    action="bench.change",
                    target="x",
                    details={"n": 1},
                )
                rows.record_event(conn, admin.org_id, "enrollment.created", {"subject_id": "x"})

        return write

    calls = {"one endpoint": outbox(hooked), "no endpoint": outbox(plain)}
    writes = time_alternating(calls, samples * 4, warmup)
    # The same with the worker stopped: the outbox rows alone, without the worker's own
    # write transactions (claim, settle) queueing with them for SQLite's one writer.
    for worker in runtime.background:
        if isinstance(worker, DeliveryWorker):
            worker.stop()
    alone = time_alternating(calls, samples * 4, warmup)
    enrolls_alone = time_alternating(
        {"one endpoint": enroll(hooked), "no endpoint": enroll(plain)}, samples, warmup
    )
    return {
        "enroll": {name: summarise(t, warmup) for name, t in enrolls.items()},
        "enroll_worker_stopped": {name: summarise(t, warmup) for name, t in enrolls_alone.items()},
        "outbox_transaction": {name: summarise(t, warmup) for name, t in writes.items()},
        "outbox_transaction_worker_stopped": {
            name: summarise(t, warmup) for name, t in alone.items()
        },
    }


def run(quick: bool, postgres: bool) -> dict[str, Any]:
    from app.services.lifecycle import stop_runtime
    from tests.app.api.webhook_receiver import Receiver

    with tempfile.TemporaryDirectory() as scratch, database_url(Path(scratch), postgres) as url:
        receiver = Receiver().start()
        runtime = start(Path(scratch), url)
        try:
            admin = org_with_endpoint(runtime, receiver, ["enrollment.created"])
            emit(runtime, admin.org_id, 1)  # warm the worker, the client and the receiver
            receiver.wait_for(1)
            figures = {
                "database": "postgresql" if postgres else "sqlite",
                "latency": latency(runtime, receiver, admin, 30 if quick else 200),
                "throughput": throughput(runtime, receiver, admin, 200 if quick else 2000),
                **enroll_cost(runtime, receiver, 15 if quick else 100, 3 if quick else 10),
            }
        finally:
            stop_runtime(runtime)
            receiver.stop()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--postgres", action="store_true", help="PostgreSQL instead of SQLite")
    args = parser.parse_args()
    figures = run(args.quick, args.postgres)
    lat, thr = figures["latency"], figures["throughput"]
    print_table(
        f"Webhook delivery on loopback ({figures['database']}, worker defaults)",
        ["figure", "p50 ms", "p99 ms", "samples"],
        [["event committed -> receiver has it", lat["p50_ms"], lat["p99_ms"], lat["samples"]]],
    )
    print_table(
        "Throughput (one burst, committed in one transaction)",
        ["events", "seconds", "deliveries/s"],
        [[thr["events"], thr["seconds"], thr["per_second"]]],
    )
    rows = []
    for what in (
        "enroll",
        "enroll_worker_stopped",
        "outbox_transaction",
        "outbox_transaction_worker_stopped",
    ):
        hooked, plain = figures[what]["one endpoint"], figures[what]["no endpoint"]
        added = round(hooked["p50_ms"] - plain["p50_ms"], 3)
        rows.append([what, hooked["p50_ms"], plain["p50_ms"], added, hooked["samples"]])
    print_table(
        "What the outbox adds (interleaved sample by sample)",
        ["call", "p50 one endpoint", "p50 no endpoint", "added ms", "samples"],
        rows,
    )
    added = {row[0]: row[3] for row in rows}
    figures["enroll_p50_added_ms"] = added["enroll"]
    figures["enroll_p50_added_ms_worker_stopped"] = added["enroll_worker_stopped"]
    figures["outbox_p50_added_ms"] = added["outbox_transaction"]
    figures["outbox_p50_added_ms_worker_stopped"] = added["outbox_transaction_worker_stopped"]
    figures["quick"] = args.quick
    write_results("webhooks", figures)


if __name__ == "__main__":
    main()
