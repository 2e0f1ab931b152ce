"""Append-only, hash-chained, sealed audit log.

One writer, :func:`append`, called inside the transaction of the change it records, so the
change and its audit row commit or roll back together.

Chains
    One chain per org (``chain = org_id``) and one for events outside any org
    (``chain = "_system"``). Per-org chains let an org's history be listed and verified on its
    own, and appends of different orgs never wait for each other. Within a chain,
    ``chain_seq`` runs 1, 2, 3, ... without gaps.

Serialising appends
    :func:`append` first bumps the chain's row in ``audit_heads`` with
    ``INSERT ... ON CONFLICT DO UPDATE ... RETURNING``. On PostgreSQL that takes a row lock
    held until commit, so concurrent appenders to one chain queue there and each sees the
    hash its predecessor committed (READ COMMITTED re-reads the locked row). SQLite has one
    writer at a time (``create_engine_for`` begins every transaction IMMEDIATE).

Canonical row, format version 1 (what is hashed)
    UTF-8 JSON, keys sorted, no whitespace (``separators=(",", ":")``), ``ensure_ascii=True``::

        {"action": str, "actor": str, "chain": str, "chain_seq": int,
         "details_sha256": hex SHA-256 of the sealed details blob, "id": str,
         "occurred_at": "YYYY-MM-DDTHH:MM:SS.ffffffZ", "org_id": str | null,
         "target": str, "v": 1}

    ``hash = SHA-256(prev_hash || canonical_row)``; ``prev_hash`` of a chain's first row is
    32 zero bytes. The sealed details enter through their digest, so the chain can be
    verified without any key, yet editing the ciphertext breaks it. ``occurred_at`` is
    stored as that exact text so it round-trips byte for byte on both databases.

Sealing
    Details are canonical JSON sealed with the :class:`DetailSealer` (the app's
    ``EnvelopeCipher``) under the org's key, with the row id as object id, so sealed details
    moved to another row do not open.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from app.storage._upsert import upsert_statement
from app.storage.ids import new_id
from app.storage.schema import audit_heads, audit_log

FORMAT_VERSION = 1
GENESIS_HASH = bytes(32)
SYSTEM_CHAIN = "_system"
# Equals app.crypto's Purpose.AUDIT_DETAIL (a StrEnum), which accepts the plain string.
AUDIT_PURPOSE = "audit_detail"
MAX_PAGE = 500
_LIMITS = {"actor": 200, "action": 64, "target": 200}


class DetailSealer(Protocol):
    """What the audit log needs from ``app.crypto.EnvelopeCipher``.

    ``purpose`` is typed ``Any`` so the cipher's own enum-typed parameter satisfies this
    Protocol without the storage layer importing the crypto package.
    """

    def seal(self, plaintext: bytes, *, org_id: str, object_id: str, purpose: Any) -> bytes: ...

    def open(self, blob: bytes, *, org_id: str, object_id: str, purpose: Any) -> bytes: ...


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """An appended row, as hashed (details still sealed)."""

    id: str
    chain: str
    chain_seq: int
    org_id: str | None
    occurred_at: str
    actor: str
    action: str
    target: str
    details_sealed: bytes
    prev_hash: bytes
    hash: bytes


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """A row as shown to its org: details opened."""

    id: str
    seq: int
    occurred_at: str
    actor: str
    action: str
    target: str
    details: dict[str, Any]
    hash: str


@dataclass(frozen=True, slots=True)
class AuditPage:
    entries: list[AuditEntry]
    # Pass back as ``cursor`` for the next (older) page; None when there is none.
    next_cursor: int | None


@dataclass(frozen=True, slots=True)
class VerifyResult:
    ok: bool
    checked: int
    first_broken_seq: int | None = None
    reason: str | None = None
    chain: str | None = None
    first_broken_id: str | None = None


def chain_for(org_id: str | None) -> str:
    return SYSTEM_CHAIN if org_id is None else org_id


def format_timestamp(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise ValueError("naive datetime; pass an aware UTC datetime")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical_row(
    *,
    id: str,
    chain: str,
    chain_seq: int,
    org_id: str | None,
    occurred_at: str,
    actor: str,
    action: str,
    target: str,
    details_sealed: bytes,
) -> bytes:
    """The bytes hashed for one row (format documented in the module docstring)."""
    row = {
        "v": FORMAT_VERSION,
        "id": id,
        "chain": chain,
        "chain_seq": chain_seq,
        "org_id": org_id,
        "occurred_at": occurred_at,
        "actor": actor,
        "action": action,
        "target": target,
        "details_sha256": hashlib.sha256(details_sealed).hexdigest(),
    }
    return _canonical_json(row)


def chain_hash(prev_hash: bytes, canonical: bytes) -> bytes:
    return hashlib.sha256(prev_hash + canonical).digest()


# Every append runs the same three statements, built once: building them per call (and
# SQLAlchemy deriving each one's cache key) was most of an append's Python time.
_INSERT_ROW = sa.insert(audit_log)
_SET_HEAD_HASH = (
    sa.update(audit_heads)
    .where(audit_heads.c.chain == sa.bindparam("head_chain"))
    .values(hash=sa.bindparam("head_hash"))
)


@cache
def _bump_head(dialect: str) -> sa.Insert:
    return upsert_statement(
        dialect,
        audit_heads,
        values={"chain": sa.bindparam("chain"), "seq": 1, "hash": GENESIS_HASH},
        key="chain",
        on_conflict_set={"seq": audit_heads.c.seq + 1},
        returning=(audit_heads.c.seq, audit_heads.c.hash),
    )


def append(
    conn: Connection,
    *,
    sealer: DetailSealer,
    org_id: str | None,
    actor: str,
    action: str,
    target: str,
    details: Mapping[str, Any],
    now: datetime | None = None,
) -> AuditRecord:
    """Append one audit row to ``org_id``'s chain in the caller's open transaction.

    ``details`` must be JSON-serialisable; it is sealed, never stored in the clear.
    """
    if not conn.in_transaction():
        # Outside a transaction the row would commit on its own, apart from its change.
        raise RuntimeError("audit.append must run inside the transaction it records")
    for field, value in (("actor", actor), ("action", action), ("target", target)):
        if not value or len(value) > _LIMITS[field]:
            raise ValueError(f"audit {field} must be 1..{_LIMITS[field]} characters")
    chain = chain_for(org_id)
    row_id = new_id("aud")
    occurred_at = format_timestamp(now or datetime.now(UTC))
    sealed = sealer.seal(
        _canonical_json(dict(details)),
        org_id=chain,
        object_id=row_id,
        purpose=AUDIT_PURPOSE,
    )

    # Lock the chain head (or create it) and learn this row's seq and predecessor's hash.
    head = conn.execute(_bump_head(conn.dialect.name), {"chain": chain}).one()
    chain_seq, prev_hash = int(head.seq), bytes(head.hash)
    fields = {
        "id": row_id,
        "chain": chain,
        "chain_seq": chain_seq,
        "org_id": org_id,
        "occurred_at": occurred_at,
        "actor": actor,
        "action": action,
        "target": target,
        "details_sealed": sealed,
    }
    digest = chain_hash(prev_hash, canonical_row(**fields))  # type: ignore[arg-type]
    conn.execute(_INSERT_ROW, {**fields, "prev_hash": prev_hash, "hash": digest})
    conn.execute(_SET_HEAD_HASH, {"head_chain": chain, "head_hash": digest})
    return AuditRecord(
        id=row_id,
        chain=chain,
        chain_seq=chain_seq,
        org_id=org_id,
        occurred_at=occurred_at,
        actor=actor,
        action=action,
        target=target,
        details_sealed=sealed,
        prev_hash=prev_hash,
        hash=digest,
    )


def list_audit(
    conn: Connection,
    *,
    sealer: DetailSealer,
    org_id: str | None,
    cursor: int | None = None,
    limit: int = 50,
) -> AuditPage:
    """One page of ``org_id``'s audit rows, newest first, details opened for the owner.

    Only the org's own chain is read: another org's rows are unreachable by construction.
    """
    if not 1 <= limit <= MAX_PAGE:
        raise ValueError(f"limit must be 1..{MAX_PAGE}")
    chain = chain_for(org_id)
    stmt = sa.select(audit_log).where(audit_log.c.chain == chain)
    if cursor is not None:
        stmt = stmt.where(audit_log.c.chain_seq < cursor)
    rows = conn.execute(stmt.order_by(audit_log.c.chain_seq.desc()).limit(limit + 1)).all()
    entries = [
        AuditEntry(
            id=row.id,
            seq=row.chain_seq,
            occurred_at=row.occurred_at,
            actor=row.actor,
            action=row.action,
            target=row.target,
            details=json.loads(
                sealer.open(
                    bytes(row.details_sealed),
                    org_id=chain,
                    object_id=row.id,
                    purpose=AUDIT_PURPOSE,
                )
            ),
            hash=bytes(row.hash).hex(),
        )
        for row in rows[:limit]
    ]
    next_cursor = entries[-1].seq if len(rows) > limit else None
    return AuditPage(entries=entries, next_cursor=next_cursor)


def verify_chain(conn: Connection, *, chain: str | None = None) -> VerifyResult:
    """Walk one chain (or every chain) and report the first row that breaks it.

    ``first_broken_seq`` is the first position that fails (for a deleted row: the missing
    seq; ``first_broken_id`` is then the row found in its place). A row is broken when its
    ``chain_seq`` is not the expected next number (a row was
    deleted or rows were reordered), when its ``prev_hash`` is not its predecessor's hash,
    or when its stored hash is not ``SHA-256(prev_hash || canonical_row)`` (it was edited).
    Rows removed from the end are caught against the chain head. Keys are not needed.
    """
    chains = [chain] if chain is not None else _all_chains(conn)
    checked = 0
    for name in chains:
        result = _verify_one(conn, name)
        checked += result.checked
        if not result.ok:
            return VerifyResult(
                ok=False,
                checked=checked,
                first_broken_seq=result.first_broken_seq,
                reason=result.reason,
                chain=name,
                first_broken_id=result.first_broken_id,
            )
    return VerifyResult(ok=True, checked=checked)


def _all_chains(conn: Connection) -> list[str]:
    names = set(conn.execute(sa.select(audit_heads.c.chain)).scalars())
    names |= set(conn.execute(sa.select(audit_log.c.chain).distinct()).scalars())
    return sorted(names)


def _verify_one(conn: Connection, chain: str) -> VerifyResult:
    expected_seq, prev_hash, checked = 1, GENESIS_HASH, 0
    for row in _rows(conn, chain):
        seq = int(row.chain_seq)
        reason = None
        digest = b""
        if seq != expected_seq:
            reason = f"expected seq {expected_seq}, found {seq}: rows missing or moved"
        elif bytes(row.prev_hash) != prev_hash:
            reason = "prev_hash is not the previous row's hash: rows missing or moved"
        else:
            canonical = canonical_row(
                id=row.id,
                chain=row.chain,
                chain_seq=seq,
                org_id=row.org_id,
                occurred_at=row.occurred_at,
                actor=row.actor,
                action=row.action,
                target=row.target,
                details_sealed=bytes(row.details_sealed),
            )
            digest = chain_hash(prev_hash, canonical)
            if bytes(row.hash) != digest:
                reason = "hash does not match the row's contents: row edited"
        if reason is not None:
            # The position where the chain first fails, and the row found there.
            return VerifyResult(False, checked, expected_seq, reason, chain, str(row.id))
        checked += 1
        expected_seq, prev_hash = seq + 1, digest

    head = conn.execute(sa.select(audit_heads).where(audit_heads.c.chain == chain)).first()
    if head is None:
        if checked:
            return VerifyResult(False, checked, 1, "chain head missing", chain)
        return VerifyResult(ok=True, checked=0)
    if int(head.seq) != expected_seq - 1 or bytes(head.hash) != prev_hash:
        return VerifyResult(
            ok=False,
            checked=checked,
            first_broken_seq=expected_seq,
            reason=f"chain head is at seq {head.seq}: rows after {expected_seq - 1} missing",
            chain=chain,
        )
    return VerifyResult(ok=True, checked=checked)


def _rows(conn: Connection, chain: str) -> Iterator[sa.Row[Any]]:
    stmt = (
        sa.select(audit_log)
        .where(audit_log.c.chain == chain)
        .order_by(audit_log.c.chain_seq)
        .execution_options(yield_per=1000)
    )
    yield from conn.execute(stmt)


def _canonical_json(value: Mapping[str, Any]) -> bytes:
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")
