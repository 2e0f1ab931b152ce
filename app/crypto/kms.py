"""Key managers: per-org, versioned key-encryption keys (KEKs) that wrap data keys (DEKs).

One interface (`KeyManager`), two backends: `LocalKeyring` (KEKs wrapped under a root key, in
its state document) and `Pkcs11KeyManager` (KEKs inside an HSM token, in `app.crypto.hsm`, which
builds on this module; `app.crypto.factory.build_kms` picks one from the settings). Both keep
their bookkeeping — versions, primary, minimum decryption version, wrap counters — in the same
JSON state document, behind a `KeyringStore` (`app.crypto.keyring_store`): by default the file
`<state_dir>/keyring.json`, rewritten atomically under an exclusive `flock`, so the CLI
(`wajah keys rotate`) can run beside the service; on PostgreSQL a row of the database, so
replicas that share only the database share the keys. Every change re-reads the document under
the store's lock (another process may have rotated or reserved since); an org or KEK version
this process does not know yet is looked up in the store again before it is refused.

Wrap counting: AES-GCM with random 96-bit nonces must stay well below 2**32 messages per key.
Each process reserves blocks of `WRAP_RESERVATION_BLOCK` wraps in the state document before
using them, so the persisted count is always an upper bound (a crash loses at most one unused block,
which errs on the safe side), while `wrap_count` is exact within a process. When the primary
version reaches `max_wraps_per_version`, the next wrap rotates to a new version first.
"""

from __future__ import annotations

import base64
import logging
import os
import secrets
import struct
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from app.crypto.errors import (
    DecryptionError,
    KeyringError,
    KeyStateError,
    OrgKeyNotFoundError,
    RootKeyError,
)
from app.crypto.keyring_store import FileKeyringStore, KeyringStore, StrPath
from app.crypto.rootkey import RootKey
from app.crypto.wire import (
    DEK_SIZE,
    NONCE_SIZE,
    WrappedDek,
    dek_aad,
    lp,
    parse_wrapped_dek,
)

log = logging.getLogger(__name__)

STATE_FORMAT = "wajah-keyring/1"
DEFAULT_MAX_WRAPS = 2**30
WRAP_RESERVATION_BLOCK = 4096
_U32 = struct.Struct(">I")

Record = dict[str, Any]


class KekState(StrEnum):
    PRIMARY = "primary"  # wraps new DEKs and unwraps
    ENABLED = "enabled"  # unwraps only
    RETIRED = "retired"  # unwraps only, on its way to destruction (`retire_version`)
    DISABLED = "disabled"  # below the minimum decryption version: refuses to unwrap
    DESTROYED = "destroyed"  # key material gone; everything under it is crypto-shredded


@dataclass(frozen=True)
class KekVersionInfo:
    version: int
    state: KekState
    created_at: str
    wrap_count: int


@runtime_checkable
class KeyManager(Protocol):
    """What `EnvelopeCipher`, `ReferenceHasher` and the key CLI need from a KMS. DEKs pass
    through `wrap_dek`/`unwrap_dek` only inside `app.crypto`; KEKs never leave the backend."""

    backend: str

    def create_org(self, org_id: str) -> int: ...
    def has_org(self, org_id: str) -> bool: ...
    def rotate(self, org_id: str) -> int: ...
    def primary_version(self, org_id: str) -> int: ...
    def versions(self, org_id: str) -> list[KekVersionInfo]: ...
    def set_min_decryption_version(self, org_id: str, version: int) -> None: ...
    def retire_version(self, org_id: str, version: int) -> None: ...
    def destroy_version(self, org_id: str, version: int) -> None: ...
    def destroy_org(self, org_id: str) -> None: ...
    def wrap_count(self, org_id: str, version: int) -> int: ...
    def wrap_dek(self, org_id: str, dek: bytes, context: bytes) -> bytes: ...
    def unwrap_dek(self, org_id: str, wrapped: bytes, context: bytes) -> bytes: ...
    def rewrap_dek(self, org_id: str, wrapped: bytes, context: bytes) -> bytes: ...
    def mac(self, org_id: str, message: bytes, version: int | None = None) -> bytes: ...
    def reference_version(self, org_id: str) -> int: ...
    def reference_versions(self, org_id: str) -> list[KekVersionInfo]: ...
    def rotate_reference_key(self, org_id: str) -> int: ...
    def destroy_reference_version(self, org_id: str, version: int) -> None: ...
    def audit_mac(self, message: bytes) -> bytes: ...
    def refresh(self) -> None: ...
    def close(self) -> None: ...


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _refuse(reason: str, org_id: str, version: int | None = None) -> DecryptionError:
    # the reason is for operators; the caller only ever sees the opaque error
    log.warning("refused to unwrap a DEK: %s (org=%r, kek_version=%s)", reason, org_id, version)
    return DecryptionError()


class StatefulKeyManager(ABC):
    """Versioning, counters and persistence shared by the backends; subclasses provide the
    key operations."""

    backend: str = "abstract"

    def __init__(
        self, state: StrPath | KeyringStore, *, max_wraps_per_version: int = DEFAULT_MAX_WRAPS
    ) -> None:
        """``state``: where the state document lives, a `KeyringStore` or a directory (the
        file store in it)."""
        if max_wraps_per_version < 1 or max_wraps_per_version > 2**32:
            raise KeyringError("max_wraps_per_version must be in 1..2**32")
        self._store: KeyringStore = (
            FileKeyringStore(state) if isinstance(state, str | os.PathLike) else state
        )
        self._max_wraps = max_wraps_per_version
        self._lock = threading.RLock()
        self._windows: dict[tuple[str, int], list[int]] = {}
        self._state: Record = {}

    def _open_state(self) -> None:
        """Load or create the state document; called by subclasses once their keys are usable."""
        with self._lock:
            state = self._store.load()
            if state is None:
                # Under the store's lock: another process may create it first, and then
                # `_fresh_state` is not called.
                with self._store.mutate(self._fresh_state) as state:
                    pass
            self._state = self._checked_format(state)
        if self._state.get("backend") != self.backend:
            raise KeyringError(
                f"{self._store.location} belongs to the {self._state.get('backend')!r} backend, "
                f"not {self.backend!r}"
            )
        self._check_state(self._state)

    def _fresh_state(self) -> Record:
        state: Record = {
            "format": STATE_FORMAT,
            "backend": self.backend,
            "keyring_id": secrets.token_hex(8),
            "orgs": {},
        }
        self._init_state(state)
        return state

    # ----- hooks -------------------------------------------------------------------------
    def _init_state(self, state: Record) -> None:  # noqa: B027 - optional hook
        """Add backend fields to a fresh state (e.g. a root-key check value)."""

    def _check_state(self, state: Record) -> None:  # noqa: B027 - optional hook
        """Validate a loaded state against the backend (e.g. the right root key)."""

    @abstractmethod
    def _new_kek(self, org_id: str, version: int) -> Record: ...
    @abstractmethod
    def _kek_encrypt(
        self, org_id: str, version: int, record: Record, nonce: bytes, data: bytes, aad: bytes
    ) -> bytes: ...
    @abstractmethod
    def _kek_decrypt(
        self, org_id: str, version: int, record: Record, nonce: bytes, data: bytes, aad: bytes
    ) -> bytes:
        """Raise DecryptionError (or any backend error) when the tag does not verify."""

    @abstractmethod
    def _destroy_kek(self, org_id: str, version: int, record: Record) -> None: ...
    @abstractmethod
    def _new_reference_key(self, org_id: str, version: int) -> Record: ...
    @abstractmethod
    def _reference_mac(
        self, org_id: str, version: int, record: Record, message: bytes
    ) -> bytes: ...
    @abstractmethod
    def _destroy_reference_key(self, org_id: str, version: int, record: Record) -> None: ...
    @abstractmethod
    def _audit_mac(self, message: bytes) -> bytes: ...

    # ----- persistence -------------------------------------------------------------------
    def _checked_format(self, state: Record) -> Record:
        if state.get("format") != STATE_FORMAT:
            raise KeyringError(f"{self._store.location} is not a {STATE_FORMAT} document")
        return state

    def _missing_state(self) -> Record:
        raise KeyringError(f"keyring state {self._store.location} has disappeared")

    @contextmanager
    def _mutate(self) -> Iterator[Record]:
        """Read-modify-write of the state document under the store's lock: another process
        may have rotated or reserved since we last looked."""
        with self._lock:
            with self._store.mutate(self._missing_state) as state:
                yield self._checked_format(state)
            self._state = state

    def _reload(self) -> None:
        with self._lock:
            state = self._store.load()
            self._state = self._checked_format(
                state if state is not None else self._missing_state()
            )

    def refresh(self) -> None:
        """Re-read the state: another replica (or the CLI) may have rotated, disabled or
        destroyed keys. Reservation windows of versions no longer primary are dropped, so new
        DEKs go under the new primary at once; destroyed versions refuse to unwrap from now on
        (every unwrap checks the state)."""
        with self._lock:
            self._reload()
            orgs = self._state["orgs"]
            self._windows = {
                (org_id, version): window
                for (org_id, version), window in self._windows.items()
                if org_id in orgs and orgs[org_id].get("primary") == version
            }

    @property
    def keyring_id(self) -> str:
        return str(self._state["keyring_id"])

    # ----- org lookups -------------------------------------------------------------------
    @staticmethod
    def _live_org(state: Record, org_id: str) -> Record:
        org = state["orgs"].get(org_id)
        if org is None or org.get("destroyed_at"):
            raise OrgKeyNotFoundError(f"org {org_id!r} has no key-encryption key")
        result: Record = org
        return result

    def _known_org(self, org_id: str) -> Record:
        """The org from our view of the state, re-read once if it is missing: another process
        (`wajah orgs create` beside a running server) may have added it since we loaded."""
        if org_id not in self._state["orgs"]:
            self._reload()
        return self._live_org(self._state, org_id)

    def has_org(self, org_id: str) -> bool:
        if org_id not in self._state["orgs"]:
            self._reload()
        org = self._state["orgs"].get(org_id)
        return org is not None and not org.get("destroyed_at")

    # ----- lifecycle ---------------------------------------------------------------------
    def create_org(self, org_id: str) -> int:
        """Create version 1 of the org's KEK and its reference key. Refuses an existing or
        destroyed org id (a destroyed org stays a tombstone)."""
        lp(org_id, "org_id")
        with self._mutate() as state:
            if org_id in state["orgs"]:
                raise KeyStateError(f"org {org_id!r} already has keys (or had them destroyed)")
            state["orgs"][org_id] = {
                "created_at": _now(),
                "primary": 1,
                "min_decrypt": 1,
                "reference_key": self._new_reference_key(org_id, 1),
                "versions": {"1": self._new_version(org_id, 1)},
            }
        log.info("created KEK v1 for org %r (%s)", org_id, self.backend)
        return 1

    def _new_version(self, org_id: str, version: int) -> Record:
        return {
            "created_at": _now(),
            "wraps_reserved": 0,
            "key": self._new_kek(org_id, version),
        }

    def _rotate_in(self, state: Record, org_id: str) -> int:
        org = self._live_org(state, org_id)
        version = max(int(v) for v in org["versions"]) + 1
        if version > 2**32 - 1:
            raise KeyStateError("KEK version space exhausted")
        org["versions"][str(version)] = self._new_version(org_id, version)
        org["primary"] = version
        log.info("rotated org %r to KEK v%d (%s)", org_id, version, self.backend)
        return version

    def rotate(self, org_id: str) -> int:
        """Make a new KEK version primary; older versions keep unwrapping."""
        with self._mutate() as state:
            return self._rotate_in(state, org_id)

    def primary_version(self, org_id: str) -> int:
        return int(self._known_org(org_id)["primary"])

    def versions(self, org_id: str) -> list[KekVersionInfo]:
        org = self._known_org(org_id)
        out = []
        for key in sorted(org["versions"], key=int):
            v = int(key)
            rec = org["versions"][key]
            if rec.get("destroyed_at"):
                st = KekState.DESTROYED
            elif v == org["primary"]:
                st = KekState.PRIMARY
            elif v < org["min_decrypt"]:
                st = KekState.DISABLED
            elif rec.get("retired_at"):
                st = KekState.RETIRED
            else:
                st = KekState.ENABLED
            out.append(KekVersionInfo(v, st, rec["created_at"], self.wrap_count(org_id, v)))
        return out

    def set_min_decryption_version(self, org_id: str, version: int) -> None:
        """Versions below `version` stop unwrapping (reversible, unlike destroy). Rewrap first."""
        with self._mutate() as state:
            org = self._live_org(state, org_id)
            if not 1 <= version <= org["primary"]:
                raise KeyStateError("minimum decryption version must be in 1..primary")
            org["min_decrypt"] = version
        log.info("org %r: minimum decryption version is now %d", org_id, version)

    def retire_version(self, org_id: str, version: int) -> None:
        """Mark a version as on its way out: it keeps unwrapping (what it wrapped is rewrapped
        meanwhile) and never wraps again (only the primary wraps, and a version, once
        replaced, never becomes primary again). Refuses the primary and destroyed versions."""
        with self._mutate() as state:
            org = self._live_org(state, org_id)
            rec = org["versions"].get(str(version))
            if rec is None:
                raise KeyStateError(f"org {org_id!r} has no KEK v{version}")
            if rec.get("destroyed_at"):
                raise KeyStateError(f"KEK v{version} of org {org_id!r} is destroyed already")
            if version == org["primary"]:
                raise KeyStateError(
                    f"KEK v{version} is the primary version of org {org_id!r}; rotate first"
                )
            rec.setdefault("retired_at", _now())
        log.info("retired KEK v%d of org %r", version, org_id)

    def destroy_version(self, org_id: str, version: int) -> None:
        """Crypto-shred one KEK version: every DEK it wrapped becomes unrecoverable."""
        with self._mutate() as state:
            org = self._live_org(state, org_id)
            rec = org["versions"].get(str(version))
            if rec is None:
                raise KeyStateError(f"org {org_id!r} has no KEK v{version}")
            if version == org["primary"]:
                raise KeyStateError("cannot destroy the primary version; rotate first")
            if not rec.get("destroyed_at"):
                self._destroy_kek(org_id, version, rec["key"])
                rec["key"] = None
                rec["destroyed_at"] = _now()
        log.warning("destroyed KEK v%d of org %r (crypto-shredded)", version, org_id)

    def destroy_org(self, org_id: str) -> None:
        """Crypto-shred an org: all its KEK versions and its reference key."""
        with self._mutate() as state:
            org = self._live_org(state, org_id)
            for key, rec in org["versions"].items():
                if not rec.get("destroyed_at"):
                    self._destroy_kek(org_id, int(key), rec["key"])
                    rec["key"] = None
                    rec["destroyed_at"] = _now()
            for version, rec in self._reference_records(org).items():
                self._destroy_reference_key(org_id, version, rec)
            org["reference_key"] = None
            for rec in org.get("reference_versions", {}).values():
                rec["key"], rec["destroyed_at"] = None, rec.get("destroyed_at") or _now()
            org["destroyed_at"] = _now()
        self._windows = {k: w for k, w in self._windows.items() if k[0] != org_id}
        log.warning("destroyed all keys of org %r (crypto-shredded)", org_id)

    # ----- wrapping ----------------------------------------------------------------------
    def wrap_count(self, org_id: str, version: int) -> int:
        """Wraps done under a version: exact for this process, an upper bound across
        restarts and processes (reserved blocks count as used)."""
        window = self._windows.get((org_id, version))
        if window is not None:
            return window[0]
        org = self._known_org(org_id)
        rec = org["versions"].get(str(version))
        return int(rec["wraps_reserved"]) if rec else 0

    def _take_wrap_slot(self, org_id: str) -> tuple[int, Record]:
        with self._lock:
            while True:
                org = self._known_org(org_id)
                version = int(org["primary"])
                window = self._windows.get((org_id, version))
                if window is not None and window[0] < window[1]:
                    window[0] += 1
                    return version, org["versions"][str(version)]["key"]
                with self._mutate() as state:
                    org = self._live_org(state, org_id)
                    version = int(org["primary"])
                    rec = org["versions"][str(version)]
                    if rec["wraps_reserved"] >= self._max_wraps:
                        log.warning(
                            "org %r KEK v%d reached %d wraps; rotating before the AES-GCM "
                            "nonce limit",
                            org_id,
                            version,
                            self._max_wraps,
                        )
                        version = self._rotate_in(state, org_id)
                        rec = org["versions"][str(version)]
                    start = int(rec["wraps_reserved"])
                    end = min(start + WRAP_RESERVATION_BLOCK, self._max_wraps)
                    rec["wraps_reserved"] = end
                    self._windows[(org_id, version)] = [start, end]

    def wrap_dek(self, org_id: str, dek: bytes, context: bytes) -> bytes:
        """Wrap a 32-byte DEK under the primary KEK; returns the 65-byte wrapped-DEK format."""
        if len(dek) != DEK_SIZE:
            raise ValueError("a DEK is 32 bytes")
        version, record = self._take_wrap_slot(org_id)
        nonce = os.urandom(NONCE_SIZE)
        aad = dek_aad(org_id, version, context)
        ciphertext = self._kek_encrypt(org_id, version, record, nonce, dek, aad)
        return WrappedDek(version, nonce, ciphertext).to_bytes()

    def _usable_record(self, org_id: str, version: int) -> Record:
        org = self._state["orgs"].get(org_id)
        if org is None or str(version) not in org["versions"]:
            # another process (a replica, the CLI) may have created the org or rotated since
            # we loaded the state
            self._reload()
            org = self._state["orgs"].get(org_id)
        if org is None or org.get("destroyed_at"):
            raise _refuse("unknown or destroyed org", org_id, version)
        rec = org["versions"].get(str(version))
        if rec is None:
            raise _refuse("unknown KEK version", org_id, version)
        if rec.get("destroyed_at") or rec.get("key") is None:
            raise _refuse("KEK version destroyed", org_id, version)
        if version < org["min_decrypt"]:
            raise _refuse(
                "KEK version disabled (below minimum decryption version)", org_id, version
            )
        key: Record = rec["key"]
        return key

    def unwrap_dek(self, org_id: str, wrapped: bytes, context: bytes) -> bytes:
        parsed = parse_wrapped_dek(wrapped)
        record = self._usable_record(org_id, parsed.kek_version)
        aad = dek_aad(org_id, parsed.kek_version, context)
        try:
            dek = self._kek_decrypt(
                org_id, parsed.kek_version, record, parsed.nonce, parsed.ciphertext, aad
            )
        except DecryptionError:
            raise _refuse("tag check failed", org_id, parsed.kek_version) from None
        except Exception as exc:  # backend errors (e.g. PKCS#11 GeneralError) are opaque too
            log.warning("KEK decrypt raised %s", type(exc).__name__)
            raise _refuse("backend refused", org_id, parsed.kek_version) from None
        if len(dek) != DEK_SIZE:
            raise _refuse("unwrapped DEK has the wrong size", org_id, parsed.kek_version)
        return dek

    def rewrap_dek(self, org_id: str, wrapped: bytes, context: bytes) -> bytes:
        """Unwrap under its version and wrap under the primary; unchanged if already primary.
        The DEK exists in plaintext only in this process's memory."""
        parsed = parse_wrapped_dek(wrapped)
        if parsed.kek_version == self.primary_version(org_id):
            return bytes(wrapped)
        return self.wrap_dek(org_id, self.unwrap_dek(org_id, wrapped, context), context)

    # ----- reference keys ----------------------------------------------------------------
    # Version 1 is the org's first reference key, kept under "reference_key" as before
    # versions existed; later ones under "reference_versions", the primary in
    # "reference_primary" (absent: 1). A destroyed version keeps its entry, without a key.
    @staticmethod
    def _reference_records(org: Record) -> dict[int, Record]:
        """The live (undestroyed) reference keys of an org, by version."""
        live: dict[int, Record] = {}
        if org.get("reference_key"):
            live[1] = org["reference_key"]
        for key, rec in org.get("reference_versions", {}).items():
            if rec.get("key"):
                live[int(key)] = rec["key"]
        return live

    def reference_version(self, org_id: str) -> int:
        """The reference-key version new hashed references are made under."""
        return int(self._known_org(org_id).get("reference_primary", 1))

    def reference_versions(self, org_id: str) -> list[KekVersionInfo]:
        org = self._known_org(org_id)
        primary = int(org.get("reference_primary", 1))
        live = self._reference_records(org)
        created = {1: org["created_at"]}
        created.update(
            {int(k): r["created_at"] for k, r in org.get("reference_versions", {}).items()}
        )
        return [
            KekVersionInfo(
                v,
                KekState.DESTROYED
                if v not in live
                else KekState.PRIMARY
                if v == primary
                else KekState.ENABLED,
                created[v],
                0,
            )
            for v in sorted(created)
        ]

    def rotate_reference_key(self, org_id: str) -> int:
        """A new primary reference-key version; older ones keep verifying until destroyed."""
        with self._mutate() as state:
            org = self._live_org(state, org_id)
            versions = org.setdefault("reference_versions", {})
            version = max([1, *(int(k) for k in versions)]) + 1
            versions[str(version)] = {
                "created_at": _now(),
                "key": self._new_reference_key(org_id, version),
            }
            org["reference_primary"] = version
        log.info("rotated org %r to reference key v%d (%s)", org_id, version, self.backend)
        return version

    def destroy_reference_version(self, org_id: str, version: int) -> None:
        """Destroy one reference-key version: references made under it verify no more."""
        with self._mutate() as state:
            org = self._live_org(state, org_id)
            if version == int(org.get("reference_primary", 1)):
                raise KeyStateError("cannot destroy the primary reference key; rotate first")
            live = self._reference_records(org)
            if version not in live:
                raise KeyStateError(f"org {org_id!r} has no live reference key v{version}")
            self._destroy_reference_key(org_id, version, live[version])
            if version == 1:
                org["reference_key"] = None
                org["reference_key_destroyed_at"] = _now()
            else:
                rec = org["reference_versions"][str(version)]
                rec["key"], rec["destroyed_at"] = None, _now()
        log.warning("destroyed reference key v%d of org %r", version, org_id)

    def mac(self, org_id: str, message: bytes, version: int | None = None) -> bytes:
        """HMAC-SHA-256 of `message` under the org's reference key (32 bytes): the primary
        version, or `version` (`KeyStateError` when it does not exist or is destroyed)."""
        org = self._known_org(org_id)
        wanted = int(org.get("reference_primary", 1)) if version is None else version
        record = self._reference_records(org).get(wanted)
        if record is None:
            self._reload()  # another process may have rotated since we loaded
            record = self._reference_records(self._live_org(self._state, org_id)).get(wanted)
        if record is None:
            raise KeyStateError(f"org {org_id!r} has no live reference key v{wanted}")
        return self._reference_mac(org_id, wanted, record, message)

    def audit_mac(self, message: bytes) -> bytes:
        """HMAC-SHA-256 of `message` under the keyring's audit key (32 bytes).

        One audit key per keyring, not per org: the audit log outlives an org's keys (kept 7
        years), so crypto-shredding an org must not make its history unverifiable. Neither
        backend keeps the key where the database can reach it (the local keyring derives it
        from the root key, the PKCS#11 backend holds it in the token), so write access to the
        database, `keyring_state` included, is not enough to recompute an audit chain."""
        return self._audit_mac(message)

    def close(self) -> None:  # noqa: B027 - only some backends hold resources
        """Release backend resources (the token session)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(store={self._store!r})"


# ----- local keyring ---------------------------------------------------------------------
_KEK_AAD = b"wajah/kek/v1\x00"
_REFKEY_AAD = b"wajah/refkey/v1\x00"
_ROOT_CHECK_AAD = b"wajah/root-check/v1\x00"
_AUDIT_KEY_INFO = b"wajah/audit-key/v1"


class LocalKeyring(StatefulKeyManager):
    """KEKs and reference keys live in the state document, each AES-256-GCM-wrapped under the
    root key with associated data (keyring id, org id, version), so a wrapped KEK cannot be
    moved between orgs, versions or keyrings. Unwrapped keys are cached in memory only."""

    backend = "local"

    def __init__(
        self,
        state: StrPath | KeyringStore,
        root_key: RootKey,
        *,
        max_wraps_per_version: int = DEFAULT_MAX_WRAPS,
    ) -> None:
        super().__init__(state, max_wraps_per_version=max_wraps_per_version)
        self._root = AESGCM(root_key._material)
        self._root_material = root_key._material
        self._keks: dict[tuple[str, int], AESGCM] = {}
        self._ref_keys: dict[tuple[str, int], bytes] = {}
        # Derived from the root key alone, not stored: every replica with the root key has
        # it, nothing in the state document can replace it, and the audit log stays
        # verifiable with the root key even if the state document is lost.
        self._audit_key = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=_AUDIT_KEY_INFO
        ).derive(root_key._material)
        self._open_state()

    def _seal_root(self, data: bytes, aad: bytes) -> str:
        nonce = os.urandom(NONCE_SIZE)
        return base64.b64encode(nonce + self._root.encrypt(nonce, data, aad)).decode("ascii")

    def _open_root(self, blob: str, aad: bytes) -> bytes:
        raw = base64.b64decode(blob)
        try:
            return self._root.decrypt(raw[:NONCE_SIZE], raw[NONCE_SIZE:], aad)
        except InvalidTag:
            raise KeyringError("a stored key does not open under the root key") from None

    def rotate_root(self, new_root: RootKey) -> int:
        """Rewrap every KEK and reference key of the state document under `new_root`, in one
        change of the document; returns the keys rewrapped. From then on this keyring opens
        with `new_root` only, and a copy of the document taken before opens only with the
        old root key: once that is destroyed, such copies (in old backups) open nothing.

        Every other process using this keyring must be stopped first and started again with
        the new root key (they hold the old one, which no longer opens the document)."""
        if new_root._material == self._root_material:
            raise KeyStateError("the new root key is the current one")
        new_aead = AESGCM(new_root._material)

        def reseal(blob: str, aad: bytes) -> str:
            plain = self._open_root(blob, aad)
            nonce = os.urandom(NONCE_SIZE)
            return base64.b64encode(nonce + new_aead.encrypt(nonce, plain, aad)).decode("ascii")

        count = 0
        with self._mutate() as state:
            check_aad = _ROOT_CHECK_AAD + state["keyring_id"].encode()
            state["root_key_check"] = reseal(state["root_key_check"], check_aad)
            for org_id, org in state["orgs"].items():
                for ref_version, ref in self._reference_records(org).items():
                    aad = self._refkey_aad(org_id, ref_version)
                    ref["wrapped"] = reseal(ref["wrapped"], aad)
                    count += 1
                for version, rec in org["versions"].items():
                    if rec.get("key"):
                        aad = self._kek_aad(_KEK_AAD, org_id, int(version))
                        rec["key"]["wrapped"] = reseal(rec["key"]["wrapped"], aad)
                        count += 1
        # Only once the document is written: until then it is still the old root's.
        self._root = new_aead
        self._root_material = new_root._material
        log.warning("rewrapped %d keys under a new root key (%s)", count, new_root.source)
        return count

    def _init_state(self, state: Record) -> None:
        state["root_key_check"] = self._seal_root(
            b"", _ROOT_CHECK_AAD + state["keyring_id"].encode()
        )

    def _check_state(self, state: Record) -> None:
        try:
            self._open_root(state["root_key_check"], _ROOT_CHECK_AAD + state["keyring_id"].encode())
        except KeyringError:
            raise RootKeyError(
                f"the root key does not match the keyring in {self._store.location}"
            ) from None

    def _kek_aad(self, prefix: bytes, org_id: str, version: int) -> bytes:
        return (
            prefix + self.keyring_id.encode() + b"\x00" + lp(org_id, "org_id") + _U32.pack(version)
        )

    def _new_kek(self, org_id: str, version: int) -> Record:
        kek = AESGCM.generate_key(bit_length=256)
        self._keks[(org_id, version)] = AESGCM(kek)
        return {"wrapped": self._seal_root(kek, self._kek_aad(_KEK_AAD, org_id, version))}

    def _kek(self, org_id: str, version: int, record: Record) -> AESGCM:
        aead = self._keks.get((org_id, version))
        if aead is None:
            raw = self._open_root(record["wrapped"], self._kek_aad(_KEK_AAD, org_id, version))
            aead = self._keks[(org_id, version)] = AESGCM(raw)
        return aead

    def _kek_encrypt(
        self, org_id: str, version: int, record: Record, nonce: bytes, data: bytes, aad: bytes
    ) -> bytes:
        return self._kek(org_id, version, record).encrypt(nonce, data, aad)

    def _kek_decrypt(
        self, org_id: str, version: int, record: Record, nonce: bytes, data: bytes, aad: bytes
    ) -> bytes:
        try:
            return self._kek(org_id, version, record).decrypt(nonce, data, aad)
        except InvalidTag:
            raise DecryptionError() from None

    def _destroy_kek(self, org_id: str, version: int, record: Record) -> None:
        self._keks.pop((org_id, version), None)

    def _refkey_aad(self, org_id: str, version: int) -> bytes:
        # Version 1 was sealed as "version 0" before reference keys had versions.
        return self._kek_aad(_REFKEY_AAD, org_id, 0 if version == 1 else version)

    def _new_reference_key(self, org_id: str, version: int) -> Record:
        key = secrets.token_bytes(32)
        self._ref_keys[(org_id, version)] = key
        return {"wrapped": self._seal_root(key, self._refkey_aad(org_id, version))}

    def _reference_mac(self, org_id: str, version: int, record: Record, message: bytes) -> bytes:
        key = self._ref_keys.get((org_id, version))
        if key is None:
            key = self._ref_keys[(org_id, version)] = self._open_root(
                record["wrapped"], self._refkey_aad(org_id, version)
            )
        h = crypto_hmac.HMAC(key, hashes.SHA256())
        h.update(message)
        return h.finalize()

    def _destroy_reference_key(self, org_id: str, version: int, record: Record) -> None:
        self._ref_keys.pop((org_id, version), None)

    def _audit_mac(self, message: bytes) -> bytes:
        h = crypto_hmac.HMAC(self._audit_key, hashes.SHA256())
        h.update(message)
        return h.finalize()
