"""Verifying the audit log, and signed checkpoints that anchor it outside the database.

The keyed chain (`app.storage.audit`) stops anyone without the audit key from rewriting rows
or cutting the end off a chain unnoticed. What no key can show from inside the database is
that rows are *missing* which the database never shows again: a database rolled back to an
older copy, or a whole chain deleted. A checkpoint, kept where the database's writers cannot
reach it, records every chain's head; verifying against it catches both.

Checkpoint file, format ``wajah-audit-checkpoint/1``: UTF-8 JSON ::

    {"format": "wajah-audit-checkpoint/1",
     "created_at": "YYYY-MM-DDTHH:MM:SS.ffffffZ",
     "public_key": hex, the raw Ed25519 public key (32 bytes),
     "chains": [{"chain": str, "org_id": str | null, "last_seq": int, "rows": int,
                 "last_hash": hex (32 bytes), "last_at": timestamp | null}, ...],
     "signature": hex, Ed25519 (64 bytes)}

``chains`` is sorted by chain and lists every chain of the log. The signature covers
``b"wajah/audit-checkpoint/v1" || 0x00 ||`` the canonical JSON (keys sorted, no whitespace,
ASCII) of the document without ``signature``. The signing key is derived from the
key manager's audit key (`app.crypto.AuditKey`); a checkpoint is accepted only when its
public key is this deployment's and the signature verifies.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import crashsafe
from app.crypto import AuditKey, signature_valid
from app.errors import WajahError
from app.runtime import open_key_manager
from app.settings import Settings
from app.storage import Connection, Engine, audit, create_engine_for, upgrade_database
from app.storage.audit import ChainReport

CHECKPOINT_FORMAT = "wajah-audit-checkpoint/1"
_SIGNED_PREFIX = b"wajah/audit-checkpoint/v1\x00"
# A checkpoint lists one small entry per org: 64 MiB is millions of orgs, and bounds what a
# garbage file can make us read.
MAX_CHECKPOINT_BYTES = 64 * 1024 * 1024


class InvalidCheckpointError(WajahError):
    code = "invalid_checkpoint"


class AuditLogBrokenError(WajahError):
    code = "audit_log_broken"


@dataclass(frozen=True)
class CheckpointChain:
    chain: str
    org_id: str | None
    last_seq: int
    rows: int
    last_hash: bytes
    last_at: str | None


@dataclass(frozen=True)
class Checkpoint:
    created_at: str
    public_key: bytes
    chains: tuple[CheckpointChain, ...]
    signature: bytes

    def to_bytes(self) -> bytes:
        return _canonical({**self._unsigned(), "signature": self.signature.hex()}) + b"\n"

    def signed_message(self) -> bytes:
        return _SIGNED_PREFIX + _canonical(self._unsigned())

    def _unsigned(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "created_at": self.created_at,
            "public_key": self.public_key.hex(),
            "chains": [
                {
                    "chain": c.chain,
                    "org_id": c.org_id,
                    "last_seq": c.last_seq,
                    "rows": c.rows,
                    "last_hash": c.last_hash.hex(),
                    "last_at": c.last_at,
                }
                for c in self.chains
            ],
        }


@dataclass
class AuditReport:
    """What a verification found: every problem, each naming the chain and what is wrong."""

    checked: int = 0  # rows that verified
    legacy: int = 0  # of them, plain SHA-256 rows written before the chain was keyed
    chains: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@contextmanager
def audit_session(settings: Settings) -> Iterator[tuple[Engine, AuditKey]]:
    """The database (migrated) and the audit key, for the operator's audit commands."""
    engine = create_engine_for(settings.resolved_database_url)
    try:
        upgrade_database(engine)
        kms = open_key_manager(settings, engine)
        try:
            yield engine, AuditKey(kms)
        finally:
            kms.close()
    finally:
        engine.dispose()


def verify_log(
    engine: Engine,
    key: AuditKey,
    *,
    chain: str | None = None,
    checkpoint: Checkpoint | None = None,
) -> AuditReport:
    """Verify every chain (or one) under the audit key, check that every org has a chain,
    and, given a checkpoint, that nothing it recorded is missing or different."""
    with audit.snapshot(engine) as conn:
        reports = audit.walk_chains(conn, chain_key=key, chain=chain)
        report = AuditReport(
            checked=sum(r.result.checked for r in reports),
            legacy=sum(r.legacy for r in reports),
            chains=len(reports),
            problems=[_broken(r) for r in reports if not r.result.ok],
        )
        report.problems += [
            f"org {org_id} has no audit chain: its rows and head were deleted"
            for org_id in audit.orgs_without_chain(conn)
            if chain is None or chain == org_id
        ]
        if checkpoint is not None:
            by_chain = {r.chain: r for r in reports}
            report.problems += _against_checkpoint(conn, checkpoint, by_chain, chain)
    return report


def _broken(report: ChainReport) -> str:
    result = report.result
    where = f"row seq {result.first_broken_seq}"
    if result.first_broken_id is not None:
        where += f" (id {result.first_broken_id})"
    return f"audit chain {report.chain} broken at {where}: {result.reason}"


def _against_checkpoint(
    conn: Connection,
    checkpoint: Checkpoint,
    reports: Mapping[str, ChainReport],
    only: str | None,
) -> list[str]:
    when = f"the checkpoint of {checkpoint.created_at}"
    problems: list[str] = []
    known = set()
    for entry in checkpoint.chains:
        if only is not None and entry.chain != only:
            continue
        known.add(entry.chain)
        found = reports.get(entry.chain)
        if found is not None and entry.last_seq <= found.anchored_seq:
            # Purged by retention behind a verified anchor: only its own row can be compared.
            if entry.last_seq == found.anchored_seq and entry.last_hash != found.anchored_hash:
                problems.append(
                    f"audit chain {entry.chain}: its retention anchor (seq {entry.last_seq}) "
                    f"is not the row {when} recorded: rows up to it were rewritten"
                )
            continue
        if found is None or found.rows == 0:
            problems.append(
                f"audit chain {entry.chain} is missing: {when} has {entry.rows} rows up to "
                f"seq {entry.last_seq} (the chain was deleted)"
            )
            continue
        stored = audit.row_hash_at(conn, entry.chain, entry.last_seq)
        if stored is None:
            problems.append(
                f"audit chain {entry.chain} has {found.rows} rows but {when} reaches seq "
                f"{entry.last_seq}: rows after seq {found.rows} are missing (cut from the "
                "end, or the database was rolled back to an older copy)"
            )
        elif stored != entry.last_hash:
            problems.append(
                f"audit chain {entry.chain}: row seq {entry.last_seq} is not the row {when} "
                "recorded: rows up to it were rewritten"
            )
        if found.legacy > entry.last_seq:
            problems.append(
                f"audit chain {entry.chain}: unkeyed rows up to seq {found.legacy}, after "
                f"{when} (seq {entry.last_seq}): rows were rewritten without the audit key"
            )
    for name, found in reports.items():
        if name not in known and found.legacy:
            problems.append(
                f"audit chain {name} is not in {when} yet has unkeyed rows: rows were "
                "rewritten without the audit key"
            )
    return problems


def make_checkpoint(engine: Engine, key: AuditKey, *, now: datetime | None = None) -> Checkpoint:
    """Sign the head of every chain. Refuses a log that does not verify: a checkpoint
    vouches for what it records."""
    with audit.snapshot(engine) as conn:
        reports = audit.walk_chains(conn, chain_key=key)
        orphans = audit.orgs_without_chain(conn)
    problems = [_broken(r) for r in reports if not r.result.ok]
    problems += [f"org {org_id} has no audit chain" for org_id in orphans]
    if problems:
        raise AuditLogBrokenError(
            "the audit log does not verify; no checkpoint written: " + "; ".join(problems)
        )
    unsigned = Checkpoint(
        created_at=audit.format_timestamp(now or datetime.now(UTC)),
        public_key=key.public_key(),
        chains=tuple(
            CheckpointChain(
                chain=r.chain,
                org_id=r.org_id,
                last_seq=r.last_seq,
                rows=r.rows,
                last_hash=r.last_hash,
                last_at=r.last_at,
            )
            for r in reports
            if r.rows
        ),
        signature=b"",
    )
    return replace(unsigned, signature=key.sign(unsigned.signed_message()))


def write_checkpoint(path: Path, checkpoint: Checkpoint) -> None:
    """Write atomically (a reader never sees half a checkpoint)."""
    crashsafe.write_bytes(path, checkpoint.to_bytes(), mode=0o644)


def read_checkpoint(path: Path, key: AuditKey) -> Checkpoint:
    """Read, parse and authenticate a checkpoint file; `InvalidCheckpointError` names what
    is wrong with it."""
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_CHECKPOINT_BYTES + 1)
    except OSError as exc:
        raise InvalidCheckpointError(f"cannot read checkpoint {path}: {exc.strerror}") from None
    if len(data) > MAX_CHECKPOINT_BYTES:
        raise InvalidCheckpointError(f"{path} is larger than any audit checkpoint")
    return parse_checkpoint(data, key, source=str(path))


def parse_checkpoint(data: bytes, key: AuditKey, *, source: str = "checkpoint") -> Checkpoint:
    checkpoint = _parse(data, source)
    ours = key.public_key()
    if checkpoint.public_key != ours:
        raise InvalidCheckpointError(
            f"{source} is signed by public key {checkpoint.public_key.hex()}, not by this "
            f"deployment's audit key ({ours.hex()}): forged, or from another deployment"
        )
    if not signature_valid(ours, checkpoint.signed_message(), checkpoint.signature):
        raise InvalidCheckpointError(
            f"{source}: the signature does not verify: the checkpoint was altered"
        )
    return checkpoint


def _parse(data: bytes, source: str) -> Checkpoint:
    def bad(why: str) -> InvalidCheckpointError:
        return InvalidCheckpointError(f"{source} is not a valid wajah audit checkpoint: {why}")

    try:
        document = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise bad("not UTF-8 JSON") from None
    if not isinstance(document, dict) or document.get("format") != CHECKPOINT_FORMAT:
        raise bad(f'no "format": "{CHECKPOINT_FORMAT}"')
    expected = {"format", "created_at", "public_key", "chains", "signature"}
    if set(document) != expected:
        raise bad(f"fields must be {sorted(expected)}")
    created_at = _text(document["created_at"], "created_at", bad)
    public_key = _hex(document["public_key"], 32, "public_key", bad)
    signature = _hex(document["signature"], 64, "signature", bad)
    if not isinstance(document["chains"], list):
        raise bad("chains is not a list")
    chains = tuple(_chain(entry, bad) for entry in document["chains"])
    names = [c.chain for c in chains]
    if names != sorted(set(names)):
        raise bad("chains are not sorted and unique")
    return Checkpoint(created_at, public_key, chains, signature)


_Bad = Callable[[str], InvalidCheckpointError]
_CHAIN_FIELDS = {"chain", "org_id", "last_seq", "rows", "last_hash", "last_at"}


def _chain(entry: Any, bad: _Bad) -> CheckpointChain:
    if not isinstance(entry, dict) or set(entry) != _CHAIN_FIELDS:
        raise bad(f"a chain entry must have the fields {sorted(_CHAIN_FIELDS)}")
    name = _text(entry["chain"], "chain", bad)
    org_id = entry["org_id"]
    if org_id != (None if name == audit.SYSTEM_CHAIN else name):
        raise bad(f"chain {name!r} has org_id {org_id!r}")
    numbers = []
    for label in ("last_seq", "rows"):
        value = entry[label]
        if type(value) is not int or not 1 <= value < 2**63:
            raise bad(f"{label} of chain {name!r} is not a positive integer")
        numbers.append(value)
    last_at = entry["last_at"]
    if last_at is not None:
        last_at = _text(last_at, "last_at", bad)
    return CheckpointChain(
        chain=name,
        org_id=org_id,
        last_seq=numbers[0],
        rows=numbers[1],
        last_hash=_hex(entry["last_hash"], 32, f"last_hash of chain {name!r}", bad),
        last_at=last_at,
    )


def _text(value: Any, label: str, bad: _Bad) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= 200:
        raise bad(f"{label} is not a short string")
    return value


def _hex(value: Any, size: int, label: str, bad: _Bad) -> bytes:
    try:
        raw = bytes.fromhex(value) if isinstance(value, str) else b""
    except ValueError:
        raw = b""
    if len(raw) != size:
        raise bad(f"{label} is not {size} bytes of hex")
    return raw


def _canonical(value: Mapping[str, Any]) -> bytes:
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")
