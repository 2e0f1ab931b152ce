from __future__ import annotations

import random
import struct
import threading
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from app.crypto import AuditKey, EnvelopeCipher, LocalKeyring
from app.storage import audit
from app.storage import frames as frame_store
from app.storage import orgs as org_store
from app.storage import subjects as subject_store
from app.storage.engine import read_only
from app.storage.ids import new_id
from app.storage.schema import audit_log, enrollments, frames, orgs, subjects

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
DIM = 4


def _vector(seed: int) -> bytes:
    rng = random.Random(seed)
    return struct.pack(f"<{DIM}f", *(rng.uniform(-1, 1) for _ in range(DIM)))


def _org_and_subject(conn: Connection, name: str = "Bank A") -> tuple[str, str]:
    org_id = org_store.insert_org(conn, name=name, now=T0)
    return org_id, subject_store.insert_subject(conn, org_id=org_id, subject_id="cust-1", now=T0)


def _enroll(
    conn: Connection, org_id: str, subject_pk: str, seed: int
) -> subject_store.EnrollmentRef:
    return subject_store.insert_enrollment(
        conn,
        org_id=org_id,
        subject_pk=subject_pk,
        vector=_vector(seed),
        dimension=DIM,
        model_id="sface-2021dec",
        hashed_ref=bytes([seed % 256]) * 32,
        quality={"score": 0.98},
        now=T0,
    )


def test_new_id_shape() -> None:
    ids = {new_id("enr") for _ in range(100)}
    assert len(ids) == 100
    assert all(len(i) == 36 and i.startswith("enr_") for i in ids)
    with pytest.raises(ValueError, match="prefix"):
        new_id("Bad_")


def test_org_settings_defaults_and_aware_timestamps(engine: Engine) -> None:
    with engine.begin() as conn:
        org_id = org_store.insert_org(conn, name="Bank A", settings={"threshold": 0.4}, now=T0)
    with engine.connect() as conn:
        row = conn.execute(sa.select(orgs)).one()
    assert row.settings == {
        "threshold": 0.4,
        "duplicate_policy": "off",
        "retention": {
            "frames_days": 90,
            "request_logs_days": 90,
            "webhook_days": 30,
            "idempotency_days": 1,
            "audit_days": 2557,
            "closure_grace_days": 365,
            "source_documents_days": 90,
        },
        "watchlist_sharing": False,
        "data_residency": "ID-only",
        "liveness": {"policy": "off", "passive_threshold": 0.1826, "require_challenge": False},
    }
    assert (row.id, row.created_at) == (org_id, T0)
    assert row.created_at.tzinfo is UTC


def test_enrollment_and_audit_commit_together_or_not_at_all(
    engine: Engine, keyring: LocalKeyring, sealer: EnvelopeCipher
) -> None:
    with engine.begin() as conn:
        org_id, subject_pk = _org_and_subject(conn)
    keyring.create_org(org_id)

    with pytest.raises(RuntimeError, match="index add failed"), engine.begin() as conn:
        ref = _enroll(conn, org_id, subject_pk, 1)
        audit.append(
            conn,
            sealer=sealer,
            chain_key=AuditKey(keyring),
            org_id=org_id,
            actor="key_1",
            action="enrollment.create",
            target=ref.id,
            details={"vector_id": ref.vector_id},
        )
        raise RuntimeError("index add failed")
    with engine.connect() as conn:
        counts = [conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one()
                  for t in (enrollments, audit_log)]  # fmt: skip
        assert counts == [0, 0]
        assert subject_store.current_seq(conn, org_id) == 0

    with engine.begin() as conn:
        ref = _enroll(conn, org_id, subject_pk, 1)
        audit.append(
            conn,
            sealer=sealer,
            chain_key=AuditKey(keyring),
            org_id=org_id,
            actor="key_1",
            action="enrollment.create",
            target=ref.id,
            details={"vector_id": ref.vector_id},
        )
    # The rolled-back seq was not consumed.
    assert (ref.seq, ref.vector_id) == (1, 1)
    with engine.connect() as conn:
        page = audit.list_audit(conn, sealer=sealer, org_id=org_id)
    assert [(e.action, e.target, e.details) for e in page.entries] == [
        ("enrollment.create", ref.id, {"vector_id": 1})
    ]


def test_change_stream_replays_adds_and_removals(engine: Engine) -> None:
    with engine.begin() as conn:
        org_a, sub_a = _org_and_subject(conn, "Bank A")
        org_b, sub_b = _org_and_subject(conn, "Bank B")
        refs = [_enroll(conn, org_a, sub_a, seed) for seed in (1, 2, 3)]
        ref_b = _enroll(conn, org_b, sub_b, 9)
    assert [(r.seq, r.vector_id) for r in refs] == [(1, 1), (2, 2), (3, 3)]
    assert (ref_b.seq, ref_b.vector_id) == (1, 1)  # per-org streams

    with engine.begin() as conn:
        snapshot = subject_store.current_seq(conn, org_a)
        assert snapshot == 3
        retired = subject_store.set_enrollment_status(
            conn, org_id=org_a, enrollment_id=refs[1].id, status="retired"
        )
        erased = subject_store.set_enrollment_status(
            conn, org_id=org_a, enrollment_id=refs[0].id, status="erased"
        )
        # Another org's enrollment id is invisible.
        assert (
            subject_store.set_enrollment_status(
                conn, org_id=org_b, enrollment_id=refs[2].id, status="retired"
            )
            is None
        )
    assert (retired, erased) == (4, 5)

    with engine.connect() as conn:
        assert list(subject_store.enrollment_rows_since(conn, org_a, 0)) == [(3, 3, _vector(3))]
        assert list(subject_store.enrollment_rows_since(conn, org_a, 3)) == []
        assert list(subject_store.enrollment_rows_since(conn, org_b, 0)) == [(1, 1, _vector(9))]
        assert list(subject_store.enrollment_rows_since(conn, org_a, 0, model_id="other")) == []
        changes = list(subject_store.enrollment_changes_since(conn, org_a, snapshot))
        assert [(c.seq, c.vector_id, c.status, c.vector, c.id) for c in changes] == [
            (4, 2, "retired", None, refs[1].id),
            (5, 1, "erased", None, refs[0].id),
        ]
        erased_row = conn.execute(
            sa.select(enrollments.c.vector, enrollments.c.hashed_ref).where(
                enrollments.c.id == refs[0].id
            )
        ).one()
        assert tuple(erased_row) == (None, None)
        assert subject_store.current_seq(conn, org_a) == 5


def test_concurrent_enrollments_become_visible_in_seq_order(engine: Engine) -> None:
    """The replay guarantee: a reader never sees seq N committed while a smaller one is not."""
    with engine.begin() as conn:
        org_id, subject_pk = _org_and_subject(conn)
    writers, per_writer = 6, 8
    done = threading.Event()
    errors: list[BaseException] = []
    snapshots: list[list[int]] = []

    def write(w: int) -> None:
        try:
            for i in range(per_writer):
                with engine.begin() as conn:
                    _enroll(conn, org_id, subject_pk, w * 100 + i)
        except BaseException as exc:
            errors.append(exc)

    def read() -> None:
        while not done.is_set():
            # A deferred (read-only) transaction: one consistent snapshot, no write lock.
            with engine.connect() as conn, read_only(conn).begin():
                snapshots.append(
                    [seq for seq, _, _ in subject_store.enrollment_rows_since(conn, org_id, 0)]
                )

    reader = threading.Thread(target=read)
    reader.start()
    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done.set()
    reader.join()
    assert errors == []
    total = writers * per_writer
    assert all(seqs == list(range(1, len(seqs) + 1)) for seqs in snapshots)
    with engine.connect() as conn:
        rows = list(subject_store.enrollment_rows_since(conn, org_id, 0))
    assert [seq for seq, _, _ in rows] == list(range(1, total + 1))


def test_constraints_hold(engine: Engine) -> None:
    with engine.begin() as conn:
        org_id, subject_pk = _org_and_subject(conn)
    with engine.begin() as conn:  # one subject per (org, subject_id): nothing written
        assert subject_store.insert_subject(conn, org_id=org_id, subject_id="cust-1") is None
        assert subject_store.find_subject(conn, org_id, "cust-1").id == subject_pk
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
        # foreign keys are enforced (SQLite needs PRAGMA foreign_keys=ON for this)
        subject_store.insert_subject(conn, org_id="org_nope", subject_id="cust-2")
    with engine.begin() as conn, pytest.raises(ValueError, match="expected 4 float32"):
        subject_store.insert_enrollment(
            conn,
            org_id=org_id,
            subject_pk=subject_pk,
            vector=b"\x00" * 12,
            dimension=DIM,
            model_id="m",
            hashed_ref=None,
        )
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
        conn.execute(
            sa.update(subjects).where(subjects.c.id == subject_pk).values(status="deleted")
        )


def test_frames_rows(engine: Engine) -> None:
    with engine.begin() as conn:
        org_id, subject_pk = _org_and_subject(conn)
        ref = _enroll(conn, org_id, subject_pk, 1)
        frame_id = frame_store.insert_frame(
            conn,
            org_id=org_id,
            enrollment_id=ref.id,
            object_key="frm_key_1",
            wrapped_dek=b"\x01" * 65,
            kek_version=1,
            purge_after=T0 + timedelta(days=90),
            frame_id="frm_fixed",
            now=T0,
        )
    with engine.connect() as conn:
        row = conn.execute(sa.select(frames)).one()
    assert frame_id == "frm_fixed"
    assert (row.enrollment_id, row.object_key, row.kek_version, row.purge_after) == (
        ref.id,
        "frm_key_1",
        1,
        datetime(2026, 5, 30, 12, 0, tzinfo=UTC),
    )
    # SQLAlchemy wraps the type's ValueError in a StatementError.
    with pytest.raises(sa.exc.StatementError, match="naive datetime"), engine.begin() as conn:
        frame_store.insert_frame(
            conn,
            org_id=org_id,
            enrollment_id=ref.id,
            object_key="frm_key_2",
            wrapped_dek=b"",
            kek_version=1,
            purge_after=datetime(2026, 1, 1),
        )


def test_bulk_inserts_continue_the_change_stream_in_order(engine: Engine) -> None:
    with engine.begin() as conn:
        org_id, subject_pk = _org_and_subject(conn)
        first = _enroll(conn, org_id, subject_pk, seed=1)
        pks = subject_store.insert_subjects_bulk(
            conn, org_id=org_id, subject_ids=["s-a", "s-b", "s-c"]
        )
        refs = subject_store.insert_enrollments_bulk(
            conn,
            org_id=org_id,
            subject_pks=pks,
            vectors=[_vector(n) for n in (2, 3, 4)],
            dimension=DIM,
            model_id="m",
            hashed_refs=[bytes([n]) * 32 for n in (2, 3, 4)],
            enrollment_ids=["emb_a", "emb_b", "emb_c"],
        )
        after = _enroll(conn, org_id, subject_pk, seed=5)
    assert [(r.id, r.seq, r.vector_id) for r in refs] == [
        ("emb_a", first.seq + 1, first.seq + 1),
        ("emb_b", first.seq + 2, first.seq + 2),
        ("emb_c", first.seq + 3, first.seq + 3),
    ]
    assert after.seq == first.seq + 4
    with engine.connect() as conn, read_only(conn).begin():
        rows = list(subject_store.enrollment_rows_since(conn, org_id, first.seq))
        assert [(seq, vid, vec) for seq, vid, vec in rows] == [
            (first.seq + 1, first.seq + 1, _vector(2)),
            (first.seq + 2, first.seq + 2, _vector(3)),
            (first.seq + 3, first.seq + 3, _vector(4)),
            (after.seq, after.vector_id, _vector(5)),
        ]


def test_bulk_insert_refuses_mismatched_input(engine: Engine) -> None:
    with engine.begin() as conn:
        org_id, subject_pk = _org_and_subject(conn)
        with pytest.raises(ValueError, match="differ in length"):
            subject_store.insert_enrollments_bulk(
                conn,
                org_id=org_id,
                subject_pks=[subject_pk],
                vectors=[],
                dimension=DIM,
                model_id="m",
                hashed_refs=[],
                enrollment_ids=[],
            )
        with pytest.raises(ValueError, match="float32"):
            subject_store.insert_enrollments_bulk(
                conn,
                org_id=org_id,
                subject_pks=[subject_pk],
                vectors=[b"\x00" * 3],
                dimension=DIM,
                model_id="m",
                hashed_refs=[None],
                enrollment_ids=["e"],
            )
        assert subject_store.current_seq(conn, org_id) == 0


def test_a_racing_insert_of_the_same_subject_waits_and_writes_nothing(engine: Engine) -> None:
    """Two transactions insert one new subject at once: the second waits for the first and
    gets None, never a unique violation (on SQLite the second cannot start its write before
    the first ends)."""
    with engine.begin() as conn:
        org_id, _ = _org_and_subject(conn)
    if engine.dialect.name == "sqlite":
        pytest.skip("SQLite serialises write transactions: there is no race to lose")
    first = engine.connect()
    first.begin()
    created = subject_store.insert_subject(first, org_id=org_id, subject_id="cust-race")
    assert created is not None
    outcome: list[str | None] = []

    def second() -> None:
        with engine.begin() as conn:
            outcome.append(
                subject_store.insert_subject(conn, org_id=org_id, subject_id="cust-race")
            )

    waiter = threading.Thread(target=second)
    waiter.start()
    waiter.join(0.3)
    assert waiter.is_alive()  # blocked on the first transaction's row
    first.commit()
    first.close()
    waiter.join(10)
    assert outcome == [None]
    with engine.connect() as conn:
        assert subject_store.find_subject(conn, org_id, "cust-race").id == created


def test_a_locked_bundle_holds_its_subject_against_an_erasure(engine: Engine) -> None:
    """Retiring reads a bundle's statuses under its subject's row lock: an erasure, which takes
    the same row first, waits until the retirement commits."""
    if engine.dialect.name == "sqlite":
        pytest.skip("SQLite serialises write transactions: there is no race to lose")
    with engine.begin() as conn:
        org_id, subject_pk = _org_and_subject(conn)
        subject_store.insert_enrollment(
            conn,
            org_id=org_id,
            subject_pk=subject_pk,
            vector=_vector(1),
            dimension=DIM,
            model_id="sface-2021dec",
            hashed_ref=None,
            bundle_id="enr_bundle",
        )
    retiring = engine.connect()
    retiring.begin()
    rows = subject_store.bundle_embeddings(retiring, org_id, "enr_bundle", lock=True)
    assert [r.status for r in rows] == ["active"]
    seen: list[str] = []

    def erase() -> None:
        with engine.begin() as conn:
            seen.append(subject_store.find_subject(conn, org_id, "cust-1", lock=True).status)

    eraser = threading.Thread(target=erase)
    eraser.start()
    eraser.join(0.3)
    assert eraser.is_alive()  # waits for the retirement's transaction
    retiring.commit()
    retiring.close()
    eraser.join(10)
    assert seen == ["active"]
