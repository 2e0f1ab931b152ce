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

Hash schemes (``hash_scheme`` of each row, migration 0005)
    Scheme 2, every row written now: ``hash = HMAC-SHA-256(chain key, b"wajah/audit/row/v2"
    || 0x00 || prev_hash || canonical_row)``, the chain key being the audit key's
    (``app.crypto.AuditKey``), which neither the database nor anyone with write access to it
    holds. Scheme 1, rows written before migration 0005: ``hash = SHA-256(prev_hash ||
    canonical_row)``, kept as written. Schemes never go down along a chain: the first keyed
    row MACs the last plain row's hash, so the plain rows before it are pinned from then on.
    ``prev_hash`` of a chain's first row is 32 zero bytes.

Canonical row (what is hashed), format version = hash scheme
    UTF-8 JSON, keys sorted, no whitespace (``separators=(",", ":")``), ``ensure_ascii=True``::

        {"action": str, "actor": str, "chain": str, "chain_seq": int,
         "details_sha256": hex SHA-256 of the sealed details blob, "id": str,
         "occurred_at": "YYYY-MM-DDTHH:MM:SS.ffffffZ", "org_id": str | null,
         "target": str, "v": 1 | 2}

    The sealed details enter through their digest, so editing the ciphertext breaks the
    chain. ``occurred_at`` is stored as that exact text so it round-trips byte for byte on
    both databases.

Chain heads
    ``audit_heads`` holds each chain's last seq and hash and, once the chain has a keyed row,
    ``mac = HMAC-SHA-256(chain key, b"wajah/audit/head/v2" || 0x00 || hash)``. Without the key
    the head cannot be pointed at an earlier row (rows cut from the end). A database rolled
    back to an older copy carries older heads with valid MACs: only a checkpoint kept outside
    the database (``app.services.audit``) tells that apart.

Retention anchors (migration 0007)
    Rows older than the retention (7 years by default) are purged from the start of a chain,
    never from its middle or end. Before the purge, :func:`anchor_chain` records the last
    purged row's seq, hash and scheme in ``audit_anchors`` with ``mac = HMAC-SHA-256(chain
    key, b"wajah/audit/anchor/v1" || 0x00 || anchor_message)`` (and an Ed25519 signature by
    the checkpoint key, for anyone holding the public key); the walk then starts at the
    anchor as if it were the purged row: seq ``through_seq + 1`` must follow ``anchor_hash``.
    An anchor moved without the key fails its MAC; the database refuses to delete a row above
    its chain's anchor (migration 0007's triggers).

Sealing
    Details are canonical JSON sealed with the :class:`DetailSealer` (the app's
    ``EnvelopeCipher``) under the org's key, with the row id as object id, so sealed details
    moved to another row do not open.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from app.storage._upsert import upsert_statement
from app.storage.engine import read_only
from app.storage.ids import new_id
from app.storage.schema import audit_anchors, audit_heads, audit_log, orgs
from app.storage.wrapped import detail_keys_of

SCHEME_PLAIN = 1  # SHA-256, rows written before migration 0005
SCHEME_KEYED = 2  # HMAC-SHA-256 under the audit key
GENESIS_HASH = bytes(32)
SYSTEM_CHAIN = "_system"
# Equals app.crypto's Purpose.AUDIT_DETAIL (a StrEnum), which accepts the plain string.
AUDIT_PURPOSE = "audit_detail"
MAX_PAGE = 500
_LIMITS = {"actor": 200, "action": 64, "target": 200}
_ROW_PREFIX = b"wajah/audit/row/v2\x00"
_HEAD_PREFIX = b"wajah/audit/head/v2\x00"
_ANCHOR_PREFIX = b"wajah/audit/anchor/v1\x00"


class DetailSealer(Protocol):
    """What the audit log needs from ``app.crypto.EnvelopeCipher``.

    ``purpose`` is typed ``Any`` so the cipher's own enum-typed parameter satisfies this
    Protocol without the storage layer importing the crypto package.
    """

    def seal(self, plaintext: bytes, *, org_id: str, object_id: str, purpose: Any) -> bytes: ...

    def open(
        self,
        blob: bytes,
        *,
        org_id: str,
        object_id: str,
        purpose: Any,
        wrapped_dek: bytes | None = None,
    ) -> bytes: ...


class ChainKey(Protocol):
    """What the audit log needs from ``app.crypto.AuditKey``: HMAC-SHA-256 under the chain
    key, 32 bytes."""

    def mac(self, message: bytes) -> bytes: ...


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
    hash_scheme: int = SCHEME_KEYED


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


@dataclass(frozen=True, slots=True)
class ChainReport:
    """One chain as a verifying walk found it."""

    chain: str
    result: VerifyResult  # ok, or where and why the chain first breaks
    rows: int  # rows in the chain (all of them, not only those that verified)
    legacy: int  # plain SHA-256 rows (scheme 1); always the chain's first ones
    last_seq: int  # the last row that verified (0: none)
    last_hash: bytes
    last_at: str | None
    anchored_seq: int = 0  # rows up to it were purged by retention (0: none)
    anchored_hash: bytes = GENESIS_HASH

    @property
    def org_id(self) -> str | None:
        return None if self.chain == SYSTEM_CHAIN else self.chain


def chain_for(org_id: str | None) -> str:
    return SYSTEM_CHAIN if org_id is None else org_id


def format_timestamp(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise ValueError("naive datetime; pass an aware UTC datetime")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical_row(
    *,
    scheme: int,
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
        "v": scheme,
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
    """Scheme 1 (rows written before migration 0005): plain SHA-256."""
    return hashlib.sha256(prev_hash + canonical).digest()


def keyed_chain_hash(key: ChainKey, prev_hash: bytes, canonical: bytes) -> bytes:
    """Scheme 2: HMAC-SHA-256 under the chain key."""
    return key.mac(_ROW_PREFIX + prev_hash + canonical)


def head_mac(key: ChainKey, last_hash: bytes) -> bytes:
    return key.mac(_HEAD_PREFIX + last_hash)


# Every append runs the same three statements, built once: building them per call (and
# SQLAlchemy deriving each one's cache key) was most of an append's Python time.
_INSERT_ROW = sa.insert(audit_log)
_SET_HEAD_HASH = (
    sa.update(audit_heads)
    .where(audit_heads.c.chain == sa.bindparam("head_chain"))
    .values(hash=sa.bindparam("head_hash"), mac=sa.bindparam("head_mac"))
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
    chain_key: ChainKey,
    org_id: str | None,
    actor: str,
    action: str,
    target: str,
    details: Mapping[str, Any],
    now: datetime | None = None,
) -> AuditRecord:
    """Append one audit row to ``org_id``'s chain in the caller's open transaction.

    ``details`` must be JSON-serialisable; it is sealed, never stored in the clear. The row
    is hashed under ``chain_key`` (scheme 2).
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
    canonical = canonical_row(scheme=SCHEME_KEYED, **fields)  # type: ignore[arg-type]
    digest = keyed_chain_hash(chain_key, prev_hash, canonical)
    conn.execute(
        _INSERT_ROW,
        {**fields, "prev_hash": prev_hash, "hash": digest, "hash_scheme": SCHEME_KEYED},
    )
    conn.execute(
        _SET_HEAD_HASH,
        {"head_chain": chain, "head_hash": digest, "head_mac": head_mac(chain_key, digest)},
    )
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
    # Details whose DEK a key rotation rewrapped open with that (app.storage.wrapped).
    rewrapped = detail_keys_of(conn, [row.id for row in rows[:limit]])
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
                    wrapped_dek=rewrapped.get(row.id),
                )
            ),
            hash=bytes(row.hash).hex(),
        )
        for row in rows[:limit]
    ]
    next_cursor = entries[-1].seq if len(rows) > limit else None
    return AuditPage(entries=entries, next_cursor=next_cursor)


@contextmanager
def snapshot(engine: Engine) -> Iterator[Connection]:
    """A read-only transaction that sees one moment of the whole log: REPEATABLE READ on
    PostgreSQL (under READ COMMITTED a walk racing appends would see a head newer than the
    rows it read), a deferred read transaction on SQLite (WAL readers see one snapshot)."""
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
        else:
            conn = read_only(conn)
        with conn.begin():
            yield conn


def verify_chain(
    conn: Connection, *, chain_key: ChainKey, chain: str | None = None
) -> VerifyResult:
    """Walk one chain (or every chain) and report the first row that breaks it.

    ``first_broken_seq`` is the first position that fails (for a deleted row: the missing
    seq; ``first_broken_id`` is then the row found in its place). A row is broken when its
    ``chain_seq`` is not the expected next number (a row was deleted or rows were
    reordered), when its ``prev_hash`` is not its predecessor's hash, when it is unkeyed
    after a keyed row (downgraded), or when its stored hash is not what its scheme makes of
    it (it was edited). Rows removed from the end are caught against the chain head and its
    MAC.
    """
    checked = 0
    for report in walk_chains(conn, chain_key=chain_key, chain=chain):
        checked += report.result.checked
        if not report.result.ok:
            return VerifyResult(
                ok=False,
                checked=checked,
                first_broken_seq=report.result.first_broken_seq,
                reason=report.result.reason,
                chain=report.chain,
                first_broken_id=report.result.first_broken_id,
            )
    return VerifyResult(ok=True, checked=checked)


def walk_chains(
    conn: Connection, *, chain_key: ChainKey, chain: str | None = None
) -> list[ChainReport]:
    """Verify one chain (or every chain), each to its first break; see :func:`verify_chain`."""
    chains = [chain] if chain is not None else _all_chains(conn)
    return [_verify_one(conn, name, chain_key) for name in chains]


def orgs_without_chain(conn: Connection) -> list[str]:
    """Orgs that have neither audit rows nor a chain head: every org gets rows when it is
    created, so its chain was deleted."""
    has_head = sa.exists().where(audit_heads.c.chain == orgs.c.id)
    has_rows = sa.exists().where(audit_log.c.chain == orgs.c.id)
    stmt = sa.select(orgs.c.id).where(~has_head, ~has_rows).order_by(orgs.c.id)
    return list(conn.execute(stmt).scalars())


def row_hash_at(conn: Connection, chain: str, seq: int) -> bytes | None:
    """The stored hash of ``chain``'s row ``seq``, None when there is no such row."""
    stmt = sa.select(audit_log.c.hash).where(
        audit_log.c.chain == chain, audit_log.c.chain_seq == seq
    )
    found = conn.execute(stmt).scalar_one_or_none()
    return None if found is None else bytes(found)


def _all_heads(conn: Connection) -> list[str]:
    return sorted(conn.execute(sa.select(audit_heads.c.chain)).scalars())


def _all_chains(conn: Connection) -> list[str]:
    names = set(conn.execute(sa.select(audit_heads.c.chain)).scalars())
    names |= set(conn.execute(sa.select(audit_log.c.chain).distinct()).scalars())
    return sorted(names)


def _row_problem(
    row: sa.Row[Any], expected_seq: int, prev_hash: bytes, prev_scheme: int
) -> str | None:
    seq, scheme = int(row.chain_seq), int(row.hash_scheme)
    if seq != expected_seq:
        return f"expected seq {expected_seq}, found {seq}: rows missing or moved"
    if bytes(row.prev_hash) != prev_hash:
        return "prev_hash is not the previous row's hash: rows missing or moved"
    if scheme not in (SCHEME_PLAIN, SCHEME_KEYED):
        return f"unknown hash scheme {scheme}: row edited"
    if scheme < prev_scheme:
        return "unkeyed row after keyed rows: rows rewritten without the audit key"
    return None


def _row_hash(row: sa.Row[Any], prev_hash: bytes, chain_key: ChainKey) -> bytes:
    scheme = int(row.hash_scheme)
    canonical = canonical_row(
        scheme=scheme,
        id=row.id,
        chain=row.chain,
        chain_seq=int(row.chain_seq),
        org_id=row.org_id,
        occurred_at=row.occurred_at,
        actor=row.actor,
        action=row.action,
        target=row.target,
        details_sealed=bytes(row.details_sealed),
    )
    if scheme == SCHEME_PLAIN:
        return chain_hash(prev_hash, canonical)
    return keyed_chain_hash(chain_key, prev_hash, canonical)


@dataclass
class _Walk:
    """Where a walk along one chain has got to."""

    expected_seq: int = 1
    prev_hash: bytes = GENESIS_HASH
    prev_scheme: int = SCHEME_PLAIN
    checked: int = 0
    legacy: int = 0
    last_at: str | None = None


def _verify_one(conn: Connection, chain: str, chain_key: ChainKey) -> ChainReport:
    walk, rows = _Walk(), 0
    broken: VerifyResult | None = None
    anchor = anchor_of(conn, chain)
    if anchor is not None:
        if not anchor_valid(anchor, chain_key):
            broken = VerifyResult(
                False,
                0,
                anchor.through_seq,
                "retention anchor is not signed by the audit key: the anchor was moved or forged",
                chain,
            )
        walk.expected_seq, walk.prev_hash = anchor.through_seq + 1, anchor.anchor_hash
        walk.prev_scheme = anchor.anchor_scheme
    for row in _rows(conn, chain):
        rows += 1
        if broken is not None:
            continue  # count the rest; the first break is what is reported
        reason = _row_problem(row, walk.expected_seq, walk.prev_hash, walk.prev_scheme)
        digest = b""
        if reason is None:
            digest = _row_hash(row, walk.prev_hash, chain_key)
            if bytes(row.hash) != digest:
                reason = "hash does not match the row's contents: row edited"
        if reason is not None:
            # The position where the chain first fails, and the row found there.
            broken = VerifyResult(
                False, walk.checked, walk.expected_seq, reason, chain, str(row.id)
            )
            continue
        walk.checked += 1
        walk.legacy += int(row.hash_scheme) == SCHEME_PLAIN
        walk.expected_seq, walk.prev_hash = walk.expected_seq + 1, digest
        walk.prev_scheme, walk.last_at = int(row.hash_scheme), row.occurred_at
    result = broken or _check_head(conn, chain, chain_key, walk)
    return ChainReport(
        chain=chain,
        result=result,
        rows=rows,
        legacy=walk.legacy,
        last_seq=walk.expected_seq - 1,
        last_hash=walk.prev_hash,
        last_at=walk.last_at,
        anchored_seq=0 if anchor is None else anchor.through_seq,
        anchored_hash=GENESIS_HASH if anchor is None else anchor.anchor_hash,
    )


def _check_head(conn: Connection, chain: str, chain_key: ChainKey, walk: _Walk) -> VerifyResult:
    head = conn.execute(sa.select(audit_heads).where(audit_heads.c.chain == chain)).first()
    last_seq = walk.expected_seq - 1

    def broken(reason: str) -> VerifyResult:
        return VerifyResult(False, walk.checked, walk.expected_seq, reason, chain)

    if head is None:
        anchored = walk.expected_seq > 1  # rows were purged: a head was there
        return broken("chain head missing") if walk.checked or anchored else VerifyResult(True, 0)
    if int(head.seq) != last_seq or bytes(head.hash) != walk.prev_hash:
        return broken(f"chain head is at seq {head.seq}: rows after {last_seq} missing")
    mac = None if head.mac is None else bytes(head.mac)
    if walk.prev_scheme == SCHEME_KEYED:
        if mac is None or not hmac.compare_digest(mac, head_mac(chain_key, walk.prev_hash)):
            return broken(
                f"chain head (seq {last_seq}) is not signed by the audit key: the head was "
                "rewritten, rows after it may be missing"
            )
    elif mac is not None:
        return broken("chain head is signed but its last row is unkeyed: rows rewritten")
    return VerifyResult(ok=True, checked=walk.checked)


def _rows(conn: Connection, chain: str, through: int | None = None) -> Iterator[sa.Row[Any]]:
    stmt = sa.select(audit_log).where(audit_log.c.chain == chain)
    if through is not None:
        stmt = stmt.where(audit_log.c.chain_seq <= through)
    stmt = stmt.order_by(audit_log.c.chain_seq).execution_options(yield_per=1000)
    yield from conn.execute(stmt)


# --- retention: purging a chain's oldest rows behind a signed anchor --------------------------


@dataclass(frozen=True, slots=True)
class Anchor:
    """Where a chain starts once its first rows were purged (``audit_anchors``)."""

    chain: str
    through_seq: int
    anchor_hash: bytes
    anchor_scheme: int
    purged_rows: int
    anchored_at: str
    mac: bytes = b""
    signature: bytes = b""

    def message(self) -> bytes:
        """What the MAC and the signature cover: the prefix, then canonical JSON."""
        return _ANCHOR_PREFIX + _canonical_json(
            {
                "chain": self.chain,
                "through_seq": self.through_seq,
                "anchor_hash": self.anchor_hash.hex(),
                "anchor_scheme": self.anchor_scheme,
                "purged_rows": self.purged_rows,
                "anchored_at": self.anchored_at,
            }
        )


def anchor_valid(anchor: Anchor, chain_key: ChainKey) -> bool:
    return hmac.compare_digest(anchor.mac, chain_key.mac(anchor.message()))


def anchor_of(conn: Connection, chain: str) -> Anchor | None:
    row = conn.execute(sa.select(audit_anchors).where(audit_anchors.c.chain == chain)).first()
    if row is None:
        return None
    return Anchor(
        chain=row.chain,
        through_seq=int(row.through_seq),
        anchor_hash=bytes(row.anchor_hash),
        anchor_scheme=int(row.anchor_scheme),
        purged_rows=int(row.purged_rows),
        anchored_at=row.anchored_at,
        mac=bytes(row.mac),
        signature=bytes(row.signature),
    )


def chains_with_rows_before(conn: Connection, cutoff: datetime) -> list[str]:
    """Chains whose first remaining row occurred before ``cutoff``."""
    # One index lookup per chain (its first remaining row), not a scan of the whole log.
    stamp = format_timestamp(cutoff)
    first = (
        sa.select(audit_log.c.occurred_at)
        .where(audit_log.c.chain == sa.bindparam("chain"))
        .order_by(audit_log.c.chain_seq)
        .limit(1)
    )
    found = []
    for chain in _all_heads(conn):
        oldest = conn.execute(first, {"chain": chain}).scalar_one_or_none()
        if oldest is not None and oldest < stamp:
            found.append(chain)
    return found


def last_seq_before(conn: Connection, chain: str, cutoff: datetime) -> int:
    """The seq up to which ``chain`` may be purged: every row up to it occurred before
    ``cutoff`` (the rows before the first one at or after it; 0: none)."""
    stamp = format_timestamp(cutoff)
    first_kept = conn.execute(
        sa.select(sa.func.min(audit_log.c.chain_seq)).where(
            audit_log.c.chain == chain, audit_log.c.occurred_at >= stamp
        )
    ).scalar_one()
    if first_kept is not None:
        return int(first_kept) - 1
    head = conn.execute(
        sa.select(audit_heads.c.seq).where(audit_heads.c.chain == chain)
    ).scalar_one_or_none()
    return 0 if head is None else int(head)


def verify_prefix(
    conn: Connection, chain: str, through: int, chain_key: ChainKey
) -> tuple[Anchor | None, str | None]:
    """Walk ``chain`` from its start (or anchor) to row ``through``: the anchor those rows
    would leave (unsigned, ``purged_rows`` of this purge), or None and why they do not
    verify (a broken prefix is evidence, never purged)."""
    walk, count = _Walk(), 0
    anchor = anchor_of(conn, chain)
    if anchor is not None:
        if not anchor_valid(anchor, chain_key):
            return None, "its retention anchor does not verify"
        walk.expected_seq, walk.prev_hash = anchor.through_seq + 1, anchor.anchor_hash
        walk.prev_scheme = anchor.anchor_scheme
    for row in _rows(conn, chain, through):
        reason = _row_problem(row, walk.expected_seq, walk.prev_hash, walk.prev_scheme)
        digest = b"" if reason else _row_hash(row, walk.prev_hash, chain_key)
        if reason is None and bytes(row.hash) != digest:
            reason = "hash does not match the row's contents: row edited"
        if reason is not None:
            return None, f"row seq {walk.expected_seq}: {reason}"
        count += 1
        walk.expected_seq, walk.prev_hash = walk.expected_seq + 1, digest
        walk.prev_scheme = int(row.hash_scheme)
    if walk.expected_seq - 1 != through:
        return None, f"rows up to seq {through} are missing"
    return Anchor(chain, through, walk.prev_hash, walk.prev_scheme, count, ""), None


def set_anchor(conn: Connection, anchor: Anchor) -> None:
    """Record (or move forward) ``chain``'s anchor; the purge may then delete up to it."""
    values = {
        "through_seq": anchor.through_seq,
        "anchor_hash": anchor.anchor_hash,
        "anchor_scheme": anchor.anchor_scheme,
        "purged_rows": anchor.purged_rows,
        "anchored_at": anchor.anchored_at,
        "mac": anchor.mac,
        "signature": anchor.signature,
    }
    moved = conn.execute(
        sa.update(audit_anchors).where(audit_anchors.c.chain == anchor.chain).values(**values)
    ).rowcount
    if not moved:
        conn.execute(sa.insert(audit_anchors).values(chain=anchor.chain, **values))


def purge_anchored(conn: Connection, chain: str) -> int:
    """Delete ``chain``'s rows at or below its anchor; how many. On PostgreSQL through the
    owner's ``audit_log_purge_anchored`` (an app role holds no DELETE on the log)."""
    if conn.dialect.name == "postgresql":
        return int(
            conn.execute(
                sa.text("SELECT audit_log_purge_anchored(:chain)"), {"chain": chain}
            ).scalar_one()
        )
    through = sa.select(audit_anchors.c.through_seq).where(audit_anchors.c.chain == chain)
    stmt = sa.delete(audit_log).where(
        audit_log.c.chain == chain, audit_log.c.chain_seq <= through.scalar_subquery()
    )
    return int(conn.execute(stmt).rowcount)


def _canonical_json(value: Mapping[str, Any]) -> bytes:
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")
