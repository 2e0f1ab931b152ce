"""`build_kms`: the key manager the settings ask for.

It lives apart from both backends so that neither imports the other: `app.crypto.hsm` builds on
`app.crypto.kms`, and only this module knows them both.

Where the key manager keeps its state document is the caller's choice: the composition root
(`app.runtime`) passes the database's store on PostgreSQL, so replicas share the keys; anyone
else (the tests, a benchmark) gets the file under `home/keys`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from app.crypto.errors import KeyringError
from app.crypto.keyring_store import KeyringStore, StrPath
from app.crypto.kms import KeyManager, LocalKeyring
from app.crypto.rootkey import load_root_key

if TYPE_CHECKING:
    from app.settings import Settings


def build_kms(settings: Settings, store: KeyringStore | None = None) -> KeyManager:
    """The configured key manager over ``store`` (default: the file under `home/keys`);
    validates configuration now, not on first use."""
    state: StrPath | KeyringStore = store if store is not None else settings.home / "keys"
    production = str(settings.mode) == "production"
    if settings.kms_backend == "pkcs11":
        # python-pkcs11 is loaded only by deployments that use an HSM.
        from app.crypto.hsm import Pkcs11KeyManager

        if settings.pkcs11_module is None or settings.pkcs11_token_label is None:
            raise KeyringError("the pkcs11 backend needs WAJAH_PKCS11_MODULE and _TOKEN_LABEL")
        if settings.pkcs11_pin is None:
            raise KeyringError("the pkcs11 backend needs WAJAH_PKCS11_PIN")
        return Pkcs11KeyManager(
            state,
            module=settings.pkcs11_module,
            token_label=settings.pkcs11_token_label,
            pin=settings.pkcs11_pin.get_secret_value(),
            max_wraps_per_version=settings.max_wraps_per_kek_version,
        )
    root = load_root_key(
        production=production,
        root_key=settings.root_key.get_secret_value() if settings.root_key else None,
        root_key_file=settings.root_key_file,
        home=settings.home,
    )
    return LocalKeyring(state, root, max_wraps_per_version=settings.max_wraps_per_kek_version)
