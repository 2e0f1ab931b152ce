"""The key manager's state document in the database: one store per replica, one row shared.

Every replica here is a key manager of its own over an engine of its own on the same database
(SQLite and PostgreSQL), as `wajah serve` processes that share only `WAJAH_DATABASE_URL` and
the root key would be.
"""

from __future__ import annotations

import base64
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine

from app.crypto import (
    DecryptionError,
    EnvelopeCipher,
    KekState,
    KeyringError,
    LocalKeyring,
    Purpose,
    RootKey,
    build_kms,
)
from app.crypto.keyring_store import FileKeyringStore, encode_state
from app.crypto.kms import WRAP_RESERVATION_BLOCK
from app.crypto.wire import kek_version_of, parse_wrapped_dek, split_blob
from app.settings import Settings
from app.storage.engine import create_engine_for
from app.storage.keyring import DatabaseKeyringStore
from app.storage.schema import keyring_state
from tests.app.storage.conftest import TEST_ROOT_KEY

ROOT = RootKey(TEST_ROOT_KEY, source="tests")
ORG = "org-a"
PT = b"a sealed frame"


@pytest.fixture
def open_engine(engine: Engine, database_url: URL) -> Iterator[Callable[[], Engine]]:
    """Opens another engine on the test's (migrated) database: another replica's."""
    opened: list[Engine] = []

    def open_() -> Engine:
        opened.append(create_engine_for(database_url))
        return opened[-1]

    yield open_
    for other in opened:
        other.dispose()


def _stored(engine: Engine, name: str = "keyring") -> tuple[str, object] | None:
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(keyring_state.c.state, keyring_state.c.updated_at).where(
                keyring_state.c.name == name
            )
        ).first()
    return None if row is None else (row.state, row.updated_at)


# ----- the store ----------------------------------------------------------------------------
def test_mutate_creates_once_writes_on_success_and_keeps_the_row_on_error(
    engine: Engine, tmp_path: Path
) -> None:
    store = DatabaseKeyringStore(engine)
    assert (store.load(), _stored(engine)) == (None, None)
    with store.mutate(lambda: {"format": "f", "n": 0}) as state:
        state["n"] += 1
    assert store.load() == {"format": "f", "n": 1}
    # Byte for byte what the file store writes for the same document.
    files = FileKeyringStore(tmp_path / "keys")
    with files.mutate(lambda: {"format": "f", "n": 1}):
        pass
    written = _stored(engine)
    assert written is not None
    assert written[0] == encode_state({"format": "f", "n": 1}) == files.path.read_text()

    def never() -> dict[str, object]:
        raise AssertionError("the document exists")

    with pytest.raises(RuntimeError, match="mid-change"), store.mutate(never) as state:
        state["n"] = 99
        raise RuntimeError("mid-change")
    with store.mutate(never):
        pass  # unchanged: not rewritten
    assert _stored(engine) == written
    # Rows are per name: another keyring in the same table is independent.
    other = DatabaseKeyringStore(engine, "other")
    assert other.load() is None
    assert "keyring_state row 'other'" in other.location


def test_a_row_that_is_not_json_is_refused(engine: Engine) -> None:
    store = DatabaseKeyringStore(engine)
    with store.mutate(lambda: {"n": 0}):
        pass
    with engine.begin() as conn:
        conn.execute(sa.update(keyring_state).values(state="{truncated"))
    with pytest.raises(KeyringError, match="cannot read keyring state keyring_state row"):
        store.load()


def test_concurrent_changes_from_many_replicas_are_never_lost(
    open_engine: Callable[[], Engine],
) -> None:
    # Four replicas race to create the document and then to bump a counter: a lost update
    # (two readers of the same version) would leave fewer than 4 * 25.
    stores = [DatabaseKeyringStore(open_engine()) for _ in range(4)]
    start = threading.Barrier(len(stores))

    def bump(i: int) -> None:
        start.wait()
        for _ in range(25):
            with stores[i].mutate(lambda: {"creator": i, "n": 0}) as state:
                state["n"] += 1

    with ThreadPoolExecutor(len(stores)) as pool:
        for done in [pool.submit(bump, i) for i in range(len(stores))]:
            done.result()
    final = stores[0].load()
    assert final is not None
    assert final["n"] == 100
    assert final["creator"] in range(4)


# ----- key managers as replicas -------------------------------------------------------------
def test_a_replica_uses_another_replicas_new_org_and_version_without_restart(
    engine: Engine, open_engine: Callable[[], Engine]
) -> None:
    a = LocalKeyring(DatabaseKeyringStore(engine), ROOT)
    b = LocalKeyring(DatabaseKeyringStore(open_engine()), ROOT)
    assert a.keyring_id == b.keyring_id  # the second one opened the first one's keyring
    seal_a, seal_b = EnvelopeCipher(a), EnvelopeCipher(b)

    assert b.has_org(ORG) is False
    assert a.create_org(ORG) == 1
    assert b.has_org(ORG) is True
    first = seal_a.seal(PT, org_id=ORG, object_id="o1", purpose=Purpose.FRAME)
    assert seal_b.open(first, org_id=ORG, object_id="o1", purpose=Purpose.FRAME) == PT

    assert a.rotate(ORG) == 2
    second = seal_a.seal(PT, org_id=ORG, object_id="o2", purpose=Purpose.FRAME)
    assert kek_version_of(second) == 2
    # B has never seen version 2: it looks it up instead of refusing the blob.
    assert seal_b.open(second, org_id=ORG, object_id="o2", purpose=Purpose.FRAME) == PT
    third = seal_b.seal(PT, org_id=ORG, object_id="o3", purpose=Purpose.FRAME)
    assert kek_version_of(third) == b.primary_version(ORG) == 2
    assert seal_a.open(third, org_id=ORG, object_id="o3", purpose=Purpose.FRAME) == PT
    assert a.mac(ORG, b"ref") == b.mac(ORG, b"ref")
    assert [(v.version, v.state) for v in b.versions(ORG)] == [
        (1, KekState.ENABLED),
        (2, KekState.PRIMARY),
    ]


def test_replicas_with_homes_of_their_own_share_keys_built_from_settings(
    engine: Engine, open_engine: Callable[[], Engine], tmp_path: Path
) -> None:
    # What `Runtime.start` does on PostgreSQL: `build_kms` over the database's store.
    root_key = base64.b64encode(TEST_ROOT_KEY).decode()
    a, b = (
        build_kms(
            Settings(home=tmp_path / home, root_key=root_key),  # type: ignore[arg-type]
            store=DatabaseKeyringStore(e),
        )
        for home, e in (("a", engine), ("b", open_engine()))
    )
    a.create_org(ORG)
    blob = EnvelopeCipher(a).seal(PT, org_id=ORG, object_id="o1", purpose=Purpose.FRAME)
    assert EnvelopeCipher(b).open(blob, org_id=ORG, object_id="o1", purpose=Purpose.FRAME) == PT
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("keyring*")) == []


def test_concurrent_wrap_reservations_never_overlap(
    engine: Engine, open_engine: Callable[[], Engine]
) -> None:
    # Two replicas wrap at once, past a version's limit: each wrap takes a slot of a window
    # reserved in the shared document, and no slot of any version is handed out twice.
    max_wraps, per_replica = 6000, 5000
    managers = [
        LocalKeyring(DatabaseKeyringStore(e), ROOT, max_wraps_per_version=max_wraps)
        for e in (engine, open_engine())
    ]
    managers[0].create_org(ORG)
    start = threading.Barrier(len(managers))

    def wrap_all(i: int) -> set[tuple[int, int]]:
        kms, slots = managers[i], set()
        start.wait()
        for n in range(per_replica):
            wrapped = kms.wrap_dek(ORG, n.to_bytes(32, "big"), b"context")
            version = parse_wrapped_dek(wrapped).kek_version
            # exact within a process: the slot this wrap took is the count less one
            slots.add((version, kms.wrap_count(ORG, version) - 1))
        return slots

    with ThreadPoolExecutor(len(managers)) as pool:
        first, second = (f.result() for f in [pool.submit(wrap_all, i) for i in range(2)])
    assert (len(first), len(second), len(first & second)) == (per_replica, per_replica, 0)

    state = DatabaseKeyringStore(engine).load()
    assert state is not None
    reserved = {int(v): r["wraps_reserved"] for v, r in state["orgs"][ORG]["versions"].items()}
    used = Counter(version for version, _ in first | second)
    assert sum(used.values()) == 2 * per_replica
    assert sorted(used)[:2] == [1, 2]  # 10000 wraps do not fit one version of 6000
    for version, slot in first | second:
        assert 0 <= slot < reserved[version] <= max_wraps
    for version, count in used.items():
        assert count <= reserved[version]
    # Whole blocks or the rest of a version, never more.
    assert all(r % WRAP_RESERVATION_BLOCK == 0 or r == max_wraps for r in reserved.values())


def test_a_rotation_and_a_destroyed_version_reach_another_replica_on_refresh(
    engine: Engine, open_engine: Callable[[], Engine]
) -> None:
    """What the change feed does when another replica changes the keys: `refresh`."""
    a = LocalKeyring(DatabaseKeyringStore(engine), ROOT)
    b = LocalKeyring(DatabaseKeyringStore(open_engine()), ROOT)
    a.create_org(ORG)
    cipher_b = EnvelopeCipher(b)
    old = cipher_b.seal(PT, org_id=ORG, object_id="frm_1", purpose=Purpose.FRAME)
    assert kek_version_of(split_blob(old)[0]) == 1

    a.rotate(ORG)
    b.refresh()
    # B wraps under the new primary at once, not after its reserved block of v1 runs out.
    new = cipher_b.seal(PT, org_id=ORG, object_id="frm_2", purpose=Purpose.FRAME)
    assert kek_version_of(split_blob(new)[0]) == 2

    a.destroy_version(ORG, 1)
    b.refresh()
    # Crypto-shredding holds on B too: what v1 wrapped no longer opens there.
    with pytest.raises(DecryptionError):
        cipher_b.open(old, org_id=ORG, object_id="frm_1", purpose=Purpose.FRAME)
    assert cipher_b.open(new, org_id=ORG, object_id="frm_2", purpose=Purpose.FRAME) == PT


def test_a_keyring_kept_in_the_home_moves_into_an_empty_database_once(
    engine: Engine, tmp_path: Path
) -> None:
    """An upgrade: what the file keyring sealed still opens through the database's."""
    from app.runtime import import_home_keyring

    settings = Settings(home=tmp_path)
    filed = LocalKeyring(tmp_path / "keys", ROOT)
    filed.create_org(ORG)
    sealed = EnvelopeCipher(filed).seal(PT, org_id=ORG, object_id="frm_1", purpose=Purpose.FRAME)
    store = DatabaseKeyringStore(engine)

    import_home_keyring(store, settings)
    imported = LocalKeyring(store, ROOT)
    assert (
        EnvelopeCipher(imported).open(sealed, org_id=ORG, object_id="frm_1", purpose=Purpose.FRAME)
        == PT
    )

    # Once the database holds a keyring, the file is never read again.
    imported.rotate(ORG)
    import_home_keyring(store, settings)
    assert LocalKeyring(store, ROOT).primary_version(ORG) == 2
