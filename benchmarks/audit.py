"""Audit write time before and after keying the chain (issue 18 item 6).

    python -m benchmarks.audit [--quick] [--against 2cdcf7d] [--rounds 400]

One audit append as a service makes it: a write transaction that seals the details, bumps the
chain head, inserts the row and sets the head, then commits. This checkout's
`app.storage.audit.append` (row hash HMAC-SHA-256 under the audit key, plus the head's MAC)
against the same function of the revision before the keyed chain (`--against`), loaded from
git into this process and writing into the same migrated database (its rows plain SHA-256,
scheme 1, as it wrote them), sample by sample in turns (`time_alternating`), on SQLite (file,
synchronous=FULL) and PostgreSQL (``$WAJAH_BENCH_POSTGRES_URL``, a fresh database, dropped
after). Also the hashing alone: canonical row + SHA-256 against canonical row + two HMACs.
"""

from __future__ import annotations

import argparse
import os
import secrets
import subprocess
import sys
import tempfile
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from app.crypto import AuditKey, EnvelopeCipher, LocalKeyring, RootKey
from app.storage import audit, create_engine_for, upgrade_database
from app.storage.audit import SCHEME_KEYED, canonical_row, chain_hash, head_mac, keyed_chain_hash
from benchmarks.common import print_table, summarise, time_alternating, write_results

REPO = Path(__file__).resolve().parent.parent
BASELINE = "2cdcf7d"  # main just before the keyed chain (a62c5d8)
POSTGRES_URL = os.environ.get(
    "WAJAH_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
HASH_REPS = 200
DETAILS = {"subject_id": "cust-000123", "score": 0.8123, "decision": "match", "model": "sface"}


def baseline_module(revision: str) -> types.ModuleType | None:
    """`app.storage.audit` as it was at `revision`, imported under another name; None where
    the checkout lacks that revision (a shallow clone)."""
    shown = subprocess.run(
        ["git", "-C", str(REPO), "show", f"{revision}:app/storage/audit.py"],
        capture_output=True,
        text=True,
    )
    if shown.returncode != 0:
        print(f"revision {revision} is not in this checkout: the keyed append alone")
        return None
    source = shown.stdout
    module = types.ModuleType("bench_audit_baseline")
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(source, f"{revision}:app/storage/audit.py", "exec"), module.__dict__)
    return module


@contextmanager
def postgres_url() -> Iterator[str | None]:
    admin = sa.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    name = f"wajah_bench_audit_{secrets.token_hex(4)}"
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except sa.exc.OperationalError:
        admin.dispose()
        print(f"PostgreSQL at {POSTGRES_URL} is not reachable: SQLite only")
        yield None
        return
    try:
        yield sa.make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def appenders(
    url: str, kms: LocalKeyring, baseline: types.ModuleType | None
) -> tuple[dict[str, Callable[[], object]], Callable[[], None]]:
    engine = create_engine_for(url)
    upgrade_database(engine)
    sealer, key = EnvelopeCipher(kms), AuditKey(kms)

    def keyed() -> None:
        with engine.begin() as conn:
            audit.append(
                conn,
                sealer=sealer,
                chain_key=key,
                org_id="org_keyed",
                actor="key_bench",
                action="match.verify",
                target="cust-000123",
                details=DETAILS,
            )

    def plain() -> None:
        assert baseline is not None
        with engine.begin() as conn:
            baseline.append(
                conn,
                sealer=sealer,
                org_id="org_plain",
                actor="key_bench",
                action="match.verify",
                target="cust-000123",
                details=DETAILS,
            )

    calls = {"before (plain SHA-256)": plain, "keyed (HMAC + head MAC)": keyed}
    if baseline is None:
        del calls["before (plain SHA-256)"]
    return calls, engine.dispose


def hashing_only(kms: LocalKeyring) -> dict[str, Callable[[], object]]:
    key = AuditKey(kms)
    fields: dict[str, Any] = {
        "id": "aud_0123456789abcdef",
        "chain": "org_0123456789abcdef",
        "chain_seq": 12345,
        "org_id": "org_0123456789abcdef",
        "occurred_at": "2026-12-09T10:11:12.123456Z",
        "actor": "key_bench",
        "action": "match.verify",
        "target": "cust-000123",
        "details_sealed": os.urandom(120),
    }
    prev = os.urandom(32)

    # HASH_REPS rows per sample: one row is a few µs, below the timer's useful resolution.
    def plain() -> None:
        for _ in range(HASH_REPS):
            chain_hash(prev, canonical_row(scheme=1, **fields))

    def keyed() -> None:
        for _ in range(HASH_REPS):
            digest = keyed_chain_hash(key, prev, canonical_row(scheme=SCHEME_KEYED, **fields))
            head_mac(key, digest)

    return {"before (plain SHA-256)": plain, "keyed (HMAC + head MAC)": keyed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke size (CI)")
    parser.add_argument("--against", default=BASELINE, help="the revision before keying")
    parser.add_argument("--rounds", type=int, default=None)
    args = parser.parse_args()
    rounds = args.rounds or (60 if args.quick else 400)
    warmup = 10 if args.quick else 40

    baseline = baseline_module(args.against)
    work = Path(tempfile.mkdtemp(prefix="wajah-bench-audit-"))
    kms = LocalKeyring(work / "keys", RootKey(os.urandom(32), source="benchmark"))
    for org in ("org_keyed", "org_plain"):
        kms.create_org(org)

    results: dict[str, Any] = {}
    rows = []
    timings = time_alternating(hashing_only(kms), samples=rounds, warmup=warmup)
    # per row, in µs
    results["hashing"] = {
        name: summarise([ms * 1000 / HASH_REPS for ms in t], warmup) for name, t in timings.items()
    }
    stores = [("sqlite", f"sqlite:///{work / 'audit.db'}")]
    with postgres_url() as pg:
        if pg is not None:
            stores.append(("postgresql", pg))
        for store, url in stores:
            calls, close = appenders(url, kms, baseline)
            try:
                results[store] = {
                    name: summarise(t, warmup)
                    for name, t in time_alternating(calls, rounds, warmup).items()
                }
            finally:
                close()
    for section in ("hashing", "sqlite", "postgresql"):
        if section not in results:
            continue
        if len(results[section]) == 1:  # no baseline revision
            (after,) = results[section].values()
            rows.append([section, "-", f"{after['p50_ms']:.3f}", "-", "-"])
            continue
        before, after = results[section].values()
        # summarise names every figure *_ms; the hashing figures are µs per row
        label = "µs/row" if section == "hashing" else "ms"
        rows.append(
            [
                section,
                f"{before['p50_ms']:.3f} {label}",
                f"{after['p50_ms']:.3f} {label}",
                f"{after['p50_ms'] - before['p50_ms']:+.3f} {label}",
                f"{after['p50_ms'] / before['p50_ms']:.2f}x",
            ]
        )
    print_table(
        f"audit append p50, keyed vs {args.against} (interleaved, {rounds} rounds)",
        ["what", f"before ({args.against})", "keyed", "difference", "ratio"],
        rows,
    )
    write_results(
        "audit",
        {"baseline": args.against, "rounds": rounds, "quick": args.quick, "results": results},
    )


if __name__ == "__main__":
    main()
