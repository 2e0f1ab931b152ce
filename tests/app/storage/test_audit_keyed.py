"""The keyed audit chain (migration 0005): rows written before it keep verifying as plain
SHA-256, rows written after are HMACs under the audit key, and the seams between them hold
against an attacker who can write to the database but has no key.

Every attack drops the append-only triggers first, as a database superuser would, then
tampers with plain SQL.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from app.crypto import AuditKey, EnvelopeCipher, LocalKeyring, RootKey
from app.storage import audit
from app.storage.audit import GENESIS_HASH, SCHEME_PLAIN, VerifyResult, canonical_row, chain_hash
from app.storage.migrate import (
    current_revision,
    downgrade_database,
    head_revision,
    upgrade_database,
)
from app.storage.schema import audit_heads, audit_log
from tests.app.storage.test_audit import _drop_audit_triggers

T0 = datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC)
ORG = "org_a"


@pytest.fixture
def chain_key(keyring: LocalKeyring) -> AuditKey:
    keyring.create_org(ORG)
    return AuditKey(keyring)


def _legacy_append(engine: Engine, sealer: EnvelopeCipher, n: int) -> list[bytes]:
    """Rows as revision 0004's code wrote them: plain SHA-256, no scheme column, no MAC."""
    hashes = []
    with engine.begin() as conn:
        prev, seq = GENESIS_HASH, 0
        for i in range(n):
            seq += 1
            row_id = f"aud_legacy{i}"
            sealed = sealer.seal(b"{}", org_id=ORG, object_id=row_id, purpose=audit.AUDIT_PURPOSE)
            fields = {
                "id": row_id,
                "chain": ORG,
                "chain_seq": seq,
                "org_id": ORG,
                "occurred_at": audit.format_timestamp(T0 + timedelta(seconds=i)),
                "actor": "key_old",
                "action": "subject.enroll",
                "target": f"enr_{i}",
                "details_sealed": sealed,
            }
            digest = chain_hash(prev, canonical_row(scheme=SCHEME_PLAIN, **fields))
            columns = ", ".join([*fields, "prev_hash", "hash"])
            marks = ", ".join(f":{name}" for name in [*fields, "prev_hash", "hash"])
            conn.execute(
                sa.text(f"INSERT INTO audit_log ({columns}) VALUES ({marks})"),
                {**fields, "prev_hash": prev, "hash": digest},
            )
            prev = digest
            hashes.append(digest)
        conn.execute(
            sa.text("INSERT INTO audit_heads (chain, seq, hash) VALUES (:c, :s, :h)"),
            {"c": ORG, "s": seq, "h": prev},
        )
    return hashes


def _append(engine: Engine, sealer: EnvelopeCipher, key: AuditKey, n: int) -> None:
    for i in range(n):
        with engine.begin() as conn:
            audit.append(
                conn,
                sealer=sealer,
                chain_key=key,
                org_id=ORG,
                actor="key_new",
                action="match.verify",
                target=f"t_{i}",
                details={"i": i},
            )


def _verify(engine: Engine, key: AuditKey) -> VerifyResult:
    with engine.connect() as conn:
        return audit.verify_chain(conn, chain_key=key)


def _report(engine: Engine, key: AuditKey) -> audit.ChainReport:
    with audit.snapshot(engine) as conn:
        (report,) = audit.walk_chains(conn, chain_key=key)
    return report


@pytest.fixture
def upgraded(bare_engine: Engine, sealer: EnvelopeCipher, chain_key: AuditKey) -> Engine:
    """A log with 3 rows written at revision 0004, migrated to head, then 2 keyed rows."""
    upgrade_database(bare_engine, "0004")
    _legacy_append(bare_engine, sealer, 3)
    upgrade_database(bare_engine)
    _append(bare_engine, sealer, chain_key, 2)
    return bare_engine


def test_rows_from_before_the_migration_keep_verifying(
    upgraded: Engine, chain_key: AuditKey
) -> None:
    with upgraded.connect() as conn:
        assert current_revision(conn) == head_revision()
        schemes = conn.execute(
            sa.select(audit_log.c.hash_scheme).order_by(audit_log.c.chain_seq)
        ).scalars()
        assert list(schemes) == [1, 1, 1, 2, 2]
    assert _verify(upgraded, chain_key) == VerifyResult(ok=True, checked=5)
    report = _report(upgraded, chain_key)
    assert (report.rows, report.legacy, report.last_seq) == (5, 3, 5)


def test_editing_a_plain_row_is_caught_by_the_keyed_row_after_it(
    upgraded: Engine, chain_key: AuditKey
) -> None:
    # Edit row 2 and recompute the plain hashes of rows 2 and 3: the first keyed row MACs
    # row 3's hash, and without the key it cannot be recomputed.
    _drop_audit_triggers(upgraded)
    with upgraded.begin() as conn:
        rows = conn.execute(sa.select(audit_log).order_by(audit_log.c.chain_seq)).all()
        prev = bytes(rows[0].hash)
        for row in rows[1:3]:
            fields = {k: getattr(row, k) for k in ("id", "chain", "chain_seq", "org_id")}
            fields |= {k: getattr(row, k) for k in ("occurred_at", "action", "target")}
            actor = "mallory" if row.chain_seq == 2 else row.actor
            digest = chain_hash(
                prev,
                canonical_row(
                    scheme=SCHEME_PLAIN,
                    **fields,
                    actor=actor,
                    details_sealed=bytes(row.details_sealed),
                ),
            )
            conn.execute(
                sa.update(audit_log)
                .where(audit_log.c.id == row.id)
                .values(actor=actor, prev_hash=prev, hash=digest)
            )
            prev = digest
        conn.execute(sa.update(audit_log).where(audit_log.c.chain_seq == 4).values(prev_hash=prev))
    result = _verify(upgraded, chain_key)
    assert (result.ok, result.first_broken_seq, result.reason) == (
        False,
        4,
        "hash does not match the row's contents: row edited",
    )


def test_a_keyed_row_turned_plain_is_caught(upgraded: Engine, chain_key: AuditKey) -> None:
    # The attacker rewrites the last row as a plain SHA-256 row (computable without a key)
    # and points the head at it without a MAC.
    _drop_audit_triggers(upgraded)
    with upgraded.begin() as conn:
        row = conn.execute(sa.select(audit_log).where(audit_log.c.chain_seq == 5)).one()
        fields = {k: getattr(row, k) for k in ("id", "chain", "chain_seq", "org_id")}
        fields |= {k: getattr(row, k) for k in ("occurred_at", "actor", "action", "target")}
        digest = chain_hash(
            bytes(row.prev_hash),
            canonical_row(scheme=SCHEME_PLAIN, **fields, details_sealed=bytes(row.details_sealed)),
        )
        conn.execute(
            sa.update(audit_log)
            .where(audit_log.c.id == row.id)
            .values(hash=digest, hash_scheme=SCHEME_PLAIN)
        )
        conn.execute(sa.update(audit_heads).values(hash=digest, mac=None))
    result = _verify(upgraded, chain_key)
    assert (result.ok, result.first_broken_seq, result.reason) == (
        False,
        5,
        "unkeyed row after keyed rows: rows rewritten without the audit key",
    )


def test_rows_cut_from_the_end_are_caught_by_the_head_mac(
    upgraded: Engine, chain_key: AuditKey
) -> None:
    _drop_audit_triggers(upgraded)
    with upgraded.begin() as conn:
        conn.execute(sa.delete(audit_log).where(audit_log.c.chain_seq == 5))
        new_last = conn.execute(
            sa.select(audit_log.c.hash).where(audit_log.c.chain_seq == 4)
        ).scalar_one()
        conn.execute(sa.update(audit_heads).values(seq=4, hash=new_last))
    result = _verify(upgraded, chain_key)
    assert (result.ok, result.checked, result.first_broken_seq) == (False, 4, 5)
    assert result.reason == (
        "chain head (seq 4) is not signed by the audit key: the head was rewritten, rows "
        "after it may be missing"
    )


def test_a_different_audit_key_verifies_nothing_keyed(upgraded: Engine, tmp_path: Path) -> None:
    other = LocalKeyring(tmp_path / "other", RootKey(bytes(range(1, 33)), source="other"))
    result = _verify(upgraded, AuditKey(other))
    # The three plain rows still verify; the first keyed row does not.
    assert (result.ok, result.checked, result.first_broken_seq) == (False, 3, 4)


def test_downgrade_below_0005_is_refused_once_rows_are_keyed(upgraded: Engine) -> None:
    with pytest.raises(RuntimeError, match="2 audit rows are hashed under the audit key"):
        downgrade_database(upgraded, "0004")
    with upgraded.connect() as conn:
        assert current_revision(conn) == head_revision()


def test_downgrade_of_a_plain_log_keeps_the_triggers(
    bare_engine: Engine, sealer: EnvelopeCipher, chain_key: AuditKey
) -> None:
    upgrade_database(bare_engine, "0004")
    _legacy_append(bare_engine, sealer, 2)
    upgrade_database(bare_engine)
    downgrade_database(bare_engine, "0004")
    with pytest.raises(sa.exc.DBAPIError, match="append-only"), bare_engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM audit_log")
    upgrade_database(bare_engine)
    assert _verify(bare_engine, chain_key) == VerifyResult(ok=True, checked=2)
