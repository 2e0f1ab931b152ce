from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from app.crypto import AuditKey, DecryptionError, EnvelopeCipher, LocalKeyring
from app.storage import audit
from app.storage.audit import (
    GENESIS_HASH,
    VerifyResult,
    canonical_row,
    chain_hash,
    head_mac,
    keyed_chain_hash,
)
from app.storage.roles import restrict_app_role
from app.storage.schema import audit_heads, audit_log

T0 = datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC)
ORG_A, ORG_B = "org_a", "org_b"


@pytest.fixture
def orgs(keyring: LocalKeyring) -> None:
    for org in (ORG_A, ORG_B, audit.SYSTEM_CHAIN):
        keyring.create_org(org)


class Keys(NamedTuple):
    sealer: EnvelopeCipher
    chain_key: AuditKey


@pytest.fixture
def keys(sealer: EnvelopeCipher, keyring: LocalKeyring) -> Keys:
    return Keys(sealer, AuditKey(keyring))


def _append(
    engine: Engine, keys: Keys, org: str | None, n: int, *, start: int = 0
) -> list[audit.AuditRecord]:
    records = []
    for i in range(start, start + n):
        with engine.begin() as conn:
            records.append(
                audit.append(
                    conn,
                    sealer=keys.sealer,
                    chain_key=keys.chain_key,
                    org_id=org,
                    actor="key_admin",
                    action="subject.enroll",
                    target=f"enr_{i}",
                    details={"i": i, "nik": "3171234567890123"},
                    now=T0 + timedelta(seconds=i),
                )
            )
    return records


def _drop_audit_triggers(engine: Engine) -> None:
    """What a superuser (not the app) can do: remove the guards to tamper with rows."""
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            for name in ("audit_log_no_update", "audit_log_no_delete", "audit_log_no_replace"):
                conn.exec_driver_sql(f"DROP TRIGGER {name}")
        else:
            for name in ("audit_log_no_update_delete", "audit_log_no_truncate"):
                conn.exec_driver_sql(f"DROP TRIGGER {name} ON audit_log")


def _tamper(engine: Engine, *statements: str) -> None:
    _drop_audit_triggers(engine)
    with engine.begin() as conn:
        for statement in statements:
            conn.exec_driver_sql(statement)


def _verify(engine: Engine, keys: Keys, chain: str | None = None) -> VerifyResult:
    with engine.connect() as conn:
        return audit.verify_chain(conn, chain_key=keys.chain_key, chain=chain)


def test_canonical_row_and_hash_are_pinned() -> None:
    """Scheme 1, the plain SHA-256 of rows written before migration 0005."""
    canonical = canonical_row(
        scheme=audit.SCHEME_PLAIN,
        id="aud_0001",
        chain="org_a",
        chain_seq=1,
        org_id="org_a",
        occurred_at="2026-01-02T03:04:05.000006Z",
        actor="key_1",
        action="subject.enroll",
        target="enr_1",
        details_sealed=b"sealed",
    )
    assert canonical == (
        b'{"action":"subject.enroll","actor":"key_1","chain":"org_a","chain_seq":1,'
        b'"details_sha256":"c9d0036bed6744bcdf692fc980d8717d7e5f5a4f4e8266b4a84982602fb1cd09",'
        b'"id":"aud_0001","occurred_at":"2026-01-02T03:04:05.000006Z","org_id":"org_a",'
        b'"target":"enr_1","v":1}'
    )
    assert chain_hash(GENESIS_HASH, canonical).hex() == (
        "347874329755d4bc54ae8159d82a4fcb61f334c6b6bd48c1f2c4a5854e627e45"
    )


def test_append_links_rows_into_a_chain(engine: Engine, keys: Keys, orgs: None) -> None:
    records = _append(engine, keys, ORG_A, 3)
    assert [r.chain_seq for r in records] == [1, 2, 3]
    assert records[0].prev_hash == GENESIS_HASH
    assert [r.prev_hash for r in records[1:]] == [r.hash for r in records[:2]]
    assert records[1].occurred_at == "2026-01-02T03:04:06.000006Z"
    with engine.connect() as conn:
        stored = conn.execute(sa.select(audit_log).order_by(audit_log.c.chain_seq)).all()
        head = conn.execute(sa.select(audit_heads)).one()
    for record, row in zip(records, stored, strict=True):
        assert (row.id, bytes(row.hash), bytes(row.prev_hash)) == (
            record.id,
            record.hash,
            record.prev_hash,
        )
        fields = {k: getattr(row, k) for k in ("id", "chain", "chain_seq", "org_id")}
        fields |= {k: getattr(row, k) for k in ("occurred_at", "actor", "action", "target")}
        canonical = canonical_row(
            scheme=audit.SCHEME_KEYED, **fields, details_sealed=bytes(row.details_sealed)
        )
        expected = keyed_chain_hash(keys.chain_key, bytes(row.prev_hash), canonical)
        assert (bytes(row.hash), row.hash_scheme) == (expected, audit.SCHEME_KEYED)
        # Without the key the same row hashes to something else.
        assert chain_hash(bytes(row.prev_hash), canonical) != expected
    assert (head.chain, head.seq, bytes(head.hash)) == (ORG_A, 3, records[2].hash)
    assert bytes(head.mac) == head_mac(keys.chain_key, records[2].hash)
    assert _verify(engine, keys) == VerifyResult(ok=True, checked=3)


def test_chains_are_per_org_with_a_system_chain(engine: Engine, keys: Keys, orgs: None) -> None:
    a = _append(engine, keys, ORG_A, 2)
    b = _append(engine, keys, ORG_B, 1)
    system = _append(engine, keys, None, 1)
    assert [(r.chain, r.chain_seq) for r in a + b + system] == [
        (ORG_A, 1),
        (ORG_A, 2),
        (ORG_B, 1),
        ("_system", 1),
    ]
    assert _verify(engine, keys) == VerifyResult(ok=True, checked=4)
    assert _verify(engine, keys, ORG_B) == VerifyResult(ok=True, checked=1)


def test_list_audit_pages_newest_first_with_details_opened(
    engine: Engine, keys: Keys, orgs: None
) -> None:
    records = _append(engine, keys, ORG_A, 3)
    _append(engine, keys, ORG_B, 1, start=100)
    with engine.connect() as conn:
        first = audit.list_audit(conn, sealer=keys.sealer, org_id=ORG_A, limit=2)
        assert first.next_cursor is not None
        second = audit.list_audit(
            conn, sealer=keys.sealer, org_id=ORG_A, cursor=first.next_cursor, limit=2
        )
        other = audit.list_audit(conn, sealer=keys.sealer, org_id=ORG_B)
    assert [e.seq for e in first.entries] == [3, 2]
    assert first.next_cursor == 2
    assert [e.seq for e in second.entries] == [1]
    assert second.next_cursor is None
    entry = second.entries[0]
    assert (entry.id, entry.action, entry.target, entry.actor) == (
        records[0].id,
        "subject.enroll",
        "enr_0",
        "key_admin",
    )
    assert entry.details == {"i": 0, "nik": "3171234567890123"}
    assert entry.occurred_at == "2026-01-02T03:04:05.000006Z"
    assert entry.hash == records[0].hash.hex()
    assert [e.target for e in other.entries] == ["enr_100"]
    with engine.connect() as conn, pytest.raises(ValueError, match="limit"):
        audit.list_audit(conn, sealer=keys.sealer, org_id=ORG_A, limit=0)


def test_details_are_sealed_and_bound_to_their_row(engine: Engine, keys: Keys, orgs: None) -> None:
    first, second = _append(engine, keys, ORG_A, 2)
    assert b"3171234567890123" not in first.details_sealed
    assert b"nik" not in first.details_sealed
    with pytest.raises(DecryptionError):
        # Sealed details moved onto another row do not open.
        keys.sealer.open(
            first.details_sealed, org_id=ORG_A, object_id=second.id, purpose=audit.AUDIT_PURPOSE
        )


def test_rolled_back_append_leaves_no_trace(engine: Engine, keys: Keys, orgs: None) -> None:
    _append(engine, keys, ORG_A, 1)
    with pytest.raises(RuntimeError, match="boom"), engine.begin() as conn:
        audit.append(
            conn,
            sealer=keys.sealer,
            chain_key=keys.chain_key,
            org_id=ORG_A,
            actor="a",
            action="x",
            target="t",
            details={},
        )
        raise RuntimeError("boom")
    (record,) = _append(engine, keys, ORG_A, 1, start=1)
    assert record.chain_seq == 2
    assert _verify(engine, keys) == VerifyResult(ok=True, checked=2)


def test_append_refuses_bad_input(engine: Engine, keys: Keys, orgs: None) -> None:
    with engine.connect() as conn:
        conn.commit()  # end the autobegun transaction: append must refuse to run outside one
        with pytest.raises(RuntimeError, match="inside the transaction"):
            audit.append(
                conn,
                sealer=keys.sealer,
                chain_key=keys.chain_key,
                org_id=ORG_A,
                actor="a",
                action="x",
                target="t",
                details={},
            )
    with engine.begin() as conn, pytest.raises(ValueError, match=r"action must be 1\.\.64"):
        audit.append(
            conn,
            sealer=keys.sealer,
            chain_key=keys.chain_key,
            org_id=ORG_A,
            actor="a",
            action="x" * 65,
            target="t",
            details={},
        )
    with engine.begin() as conn, pytest.raises(ValueError, match="naive"):
        audit.append(
            conn,
            sealer=keys.sealer,
            chain_key=keys.chain_key,
            org_id=ORG_A,
            actor="a",
            action="x",
            target="t",
            details={},
            now=datetime(2026, 1, 1),
        )


# --- the database refuses rewrites ---------------------------------------------------------


@pytest.mark.parametrize(
    "statement",
    ["UPDATE audit_log SET actor = 'mallory'", "DELETE FROM audit_log"],
    ids=["update", "delete"],
)
def test_update_and_delete_are_refused(
    engine: Engine, keys: Keys, orgs: None, statement: str
) -> None:
    _append(engine, keys, ORG_A, 2)
    verb = statement.split()[0]
    with (
        pytest.raises(sa.exc.DBAPIError, match=f"audit_log is append-only: {verb} refused"),
        engine.begin() as conn,
    ):
        conn.exec_driver_sql(statement)
    assert _verify(engine, keys) == VerifyResult(ok=True, checked=2)


def test_replace_onto_an_existing_row_is_refused(engine: Engine, keys: Keys, orgs: None) -> None:
    (record,) = _append(engine, keys, ORG_A, 1)
    if engine.dialect.name == "sqlite":
        statements = [
            # same id
            "INSERT OR REPLACE INTO audit_log SELECT * FROM audit_log",
            # new id onto the same (chain, chain_seq)
            "INSERT OR REPLACE INTO audit_log (id, chain, chain_seq, org_id, occurred_at, actor,"
            " action, target, details_sealed, prev_hash, hash) SELECT 'aud_x', chain, chain_seq,"
            " org_id, occurred_at, 'mallory', action, target, details_sealed, prev_hash, hash"
            " FROM audit_log",
        ]
        message = "audit_log is append-only: row exists, REPLACE refused"
    else:
        statements = [
            "INSERT INTO audit_log SELECT * FROM audit_log"
            " ON CONFLICT (id) DO UPDATE SET actor = 'mallory'"
        ]
        message = "audit_log is append-only: UPDATE refused"
    for statement in statements:
        with pytest.raises(sa.exc.DBAPIError, match=message), engine.begin() as conn:
            conn.exec_driver_sql(statement)
    with engine.connect() as conn:
        rows = conn.execute(sa.select(audit_log.c.id, audit_log.c.actor)).all()
    assert rows == [(record.id, "key_admin")]


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_truncate_is_refused_on_postgres(engine: Engine, keys: Keys, orgs: None) -> None:
    _append(engine, keys, ORG_A, 1)
    with (
        pytest.raises(sa.exc.DBAPIError, match="audit_log is append-only: TRUNCATE refused"),
        engine.begin() as conn,
    ):
        conn.exec_driver_sql("TRUNCATE audit_log")
    assert _verify(engine, keys) == VerifyResult(ok=True, checked=1)


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_app_role_cannot_rewrite_audit_even_without_triggers(
    engine: Engine, keys: Keys, orgs: None
) -> None:
    role = f"wajah_app_{engine.url.query['options'][-12:]}"
    with engine.begin() as conn:
        conn.exec_driver_sql(f'CREATE ROLE "{role}" NOLOGIN')
    try:
        with engine.begin() as conn:
            restrict_app_role(conn, role)
        _drop_audit_triggers(engine)
        with engine.begin() as conn:
            conn.exec_driver_sql(f'SET LOCAL ROLE "{role}"')
            record = audit.append(
                conn,
                sealer=keys.sealer,
                chain_key=keys.chain_key,
                org_id=ORG_A,
                actor="a",
                action="x",
                target="t",
                details={},
            )
        for statement in (
            "UPDATE audit_log SET actor = 'mallory'",
            "DELETE FROM audit_log",
            "TRUNCATE audit_log",
        ):
            with (
                pytest.raises(sa.exc.ProgrammingError, match="permission denied"),
                engine.begin() as conn,
            ):
                conn.exec_driver_sql(f'SET LOCAL ROLE "{role}"')
                conn.exec_driver_sql(statement)
        assert record.chain_seq == 1
        assert _verify(engine, keys) == VerifyResult(ok=True, checked=1)
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql(f'DROP OWNED BY "{role}"')
            conn.exec_driver_sql(f'DROP ROLE "{role}"')


# --- verify_chain names the first broken row ----------------------------------------------


def test_verify_detects_an_edited_row(engine: Engine, keys: Keys, orgs: None) -> None:
    records = _append(engine, keys, ORG_A, 4)
    _tamper(engine, "UPDATE audit_log SET actor = 'mallory' WHERE chain_seq = 2")
    assert _verify(engine, keys) == VerifyResult(
        ok=False,
        checked=1,
        first_broken_seq=2,
        reason="hash does not match the row's contents: row edited",
        chain=ORG_A,
        first_broken_id=records[1].id,
    )


def test_verify_detects_edited_sealed_details(engine: Engine, keys: Keys, orgs: None) -> None:
    records = _append(engine, keys, ORG_A, 3)
    with engine.connect() as conn:
        blob = conn.execute(
            sa.select(audit_log.c.details_sealed).where(audit_log.c.chain_seq == 3)
        ).scalar_one()
    _drop_audit_triggers(engine)
    with engine.begin() as conn:
        conn.execute(
            sa.update(audit_log)
            .where(audit_log.c.chain_seq == 3)
            .values(details_sealed=bytes(blob)[:-1] + bytes([blob[-1] ^ 1]))
        )
    result = _verify(engine, keys)
    assert (result.ok, result.checked, result.first_broken_seq, result.first_broken_id) == (
        False,
        2,
        3,
        records[2].id,
    )


def test_verify_detects_a_deleted_row(engine: Engine, keys: Keys, orgs: None) -> None:
    records = _append(engine, keys, ORG_A, 4)
    _tamper(engine, "DELETE FROM audit_log WHERE chain_seq = 2")
    assert _verify(engine, keys) == VerifyResult(
        ok=False,
        checked=1,
        first_broken_seq=2,
        reason="expected seq 2, found 3: rows missing or moved",
        chain=ORG_A,
        first_broken_id=records[2].id,
    )


def test_verify_detects_a_deleted_row_renumbered(engine: Engine, keys: Keys, orgs: None) -> None:
    records = _append(engine, keys, ORG_A, 3)
    # Hide the gap: delete row 2, move row 3 into its place, fix up the head.
    _tamper(
        engine,
        "DELETE FROM audit_log WHERE chain_seq = 2",
        "UPDATE audit_log SET chain_seq = 2 WHERE chain_seq = 3",
        "UPDATE audit_heads SET seq = 2",
    )
    assert _verify(engine, keys) == VerifyResult(
        ok=False,
        checked=1,
        first_broken_seq=2,
        reason="prev_hash is not the previous row's hash: rows missing or moved",
        chain=ORG_A,
        first_broken_id=records[2].id,
    )


def test_verify_detects_reordered_rows(engine: Engine, keys: Keys, orgs: None) -> None:
    records = _append(engine, keys, ORG_A, 4)
    _tamper(
        engine,
        "UPDATE audit_log SET chain_seq = -1 WHERE chain_seq = 2",
        "UPDATE audit_log SET chain_seq = 2 WHERE chain_seq = 3",
        "UPDATE audit_log SET chain_seq = 3 WHERE chain_seq = -1",
    )
    assert _verify(engine, keys) == VerifyResult(
        ok=False,
        checked=1,
        first_broken_seq=2,
        reason="prev_hash is not the previous row's hash: rows missing or moved",
        chain=ORG_A,
        first_broken_id=records[2].id,
    )


def test_verify_detects_rows_cut_from_the_end(engine: Engine, keys: Keys, orgs: None) -> None:
    _append(engine, keys, ORG_B, 1)
    _append(engine, keys, ORG_A, 3)
    _tamper(engine, "DELETE FROM audit_log WHERE chain = 'org_a' AND chain_seq = 3")
    assert _verify(engine, keys) == VerifyResult(
        ok=False,
        checked=2,
        first_broken_seq=3,
        reason="chain head is at seq 3: rows after 2 missing",
        chain=ORG_A,
    )
    assert _verify(engine, keys, ORG_B) == VerifyResult(ok=True, checked=1)


def test_concurrent_appends_keep_the_chain_valid(engine: Engine, keys: Keys, orgs: None) -> None:
    threads, per_thread = 8, 10
    barrier = threading.Barrier(threads)
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            barrier.wait()
            for i in range(per_thread):
                org = ORG_A if i % 5 else ORG_B
                with engine.begin() as conn:
                    audit.append(
                        conn,
                        sealer=keys.sealer,
                        chain_key=keys.chain_key,
                        org_id=org,
                        actor=f"thread_{t}",
                        action="match.verify",
                        target=f"t{t}_{i}",
                        details={"t": t, "i": i},
                    )
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert errors == []
    with engine.connect() as conn:
        seqs = {
            chain: sorted(
                conn.execute(
                    sa.select(audit_log.c.chain_seq).where(audit_log.c.chain == chain)
                ).scalars()
            )
            for chain in (ORG_A, ORG_B)
        }
    assert seqs == {ORG_A: list(range(1, 65)), ORG_B: list(range(1, 17))}
    assert _verify(engine, keys) == VerifyResult(ok=True, checked=80)
