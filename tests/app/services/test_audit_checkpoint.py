"""Issue 18's three attacks on the audit log, carried out for real on SQLite and PostgreSQL,
and the signed checkpoint that anchors the log outside the database.

The attacker can write to the database (the append-only triggers dropped first, as a
superuser would) but holds neither the root key nor the checkpoint file's signing key.
(a) rows deleted from the end and the head pointed at the new last row (and, worse, the
database rolled back to an older copy); (b) a row edited and every later hash and the head
recomputed; (c) a whole org's chain and head deleted.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.engine import Engine

from app.crypto import AuditKey, EnvelopeCipher, LocalKeyring, RootKey
from app.services.audit import (
    AuditLogBrokenError,
    AuditReport,
    Checkpoint,
    InvalidCheckpointError,
    make_checkpoint,
    parse_checkpoint,
    read_checkpoint,
    verify_log,
    write_checkpoint,
)
from app.storage import audit
from app.storage.audit import SCHEME_PLAIN, canonical_row, chain_hash
from app.storage.engine import create_engine_for
from app.storage.migrate import upgrade_database
from app.storage.orgs import insert_org
from app.storage.schema import audit_heads, audit_log
from tests.app.storage.conftest import TEST_ROOT_KEY, empty_database
from tests.app.storage.test_audit import _drop_audit_triggers
from tests.conftest import BACKENDS

T_CHECKPOINT = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)


@dataclass
class Log:
    """A real audit log: orgs made as `create_org` makes them, rows appended as services do."""

    engine: Engine
    kms: LocalKeyring
    key: AuditKey
    unguarded: bool = False  # the append-only triggers dropped

    def new_org(self, name: str) -> str:
        with self.engine.begin() as conn:
            org_id = insert_org(conn, name=name)
            self.kms.create_org(org_id)
            self._append(conn, org_id, "org.create", org_id)
            self._append(conn, org_id, "api_key.create", "key_1")
        return org_id

    def append(self, org_id: str, n: int) -> None:
        for i in range(n):
            with self.engine.begin() as conn:
                self._append(conn, org_id, "match.verify", f"sub_{i}")

    def _append(self, conn: Any, org_id: str | None, action: str, target: str) -> None:
        audit.append(
            conn,
            sealer=EnvelopeCipher(self.kms),
            chain_key=self.key,
            org_id=org_id,
            actor="key_1",
            action=action,
            target=target,
            details={"n": 1},
        )

    def verify(self, checkpoint: Checkpoint | None = None) -> AuditReport:
        return verify_log(self.engine, self.key, checkpoint=checkpoint)

    def checkpoint(self) -> Checkpoint:
        return make_checkpoint(self.engine, self.key, now=T_CHECKPOINT)

    def tamper(self, *statements: str, **params: Any) -> None:
        if not self.unguarded:
            _drop_audit_triggers(self.engine)
            self.unguarded = True
        with self.engine.begin() as conn:
            for statement in statements:
                conn.execute(sa.text(statement), params)


@pytest.fixture(params=BACKENDS)
def log(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Log]:
    with empty_database(request.param, tmp_path, request) as url:
        engine = create_engine_for(url)
        upgrade_database(engine)
        kms = LocalKeyring(tmp_path / "keys", RootKey(TEST_ROOT_KEY, source="tests"))
        kms.create_org(audit.SYSTEM_CHAIN)
        try:
            yield Log(engine, kms, AuditKey(kms))
        finally:
            engine.dispose()


@pytest.fixture
def two_orgs(log: Log) -> tuple[str, str]:
    a, b = log.new_org("Bank A"), log.new_org("Bank B")
    log.append(a, 4)  # org A: 6 rows; org B: 2 rows
    with log.engine.begin() as conn:
        log._append(conn, None, "retention.sweep", "frames")  # the system chain: 1 row
    return a, b


WHEN = "the checkpoint of 2026-03-04T05:06:07.000000Z"


def test_an_untampered_log_verifies_against_an_older_checkpoint(
    log: Log, two_orgs: tuple[str, str]
) -> None:
    a, b = two_orgs
    checkpoint = log.checkpoint()
    assert [(c.chain, c.org_id, c.last_seq, c.rows) for c in checkpoint.chains] == sorted(
        [("_system", None, 1, 1), (a, a, 6, 6), (b, b, 2, 2)]
    )
    log.append(b, 2)  # the log goes on after the checkpoint
    log.new_org("Bank C")
    assert log.verify(checkpoint) == AuditReport(checked=13, legacy=0, chains=4, problems=[])
    assert log.verify() == AuditReport(checked=13, legacy=0, chains=4, problems=[])


def test_attack_a_rows_cut_from_the_end_and_head_repointed(
    log: Log, two_orgs: tuple[str, str]
) -> None:
    a, _ = two_orgs
    checkpoint = log.checkpoint()
    log.tamper(
        "DELETE FROM audit_log WHERE chain = :a AND chain_seq > 3",
        "UPDATE audit_heads SET seq = 3, hash = (SELECT hash FROM audit_log"
        " WHERE chain = :a AND chain_seq = 3) WHERE chain = :a",
        a=a,
    )
    head_unsigned = (
        f"audit chain {a} broken at row seq 4: chain head (seq 3) is not signed by the audit "
        "key: the head was rewritten, rows after it may be missing"
    )
    assert log.verify().problems == [head_unsigned]
    assert log.verify(checkpoint).problems == [
        head_unsigned,
        f"audit chain {a} has 3 rows but {WHEN} reaches seq 6: rows after seq 3 are missing "
        "(cut from the end, or the database was rolled back to an older copy)",
    ]


def test_attack_a_database_rolled_back_to_an_older_copy(
    log: Log, two_orgs: tuple[str, str]
) -> None:
    a, _ = two_orgs
    with log.engine.connect() as conn:
        old_head = conn.execute(sa.select(audit_heads).where(audit_heads.c.chain == a)).one()
    log.append(a, 3)  # rows 7..9, then the checkpoint that knows of them
    checkpoint = log.checkpoint()
    # Back to the copy of before: its rows and its head, MAC included, exactly as they were.
    log.tamper(
        "DELETE FROM audit_log WHERE chain = :a AND chain_seq > 6",
        "UPDATE audit_heads SET seq = :seq, hash = :hash, mac = :mac WHERE chain = :a",
        a=a,
        seq=old_head.seq,
        hash=old_head.hash,
        mac=old_head.mac,
    )
    # A consistent older copy: nothing inside the database tells it apart...
    assert log.verify().ok
    # ...but the checkpoint does.
    assert log.verify(checkpoint).problems == [
        f"audit chain {a} has 6 rows but {WHEN} reaches seq 9: rows after seq 6 are missing "
        "(cut from the end, or the database was rolled back to an older copy)"
    ]


def _rehash_plain(
    log: Log, chain: str, *, edit_seq: int, downgrade: bool, from_seq: int | None = None
) -> None:
    """Edit one row's actor and recompute its hash, every later one and the head, the way
    anyone without the key can: SHA-256 (from row ``from_seq`` on, default the edited one)."""
    start = edit_seq if from_seq is None else from_seq
    _drop_audit_triggers(log.engine)
    with log.engine.begin() as conn:
        rows = conn.execute(
            sa.select(audit_log).where(audit_log.c.chain == chain).order_by(audit_log.c.chain_seq)
        ).all()
        prev = bytes(rows[start - 2].hash) if start > 1 else audit.GENESIS_HASH
        for row in rows[start - 1 :]:
            fields = {k: getattr(row, k) for k in ("id", "chain", "chain_seq", "org_id")}
            fields |= {k: getattr(row, k) for k in ("occurred_at", "action", "target")}
            fields["actor"] = "mallory" if row.chain_seq == edit_seq else row.actor
            scheme = SCHEME_PLAIN if downgrade else int(row.hash_scheme)
            digest = chain_hash(
                prev,
                canonical_row(scheme=scheme, **fields, details_sealed=bytes(row.details_sealed)),
            )
            conn.execute(
                sa.update(audit_log)
                .where(audit_log.c.id == row.id)
                .values(actor=fields["actor"], prev_hash=prev, hash=digest, hash_scheme=scheme)
            )
            prev = digest
        # The head's MAC cannot be recomputed: a downgrade drops it, as plain heads have none.
        head = {"hash": prev, **({"mac": None} if downgrade else {})}
        conn.execute(sa.update(audit_heads).where(audit_heads.c.chain == chain).values(**head))


def test_attack_b_row_edited_and_later_hashes_recomputed(
    log: Log, two_orgs: tuple[str, str]
) -> None:
    a, _ = two_orgs
    checkpoint = log.checkpoint()
    with log.engine.connect() as conn:
        row_id = conn.execute(
            sa.select(audit_log.c.id).where(audit_log.c.chain == a, audit_log.c.chain_seq == 2)
        ).scalar_one()
    _rehash_plain(log, a, edit_seq=2, downgrade=False)
    edited = (
        f"audit chain {a} broken at row seq 2 (id {row_id}): hash does not match the row's "
        "contents: row edited"
    )
    assert log.verify().problems == [edited]
    assert log.verify(checkpoint).problems == [
        edited,
        f"audit chain {a}: row seq 6 is not the row {WHEN} recorded: rows up to it were rewritten",
    ]


def test_attack_b_rows_rewritten_as_plain_after_a_keyed_row(
    log: Log, two_orgs: tuple[str, str]
) -> None:
    a, _ = two_orgs
    _rehash_plain(log, a, edit_seq=2, downgrade=True)
    (problem,) = log.verify().problems
    assert problem.startswith(f"audit chain {a} broken at row seq 2 (id ")
    assert problem.endswith("unkeyed row after keyed rows: rows rewritten without the audit key")


def test_attack_b_whole_chain_rewritten_as_plain_sha256(
    log: Log, two_orgs: tuple[str, str]
) -> None:
    """The attacker also marks every row as written before keying: only a checkpoint taken
    after the upgrade can tell (the report counts the rows that verify only as SHA-256)."""
    a, _ = two_orgs
    checkpoint = log.checkpoint()
    log.append(a, 1)
    _rehash_plain(log, a, edit_seq=2, downgrade=True, from_seq=1)
    without = log.verify()
    assert (without.ok, without.legacy) == (True, 7)
    assert log.verify(checkpoint).problems == [
        f"audit chain {a}: row seq 6 is not the row {WHEN} recorded: rows up to it were rewritten",
        f"audit chain {a}: unkeyed rows up to seq 7, after {WHEN} (seq 6): rows were "
        "rewritten without the audit key",
    ]


def test_attack_c_an_orgs_chain_and_head_deleted(log: Log, two_orgs: tuple[str, str]) -> None:
    _, b = two_orgs
    checkpoint = log.checkpoint()
    log.tamper(
        "DELETE FROM audit_log WHERE chain = :b",
        "DELETE FROM audit_heads WHERE chain = :b",
        b=b,
    )
    no_chain = f"org {b} has no audit chain: its rows and head were deleted"
    assert log.verify().problems == [no_chain]
    assert log.verify(checkpoint).problems == [
        no_chain,
        f"audit chain {b} is missing: {WHEN} has 2 rows up to seq 2 (the chain was deleted)",
    ]
    # Deleting the org itself as well leaves nothing inside the database to miss it...
    log.tamper("DELETE FROM orgs WHERE id = :b", b=b)
    assert log.verify().ok
    # ...except against the checkpoint.
    assert log.verify(checkpoint).problems == [
        f"audit chain {b} is missing: {WHEN} has 2 rows up to seq 2 (the chain was deleted)"
    ]


def test_a_checkpoint_is_refused_for_a_broken_log(log: Log, two_orgs: tuple[str, str]) -> None:
    a, _ = two_orgs
    log.tamper("UPDATE audit_log SET target = 'x' WHERE chain = :a AND chain_seq = 3", a=a)
    with pytest.raises(AuditLogBrokenError, match=f"audit chain {a} broken at row seq 3"):
        log.checkpoint()


# --- the checkpoint file ----------------------------------------------------------------------


def test_checkpoint_file_round_trip_and_format(
    log: Log, two_orgs: tuple[str, str], tmp_path: Path
) -> None:
    made = log.checkpoint()
    path = tmp_path / "audit.checkpoint"
    write_checkpoint(path, made)
    document = json.loads(path.read_text())
    assert sorted(document) == ["chains", "created_at", "format", "public_key", "signature"]
    assert document["format"] == "wajah-audit-checkpoint/1"
    assert document["created_at"] == "2026-03-04T05:06:07.000000Z"
    assert document["public_key"] == log.key.public_key().hex()
    assert read_checkpoint(path, log.key) == made


def _doctored(made: Checkpoint, change: Any) -> bytes:
    document = json.loads(made.to_bytes())
    change(document)
    return json.dumps(document).encode()


def test_a_tampered_checkpoint_is_refused(log: Log, two_orgs: tuple[str, str]) -> None:
    made = log.checkpoint()

    def roll_back(document: dict[str, Any]) -> None:
        document["chains"][1]["last_seq"] = 3  # claims org A had only 3 rows

    with pytest.raises(InvalidCheckpointError, match="signature does not verify: .* altered"):
        parse_checkpoint(_doctored(made, roll_back), log.key)


def test_a_checkpoint_signed_by_another_key_is_refused(log: Log, two_orgs: tuple[str, str]) -> None:
    made = log.checkpoint()
    forger = Ed25519PrivateKey.generate()
    forged_key = forger.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    unsigned = Checkpoint(made.created_at, forged_key, made.chains[:1], b"")
    forged = Checkpoint(
        made.created_at, forged_key, made.chains[:1], forger.sign(unsigned.signed_message())
    )
    with pytest.raises(InvalidCheckpointError, match="not by this deployment's audit key"):
        parse_checkpoint(forged.to_bytes(), log.key)
    # Our public key on the forger's signature does not pass either.
    with pytest.raises(InvalidCheckpointError, match="signature does not verify"):
        parse_checkpoint(
            _doctored(forged, lambda d: d.update(public_key=log.key.public_key().hex())),
            log.key,
        )


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00", "not UTF-8 JSON"),
        (b"", "not UTF-8 JSON"),
        (b'{"format": "wajah-audit-checkpoint/1", "chains": [', "not UTF-8 JSON"),
        (b"[1, 2, 3]", 'no "format": "wajah-audit-checkpoint/1"'),
        (b'{"format": "something-else/1"}', 'no "format"'),
        (b'{"format": "wajah-audit-checkpoint/1"}', "fields must be"),
    ],
    ids=["binary", "empty", "truncated", "list", "other-format", "fields"],
)
def test_garbage_checkpoints_get_a_clear_error(
    log: Log, two_orgs: tuple[str, str], data: bytes, why: str
) -> None:
    with pytest.raises(
        InvalidCheckpointError, match="is not a valid wajah audit checkpoint: "
    ) as e:
        parse_checkpoint(data, log.key)
    assert why in e.value.message


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (lambda d: d.update(signature="zz"), "signature is not 64 bytes of hex"),
        (lambda d: d.update(public_key=1), "public_key is not 32 bytes of hex"),
        (lambda d: d.update(chains={}), "chains is not a list"),
        (lambda d: d["chains"][0].update(last_seq="5"), "last_seq of chain '_system' is not"),
        (lambda d: d["chains"][0].update(rows=-1), "rows of chain '_system' is not"),
        (lambda d: d["chains"][0].update(last_seq=True), "last_seq of chain '_system' is not"),
        (lambda d: d["chains"][0].update(org_id="org_x"), "has org_id 'org_x'"),
        (lambda d: d["chains"][0].pop("last_hash"), "a chain entry must have the fields"),
        (lambda d: d["chains"].reverse(), "chains are not sorted and unique"),
        (lambda d: d["chains"][0].update(last_hash="ab" * 31), "last_hash of chain '_system'"),
    ],
    ids=[
        "signature",
        "public-key",
        "chains",
        "seq-text",
        "rows-negative",
        "seq-bool",
        "org-id",
        "field-missing",
        "order",
        "hash-short",
    ],
)
def test_malformed_checkpoint_fields_are_named(
    log: Log, two_orgs: tuple[str, str], change: Any, why: str
) -> None:
    with pytest.raises(InvalidCheckpointError, match="is not a valid wajah audit checkpoint") as e:
        parse_checkpoint(_doctored(log.checkpoint(), change), log.key)
    assert why in e.value.message


def test_an_unreadable_checkpoint_file(log: Log, tmp_path: Path) -> None:
    with pytest.raises(InvalidCheckpointError, match="cannot read checkpoint .*missing"):
        read_checkpoint(tmp_path / "missing", log.key)
