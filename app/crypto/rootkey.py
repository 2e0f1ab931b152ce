"""The root key of the local keyring: read from an environment value or a file, never logged.

Key file format: one line of standard base64 encoding 32 bytes; lines starting with `#` are
comments. A file that wajah generated itself (development mode) starts with the
`DEV_KEY_MARKER` comment, and production mode refuses it.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import secrets
import stat
from pathlib import Path

import crashsafe
from app.crypto.errors import RootKeyError

log = logging.getLogger(__name__)

ROOT_KEY_SIZE = 32
DEV_KEY_MARKER = "# wajah development root key: auto-generated, NOT for production"
DEV_KEY_FILENAME = "dev-root.key"
_PLACEHOLDERS = frozenset({"", "changeme", "change-me", "secret", "password", "dev", "test"})


class RootKey:
    """32 bytes of root key. The bytes are reachable only inside `app.crypto`; repr and str
    say where the key came from, never what it is."""

    __slots__ = ("_material", "auto_generated", "source")

    def __init__(self, material: bytes, *, source: str, auto_generated: bool = False) -> None:
        if len(material) != ROOT_KEY_SIZE:
            raise RootKeyError(f"root key must be {ROOT_KEY_SIZE} bytes")
        if len(set(material)) < 8:
            # all-zero or repeated-pattern keys are typos or placeholders, not keys
            raise RootKeyError("root key has too little entropy; generate it with a CSPRNG")
        self._material = material
        self.source = source
        self.auto_generated = auto_generated

    def __repr__(self) -> str:
        return f"RootKey(source={self.source!r}, auto_generated={self.auto_generated})"

    __str__ = __repr__

    def __reduce__(self) -> str | tuple[object, ...]:
        raise TypeError("RootKey cannot be pickled")


def generate_root_key_b64() -> str:
    """A fresh root key, base64, for `WAJAH_ROOT_KEY` or a key file."""
    return base64.b64encode(secrets.token_bytes(ROOT_KEY_SIZE)).decode("ascii")


def _decode(value: str, source: str) -> bytes:
    if value.strip().lower() in _PLACEHOLDERS:
        raise RootKeyError(f"root key from {source} is a placeholder")
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise RootKeyError(f"root key from {source} is not valid base64") from None
    if len(raw) != ROOT_KEY_SIZE:
        raise RootKeyError(f"root key from {source} must decode to {ROOT_KEY_SIZE} bytes")
    return raw


def _read_key_file(path: Path) -> tuple[str, bool]:
    try:
        text = path.read_text("utf-8")
    except OSError as exc:
        raise RootKeyError(f"cannot read root key file {path}: {exc.strerror}") from None
    lines = [line.strip() for line in text.splitlines()]
    auto_generated = DEV_KEY_MARKER in lines
    body = [line for line in lines if line and not line.startswith("#")]
    if len(body) != 1:
        raise RootKeyError(f"root key file {path} must hold exactly one base64 line")
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("root key file %s is readable by group/others; chmod 600 it", path)
    return body[0], auto_generated


def load_root_key(
    *,
    production: bool,
    root_key: str | None,
    root_key_file: Path | None,
    home: Path,
) -> RootKey:
    """Resolve the root key: explicit value, then key file, then (development only) a key
    generated once into `home/keys/dev-root.key`, with a loud warning."""
    if root_key is not None:
        return RootKey(_decode(root_key, "WAJAH_ROOT_KEY"), source="WAJAH_ROOT_KEY")
    if root_key_file is not None:
        value, auto = _read_key_file(root_key_file)
        if auto and production:
            raise RootKeyError(
                f"{root_key_file} is an auto-generated development root key; production "
                "needs a root key you generated and keep (WAJAH_ROOT_KEY or WAJAH_ROOT_KEY_FILE)"
            )
        source = f"file {root_key_file}"
        return RootKey(_decode(value, source), source=source, auto_generated=auto)
    if production:
        raise RootKeyError(
            "production mode needs WAJAH_ROOT_KEY or WAJAH_ROOT_KEY_FILE "
            "(an auto-generated root key is for development only)"
        )
    path = home / "keys" / DEV_KEY_FILENAME
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        content = f"{DEV_KEY_MARKER}\n{generate_root_key_b64()}\n"
        crashsafe.write_bytes(path, content.encode("ascii"), mode=0o600)
        log.warning(
            "!!! DEVELOPMENT MODE: generated a local root key at %s. Everything sealed under "
            "it is lost if this file is lost, and it is refused in production. !!!",
            path,
        )
    else:
        log.warning("DEVELOPMENT MODE: using the auto-generated root key at %s", path)
    value, _ = _read_key_file(path)
    os.chmod(path, 0o600)
    return RootKey(_decode(value, str(path)), source=f"file {path}", auto_generated=True)
