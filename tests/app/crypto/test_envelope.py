"""Envelope encryption and the KMS lifecycle, run against every backend."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from app.crypto import (
    DecryptionError,
    EnvelopeCipher,
    KekState,
    KeyManager,
    KeyringStore,
    KeyStateError,
    OrgKeyNotFoundError,
    Purpose,
    RewrapItem,
    SealedObject,
    rewrap_all,
)
from app.crypto.wire import (
    MIN_BLOB_SIZE,
    NONCE_SIZE,
    TAG_SIZE,
    WRAPPED_DEK_SIZE,
    dek_aad,
    encode_context,
    join_blob,
    kek_version_of,
    parse_wrapped_dek,
    payload_aad,
    split_blob,
)
from tests.app.crypto.conftest import make_kms

ORG = "org-a"
OTHER = "org-b"
OBJ = "frame-0001"
PT = b"wajah test frame \x00\xff" * 3  # 57 bytes


@pytest.fixture
def cipher(kms: KeyManager) -> EnvelopeCipher:
    kms.create_org(ORG)
    kms.create_org(OTHER)
    return EnvelopeCipher(kms)


def seal(cipher: EnvelopeCipher, pt: bytes = PT, obj: str = OBJ) -> bytes:
    return cipher.seal(pt, org_id=ORG, object_id=obj, purpose=Purpose.FRAME)


def open_(cipher: EnvelopeCipher, blob: bytes, obj: str = OBJ) -> bytes:
    return cipher.open(blob, org_id=ORG, object_id=obj, purpose=Purpose.FRAME)


# ----- wire format, pinned --------------------------------------------------------------
def test_associated_data_is_pinned() -> None:
    ctx = encode_context("org", "obj-1", Purpose.PII_NIK)
    assert ctx == b"\x00\x03org\x00\x05obj-1\x00\x07pii_nik"
    assert dek_aad("org", 2, ctx) == b"wajah/dek/v1\x00\x00\x03org\x00\x00\x00\x02" + ctx
    assert payload_aad(ctx) == b"wajah/payload/v1\x00" + ctx


def test_blob_layout(cipher: EnvelopeCipher) -> None:
    blob = seal(cipher)
    assert len(blob) == 1 + 65 + 12 + len(PT) + 16 == 151
    assert blob[0] == 0x01
    assert blob[1] == 0x01  # wrapped-DEK format version
    assert blob[2:6] == b"\x00\x00\x00\x01"  # KEK version 1
    assert kek_version_of(blob) == 1
    wrapped, payload = split_blob(blob)
    assert len(wrapped) == WRAPPED_DEK_SIZE == 65
    assert len(payload) == 12 + len(PT) + 16
    assert join_blob(wrapped, payload) == blob
    assert PT not in blob


@pytest.mark.parametrize("size", [0, 1, 200_000])
def test_round_trip(cipher: EnvelopeCipher, size: int) -> None:
    pt = random.Random(size).randbytes(size)
    blob = seal(cipher, pt)
    assert len(blob) == MIN_BLOB_SIZE + size
    assert open_(cipher, blob) == pt


def test_every_purpose_round_trips(cipher: EnvelopeCipher) -> None:
    for purpose in Purpose:
        blob = cipher.seal(PT, org_id=ORG, object_id=OBJ, purpose=purpose)
        assert cipher.open(blob, org_id=ORG, object_id=OBJ, purpose=purpose) == PT


def test_fresh_dek_and_nonce_per_seal(cipher: EnvelopeCipher) -> None:
    a, b = seal(cipher), seal(cipher)
    assert a != b
    assert a[6:18] != b[6:18]  # wrap nonces
    assert a[66:78] != b[66:78]  # payload nonces


# ----- tamper suite (tink style) --------------------------------------------------------
def test_flipping_any_bit_fails(cipher: EnvelopeCipher) -> None:
    blob = seal(cipher, b"x" * 8)
    rng = random.Random(4)
    failures = 0
    for offset in range(len(blob)):
        tampered = bytearray(blob)
        tampered[offset] ^= 1 << rng.randrange(8)
        with pytest.raises(DecryptionError):
            open_(cipher, bytes(tampered))
        failures += 1
    assert failures == 1 + 65 + 12 + 8 + 16


def test_truncation_and_extension_fail(cipher: EnvelopeCipher) -> None:
    blob = seal(cipher, b"x" * 8)
    for length in range(len(blob)):
        with pytest.raises(DecryptionError):
            open_(cipher, blob[:length])
    with pytest.raises(DecryptionError):
        open_(cipher, blob + b"\x00")


def test_swapped_associated_data_fails(cipher: EnvelopeCipher) -> None:
    blob = seal(cipher)
    cases = [
        {"org_id": OTHER, "object_id": OBJ, "purpose": Purpose.FRAME},
        {"org_id": ORG, "object_id": "frame-0002", "purpose": Purpose.FRAME},
        {"org_id": ORG, "object_id": OBJ, "purpose": Purpose.PII_NIK},
        {"org_id": "no-such-org", "object_id": OBJ, "purpose": Purpose.FRAME},
        {"org_id": "", "object_id": OBJ, "purpose": Purpose.FRAME},
    ]
    for kwargs in cases:
        with pytest.raises(DecryptionError):
            cipher.open(blob, **kwargs)  # type: ignore[arg-type]


def test_kek_version_field_is_bound(cipher: EnvelopeCipher, kms: KeyManager) -> None:
    blob = seal(cipher)
    kms.rotate(ORG)
    relabelled = blob[:2] + b"\x00\x00\x00\x02" + blob[6:]
    with pytest.raises(DecryptionError):
        open_(cipher, relabelled)
    assert open_(cipher, blob) == PT


def test_wrong_orgs_kek_fails(cipher: EnvelopeCipher, kms: KeyManager) -> None:
    wrapped, _ = split_blob(seal(cipher))
    ctx_as_if_other = encode_context(OTHER, OBJ, Purpose.FRAME)
    with pytest.raises(DecryptionError):
        kms.unwrap_dek(OTHER, wrapped, ctx_as_if_other)


def test_swapping_wrapped_deks_between_objects_fails(cipher: EnvelopeCipher) -> None:
    a, b = seal(cipher, obj="a"), seal(cipher, obj="b")
    wa, pa = split_blob(a)
    wb, _ = split_blob(b)
    with pytest.raises(DecryptionError):
        open_(cipher, join_blob(wb, pa), obj="a")
    assert open_(cipher, join_blob(wa, pa), obj="a") == PT


def test_unknown_org_cannot_seal(kms: KeyManager) -> None:
    with pytest.raises(OrgKeyNotFoundError):
        EnvelopeCipher(kms).seal(PT, org_id="ghost", object_id=OBJ, purpose=Purpose.FRAME)


# ----- lifecycle ------------------------------------------------------------------------
def test_rotate_rewrap_disable_destroy(cipher: EnvelopeCipher, kms: KeyManager) -> None:
    blobs = {f"obj-{i}": seal(cipher, bytes([i]) * 10, obj=f"obj-{i}") for i in range(6)}
    assert kms.rotate(ORG) == 2
    assert kms.primary_version(ORG) == 2
    new = seal(cipher, b"new", obj="obj-new")
    assert kek_version_of(new) == 2
    for obj, blob in blobs.items():  # old versions still unwrap
        assert open_(cipher, blob, obj=obj) == bytes([int(obj[-1])]) * 10

    rewrapped = {}
    for obj, blob in blobs.items():
        out = cipher.rewrap(blob, org_id=ORG, object_id=obj, purpose=Purpose.FRAME)
        assert kek_version_of(out) == 2
        assert out[66:] == blob[66:]  # payload untouched
        rewrapped[obj] = out
    kms.set_min_decryption_version(ORG, 2)
    assert [v.state for v in kms.versions(ORG)] == [KekState.DISABLED, KekState.PRIMARY]
    for obj, blob in rewrapped.items():
        assert open_(cipher, blob, obj=obj) == bytes([int(obj[-1])]) * 10
    for obj, blob in blobs.items():
        with pytest.raises(DecryptionError):
            open_(cipher, blob, obj=obj)

    kms.set_min_decryption_version(ORG, 1)  # disabling is reversible
    assert open_(cipher, blobs["obj-0"], obj="obj-0") == b"\x00" * 10
    kms.destroy_version(ORG, 1)  # destroying is not
    kms.set_min_decryption_version(ORG, 1)
    with pytest.raises(DecryptionError):
        open_(cipher, blobs["obj-0"], obj="obj-0")
    assert [v.state for v in kms.versions(ORG)] == [KekState.DESTROYED, KekState.PRIMARY]
    with pytest.raises(KeyStateError):
        kms.destroy_version(ORG, 2)

    other_blob = cipher.seal(PT, org_id=OTHER, object_id=OBJ, purpose=Purpose.FRAME)
    kms.destroy_org(ORG)
    for obj, blob in [*rewrapped.items(), ("obj-new", new)]:
        with pytest.raises(DecryptionError):
            open_(cipher, blob, obj=obj)
    assert not kms.has_org(ORG)
    with pytest.raises(KeyStateError):
        kms.create_org(ORG)  # a destroyed org stays a tombstone
    assert cipher.open(other_blob, org_id=OTHER, object_id=OBJ, purpose=Purpose.FRAME) == PT


def test_detached_wrapped_dek_rewrap_and_shred(cipher: EnvelopeCipher, kms: KeyManager) -> None:
    wrapped, payload = split_blob(seal(cipher))
    kms.rotate(ORG)
    new_wrapped = cipher.rewrap(wrapped, org_id=ORG, object_id=OBJ, purpose=Purpose.FRAME)
    assert len(new_wrapped) == 65
    assert parse_wrapped_dek(new_wrapped).kek_version == 2
    assert open_(cipher, join_blob(new_wrapped, payload)) == PT
    # rewrapping what is already primary is a no-op
    assert cipher.rewrap(new_wrapped, org_id=ORG, object_id=OBJ, purpose=Purpose.FRAME) == (
        new_wrapped
    )


def test_rewrap_all_is_resumable(cipher: EnvelopeCipher, kms: KeyManager) -> None:
    # even objects keep their wrapped DEK apart from the payload (as the DB will), odd ones
    # store the whole blob
    purposes = {f"o{i:02d}": Purpose.PII_EMAIL if i % 2 else Purpose.FRAME for i in range(20)}
    store: dict[str, bytes] = {}
    payloads: dict[str, bytes] = {}
    for i, (obj, purpose) in enumerate(purposes.items()):
        blob = cipher.seal(obj.encode(), org_id=ORG, object_id=obj, purpose=purpose)
        if i % 2 == 0:
            store[obj], payloads[obj] = split_blob(blob)
        else:
            store[obj] = blob
    purposes["zz-moved"] = Purpose.FRAME
    store["zz-moved"] = seal(cipher)  # sealed for OBJ, listed under another id: must fail
    kms.rotate(ORG)

    def items() -> list[RewrapItem]:
        return [RewrapItem(o, purposes[o], d) for o, d in sorted(store.items())]

    def save(item: RewrapItem, data: bytes, kek_version: int) -> None:
        assert kek_version == kek_version_of(data) == 2
        store[item.object_id] = data

    saved = 0

    def save_then_crash(item: RewrapItem, data: bytes, kek_version: int) -> None:
        nonlocal saved
        if saved == 7:
            raise KeyboardInterrupt
        save(item, data, kek_version)
        saved += 1

    with pytest.raises(KeyboardInterrupt):
        rewrap_all(kms, ORG, items(), save_then_crash)
    seen: list[int] = []
    report = rewrap_all(kms, ORG, items(), save, progress=lambda r: seen.append(r.total))
    assert (report.total, report.skipped, report.rewrapped, report.failed) == (
        21,
        7,
        13,
        ["zz-moved"],
    )
    assert seen == list(range(1, 22))
    again = rewrap_all(kms, ORG, items(), save)
    assert (again.skipped, again.rewrapped, again.failed) == (20, 0, ["zz-moved"])

    kms.set_min_decryption_version(ORG, 2)
    for obj, purpose in purposes.items():
        if obj == "zz-moved":
            continue
        data = store[obj]
        blob = join_blob(data, payloads[obj]) if len(data) == WRAPPED_DEK_SIZE else data
        assert kek_version_of(blob) == 2
        assert cipher.open(blob, org_id=ORG, object_id=obj, purpose=purpose) == obj.encode()


def test_rewrap_all_reports_unopenable_items(cipher: EnvelopeCipher, kms: KeyManager) -> None:
    good = seal(cipher)
    forged = good[:10] + bytes([good[10] ^ 1]) + good[11:]
    kms.rotate(ORG)
    report = rewrap_all(
        kms,
        ORG,
        [RewrapItem(OBJ, Purpose.FRAME, good), RewrapItem("forged", Purpose.FRAME, forged)],
        lambda item, data, kek_version: None,
    )
    assert (report.rewrapped, report.failed) == (1, ["forged"])


# ----- wrap counters ----------------------------------------------------------------------
def test_wrap_counter_is_exact_and_forces_rotation(
    backend: str, open_keyring_store: Callable[[], KeyringStore], request: pytest.FixtureRequest
) -> None:
    kms = make_kms(backend, open_keyring_store(), request, max_wraps=5)
    kms.create_org(ORG)
    cipher = EnvelopeCipher(kms)
    blobs = [seal(cipher, obj=f"o{i}") for i in range(12)]
    assert [kek_version_of(b) for b in blobs] == [1] * 5 + [2] * 5 + [3] * 2
    assert [kms.wrap_count(ORG, v) for v in (1, 2, 3)] == [5, 5, 2]
    assert [(v.version, v.state, v.wrap_count) for v in kms.versions(ORG)] == [
        (1, KekState.ENABLED, 5),
        (2, KekState.ENABLED, 5),
        (3, KekState.PRIMARY, 2),
    ]
    for i, blob in enumerate(blobs):
        assert open_(cipher, blob, obj=f"o{i}") == PT
    kms.close()

    # a restarted process counts the reserved block as used: an upper bound, never less
    reopened = make_kms(backend, open_keyring_store(), request, max_wraps=5)
    assert reopened.wrap_count(ORG, 3) == 5
    assert (
        kek_version_of(
            EnvelopeCipher(reopened).seal(PT, org_id=ORG, object_id="x", purpose=Purpose.FRAME)
        )
        == 4
    )
    reopened.close()


def test_state_survives_reopen(
    backend: str, open_keyring_store: Callable[[], KeyringStore], request: pytest.FixtureRequest
) -> None:
    kms = make_kms(backend, open_keyring_store(), request)
    kms.create_org(ORG)
    blob = EnvelopeCipher(kms).seal(PT, org_id=ORG, object_id=OBJ, purpose=Purpose.FRAME)
    kms.rotate(ORG)
    kms.close()
    again = make_kms(backend, open_keyring_store(), request)
    assert again.primary_version(ORG) == 2
    assert EnvelopeCipher(again).open(blob, org_id=ORG, object_id=OBJ, purpose=Purpose.FRAME) == PT
    again.close()


@pytest.mark.slow
def test_no_key_nonce_pair_repeats(cipher: EnvelopeCipher, kms: KeyManager) -> None:
    n = 100_000
    deks: set[bytes] = set()
    pairs: set[tuple[bytes, bytes]] = set()
    wrap_nonces: set[bytes] = set()
    for i in range(n):
        obj = f"o{i}"
        blob = cipher.seal(b"", org_id=ORG, object_id=obj, purpose=Purpose.FRAME)
        wrapped, payload = split_blob(blob)
        dek = kms.unwrap_dek(ORG, wrapped, encode_context(ORG, obj, Purpose.FRAME))
        deks.add(dek)
        pairs.add((dek, payload[:12]))
        wrap_nonces.add(wrapped[5:17])  # all under the same KEK version
    assert (len(deks), len(pairs), len(wrap_nonces)) == (n, n, n)
    assert kms.wrap_count(ORG, 1) == n


def test_seal_detached_is_seal_split(cipher: EnvelopeCipher) -> None:
    sealed = cipher.seal_detached(PT, org_id=ORG, object_id=OBJ, purpose=Purpose.FRAME)
    wrapped, payload = sealed.wrapped_dek, sealed.payload
    assert isinstance(payload, bytearray)  # the buffer it was encrypted into, not a copy
    assert "payload" not in repr(sealed)
    assert len(wrapped) == WRAPPED_DEK_SIZE
    assert len(payload) == NONCE_SIZE + len(PT) + TAG_SIZE
    blob = join_blob(wrapped, bytes(payload))
    assert open_(cipher, blob) == PT
    assert [len(part) for part in split_blob(blob)] == [len(wrapped), len(payload)]
    payload[NONCE_SIZE] ^= 1
    with pytest.raises(DecryptionError):
        open_(cipher, join_blob(wrapped, bytes(payload)))


def test_seal_detached_carries_the_primary_kek_version(
    cipher: EnvelopeCipher, kms: KeyManager
) -> None:
    def seal_detached() -> SealedObject:
        return cipher.seal_detached(PT, org_id=ORG, object_id=OBJ, purpose=Purpose.FRAME)

    before = seal_detached()
    assert before.kek_version == kms.primary_version(ORG) == 1
    assert kms.rotate(ORG) == 2
    after = seal_detached()
    assert after.kek_version == kms.primary_version(ORG) == 2
    # The field says what the wire format says.
    assert [parse_wrapped_dek(s.wrapped_dek).kek_version for s in (before, after)] == [1, 2]
