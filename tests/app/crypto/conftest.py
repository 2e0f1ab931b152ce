"""Key-manager fixtures: the same tests run against the local keyring and SoftHSM2, each with
its state document in a file and in the database (SQLite, PostgreSQL).

SoftHSM reads SOFTHSM2_CONF when the module is initialised, so the session fixture points it at
a token directory of its own before anything loads the module.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from app.crypto import FileKeyringStore, KeyManager, KeyringStore, LocalKeyring, RootKey
from app.storage.engine import create_engine_for
from app.storage.keyring import DatabaseKeyringStore
from app.storage.migrate import upgrade_database
from tests.app.storage.conftest import empty_database

SOFTHSM_CANDIDATES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
)
TOKEN_LABEL = "wajah-test"
USER_PIN = "5678"
# a fixed root key keeps tests reproducible; only ever used in tests
TEST_ROOT_KEY = bytes(range(32))


@dataclass(frozen=True)
class SoftHsmToken:
    module: str
    label: str
    pin: str


def _softhsm_module() -> str | None:
    return next((p for p in SOFTHSM_CANDIDATES if Path(p).is_file()), None)


@pytest.fixture(scope="session")
def softhsm_token(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoftHsmToken]:
    module = _softhsm_module()
    util = shutil.which("softhsm2-util")
    if module is None or util is None:
        pytest.skip("SoftHSM2 is not installed (apt-get install softhsm2)")
    root = tmp_path_factory.mktemp("softhsm")
    (root / "tokens").mkdir()
    conf = root / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {root / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n"
    )
    previous = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    subprocess.run(
        [
            util,
            "--init-token",
            "--free",
            "--label",
            TOKEN_LABEL,
            "--so-pin",
            "1234",
            "--pin",
            USER_PIN,
        ],
        check=True,
        capture_output=True,
    )
    yield SoftHsmToken(module, TOKEN_LABEL, USER_PIN)
    if previous is None:
        os.environ.pop("SOFTHSM2_CONF", None)
    else:
        os.environ["SOFTHSM2_CONF"] = previous


@pytest.fixture
def root_key() -> RootKey:
    return RootKey(TEST_ROOT_KEY, source="test")


def make_kms(
    backend: str,
    state: Path | KeyringStore,
    request: pytest.FixtureRequest,
    max_wraps: int = 2**30,
) -> KeyManager:
    if backend == "local":
        return LocalKeyring(
            state, RootKey(TEST_ROOT_KEY, source="test"), max_wraps_per_version=max_wraps
        )
    from app.crypto.hsm import Pkcs11KeyManager

    token: SoftHsmToken = request.getfixturevalue("softhsm_token")
    return Pkcs11KeyManager(
        state,
        module=token.module,
        token_label=token.label,
        pin=token.pin,
        max_wraps_per_version=max_wraps,
    )


BACKENDS = [
    pytest.param("local", id="local"),
    pytest.param("softhsm", id="softhsm", marks=pytest.mark.softhsm),
]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# Where the state document lives: a file (one machine), or a row of the database (replicas).
KEYRING_STORES = ["file", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=KEYRING_STORES)
def open_keyring_store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[[], KeyringStore]]:
    """Opens this test's one state document. Each call is a new store object (over a new
    engine, for the database), as a restarted process or another replica would open it."""
    if request.param == "file":
        yield lambda: FileKeyringStore(tmp_path / "keys")
        return
    with empty_database(request.param, tmp_path, request) as url:
        engines: list[Engine] = []

        def open_store() -> KeyringStore:
            engines.append(create_engine_for(url))
            return DatabaseKeyringStore(engines[-1])

        upgrade_database(url)
        try:
            yield open_store
        finally:
            for engine in engines:
                engine.dispose()


@pytest.fixture
def keyring_store(open_keyring_store: Callable[[], KeyringStore]) -> KeyringStore:
    return open_keyring_store()


@pytest.fixture
def kms(
    backend: str, keyring_store: KeyringStore, request: pytest.FixtureRequest
) -> Iterator[KeyManager]:
    manager = make_kms(backend, keyring_store, request)
    yield manager
    manager.close()
