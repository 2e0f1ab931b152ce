"""PKCS#11 key manager: per-org KEKs are non-extractable AES-256 keys inside an HSM token.

DEKs are wrapped *in the token* with CKM_AES_GCM and the same associated data as the local
keyring (`GCMParams(nonce, aad)`), so both backends share one wrapped-DEK format. The
reference key of each org, and the keyring's audit key, are non-extractable GENERIC_SECRETs
used with CKM_SHA256_HMAC.
Bookkeeping (versions, counters, key labels) lives in the shared state document (a file, or a
database row that replicas share: `app.crypto.keyring_store`); key material never leaves the
token. Tested against SoftHSM2.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import Any

import pkcs11
from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass
from pkcs11.mechanisms import GCMParams

from app.crypto.errors import DecryptionError, KeyringError
from app.crypto.keyring_store import KeyringStore, StrPath
from app.crypto.kms import DEFAULT_MAX_WRAPS, Record, StatefulKeyManager, _now

_libs: dict[str, Any] = {}
_libs_lock = threading.Lock()


def _load_lib(module: str) -> Any:
    # a PKCS#11 module is initialised once per process; share it between key managers
    with _libs_lock:
        lib = _libs.get(module)
        if lib is None:
            lib = _libs[module] = pkcs11.lib(module)
        return lib


class Pkcs11KeyManager(StatefulKeyManager):
    backend = "pkcs11"

    def __init__(
        self,
        state: StrPath | KeyringStore,
        *,
        module: Path | str,
        token_label: str,
        pin: str,
        max_wraps_per_version: int = DEFAULT_MAX_WRAPS,
    ) -> None:
        super().__init__(state, max_wraps_per_version=max_wraps_per_version)
        if not Path(module).is_file():
            raise KeyringError(f"PKCS#11 module {module} does not exist")
        try:
            lib = _load_lib(str(module))
            token = lib.get_token(token_label=token_label)
            self._session = token.open(rw=True, user_pin=pin)
        except pkcs11.exceptions.PKCS11Error as exc:
            # the PIN is never part of the message
            raise KeyringError(
                f"cannot open PKCS#11 token {token_label!r}: {type(exc).__name__}"
            ) from None
        self._token_label = token_label
        # one session, used from many threads: PKCS#11 sessions are not thread-safe
        self._hsm_lock = threading.Lock()
        self._keys: dict[str, Any] = {}
        self._open_state()

    def _label(self, kind: str, org_id: str, version: int) -> str:
        return f"wajah:{self.keyring_id}:{kind}:{version}:{org_id}"

    @staticmethod
    def _id(label: str) -> bytes:
        return hashlib.sha256(label.encode("utf-8")).digest()[:16]

    def _find(self, label: str) -> Any:
        key = self._keys.get(label)
        if key is None:
            with self._hsm_lock:
                key = self._session.get_key(
                    object_class=ObjectClass.SECRET_KEY, id=self._id(label), label=label
                )
            self._keys[label] = key
        return key

    def _purge(self, label: str) -> None:
        self._keys.pop(label, None)
        with self._hsm_lock:
            for obj in list(self._session.get_objects({Attribute.ID: self._id(label)})):
                obj.destroy()

    def _generate(self, label: str, key_type: KeyType, caps: MechanismFlag) -> None:
        self._purge(label)  # a leftover from a crash between key generation and state write
        with self._hsm_lock:
            key = self._session.generate_key(
                key_type,
                256,
                id=self._id(label),
                label=label,
                store=True,
                capabilities=caps,
                template={
                    Attribute.TOKEN: True,
                    Attribute.PRIVATE: True,
                    Attribute.SENSITIVE: True,
                    Attribute.EXTRACTABLE: False,
                },
            )
        self._keys[label] = key

    def _new_kek(self, org_id: str, version: int) -> Record:
        label = self._label("kek", org_id, version)
        self._generate(label, KeyType.AES, MechanismFlag.ENCRYPT | MechanismFlag.DECRYPT)
        return {"label": label}

    def _kek_encrypt(
        self, org_id: str, version: int, record: Record, nonce: bytes, data: bytes, aad: bytes
    ) -> bytes:
        key = self._find(record["label"])
        with self._hsm_lock:
            out: bytes = key.encrypt(
                data, mechanism=Mechanism.AES_GCM, mechanism_param=GCMParams(nonce, aad, 128)
            )
        return out

    def _kek_decrypt(
        self, org_id: str, version: int, record: Record, nonce: bytes, data: bytes, aad: bytes
    ) -> bytes:
        key = self._find(record["label"])
        try:
            with self._hsm_lock:
                out: bytes = key.decrypt(
                    data, mechanism=Mechanism.AES_GCM, mechanism_param=GCMParams(nonce, aad, 128)
                )
        except pkcs11.exceptions.PKCS11Error:
            # a failed GCM tag check surfaces as a bare GeneralError (or EncryptedDataInvalid)
            raise DecryptionError() from None
        return out

    def _destroy_kek(self, org_id: str, version: int, record: Record) -> None:
        self._purge(record["label"])

    def _new_reference_key(self, org_id: str, version: int) -> Record:
        # Version 1 is labelled 0, as it was before reference keys had versions.
        label = self._label("ref", org_id, 0 if version == 1 else version)
        self._generate(label, KeyType.GENERIC_SECRET, MechanismFlag.SIGN | MechanismFlag.VERIFY)
        return {"label": label}

    def _reference_mac(self, org_id: str, version: int, record: Record, message: bytes) -> bytes:
        key = self._find(record["label"])
        with self._hsm_lock:
            out: bytes = key.sign(message, mechanism=Mechanism.SHA256_HMAC)
        return out

    def _destroy_reference_key(self, org_id: str, version: int, record: Record) -> None:
        self._purge(record["label"])

    def _audit_mac(self, message: bytes) -> bytes:
        key = self._audit_key()
        with self._hsm_lock:
            out: bytes = key.sign(message, mechanism=Mechanism.SHA256_HMAC)
        return out

    def _audit_key(self) -> Any:
        """The keyring's audit key: a non-extractable GENERIC_SECRET in the token, made on
        first use. Its label is fixed by the keyring id, so a state document edited to forget
        it finds the same key again rather than a new one."""
        label = self._label("audit", "_keyring", 1)
        try:
            return self._find(label)
        except pkcs11.exceptions.NoSuchKey:
            pass
        # Under the store's lock: two replicas meeting an empty token make one key, not two.
        with self._mutate() as state:
            try:
                key = self._find(label)
            except pkcs11.exceptions.NoSuchKey:
                self._generate(
                    label, KeyType.GENERIC_SECRET, MechanismFlag.SIGN | MechanismFlag.VERIFY
                )
                key = self._keys[label]
            state.setdefault("audit_key", {"label": label, "created_at": _now()})
        return key

    def close(self) -> None:
        with self._hsm_lock:
            self._keys.clear()
            self._session.close()

    def __repr__(self) -> str:
        return f"Pkcs11KeyManager(token={self._token_label!r}, store={self._store!r})"
