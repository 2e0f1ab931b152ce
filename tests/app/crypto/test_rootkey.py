from __future__ import annotations

import base64
import logging
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from app.crypto import (
    KeyringStore,
    LocalKeyring,
    RootKey,
    RootKeyError,
    generate_root_key_b64,
    load_root_key,
)
from app.crypto.rootkey import DEV_KEY_FILENAME, DEV_KEY_MARKER

from .conftest import TEST_ROOT_KEY


def test_production_refuses_missing_key(tmp_path: Path) -> None:
    with pytest.raises(RootKeyError, match="production mode needs"):
        load_root_key(production=True, root_key=None, root_key_file=None, home=tmp_path)
    assert not (tmp_path / "keys").exists()


@pytest.mark.parametrize("value", ["changeme", "", "dev", "not base64!", "AAAA"])
def test_placeholder_or_malformed_key_is_refused(tmp_path: Path, value: str) -> None:
    with pytest.raises(RootKeyError):
        load_root_key(production=True, root_key=value, root_key_file=None, home=tmp_path)


def test_low_entropy_key_is_refused(tmp_path: Path) -> None:
    zeros = base64.b64encode(bytes(32)).decode()
    with pytest.raises(RootKeyError, match="entropy"):
        load_root_key(production=False, root_key=zeros, root_key_file=None, home=tmp_path)


def test_development_generates_loudly_and_production_refuses_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        key = load_root_key(production=False, root_key=None, root_key_file=None, home=tmp_path)
    path = tmp_path / "keys" / DEV_KEY_FILENAME
    assert key.auto_generated
    assert path.read_text().splitlines()[0] == DEV_KEY_MARKER
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert "DEVELOPMENT MODE" in caplog.text
    again = load_root_key(production=False, root_key=None, root_key_file=None, home=tmp_path)
    assert again._material == key._material
    with pytest.raises(RootKeyError, match="auto-generated"):
        load_root_key(production=True, root_key=None, root_key_file=path, home=tmp_path)


def test_key_file_and_env_value(tmp_path: Path) -> None:
    value = base64.b64encode(TEST_ROOT_KEY).decode()
    path = tmp_path / "root.key"
    path.write_text(f"# ops-managed\n{value}\n")
    os.chmod(path, 0o600)
    from_file = load_root_key(production=True, root_key=None, root_key_file=path, home=tmp_path)
    from_env = load_root_key(production=True, root_key=value, root_key_file=None, home=tmp_path)
    assert from_file._material == from_env._material == TEST_ROOT_KEY
    assert value not in repr(from_file) and value not in str(from_env)
    assert len(base64.b64decode(generate_root_key_b64())) == 32


def test_wrong_root_key_is_refused(open_keyring_store: Callable[[], KeyringStore]) -> None:
    LocalKeyring(open_keyring_store(), RootKey(TEST_ROOT_KEY, source="test")).create_org("org-a")
    other = RootKey(bytes(range(1, 33)), source="test")
    # The same error whether the keyring is a file or a database row; it names which.
    location = open_keyring_store().location
    with pytest.raises(RootKeyError) as refused:
        LocalKeyring(open_keyring_store(), other)
    assert str(refused.value) == f"the root key does not match the keyring in {location}"
