"""Snapshots: atomic, verified on load, rebuilt from the source of truth when bad.

Tests taking ``backend`` or ``open_backend`` run on every backend; the last section checks the
embedded index's snapshot files (format, damage, disk full, alignment, memory mapping).
"""

from __future__ import annotations

import json
import os
import resource
import signal
import struct
import zlib
from collections.abc import Callable, Iterable
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from index import (
    BEGINNING,
    IndexBackend,
    IndexRegistry,
    NamespaceIndex,
    SnapshotWriteError,
    VectorIndex,
)
from index.snapshot import MAGIC

from .backends import OpenBackend
from .conftest import MODEL, unit_vectors

D = 16


class SourceOfTruth:
    """A stand-in for the database: an append-only change log with positions 1, 2, ..."""

    def __init__(self) -> None:
        self.log: list[tuple[int, NDArray[np.float32] | None]] = []
        self.calls: list[int] = []

    def add(self, index: NamespaceIndex, ids: list[int], x: NDArray[np.float32]) -> None:
        index.add(ids, x, model_id=MODEL)
        self.log.extend(zip(ids, x, strict=True))

    def remove(self, index: NamespaceIndex, ids: list[int]) -> None:
        index.remove(ids)
        self.log.extend((i, None) for i in ids)

    @property
    def head(self) -> int:
        return len(self.log)

    def rows_since(self, position: int) -> Iterable[tuple[int, NDArray[np.float32] | None]]:
        self.calls.append(position)
        return list(self.log[position:])


def populate(index: NamespaceIndex) -> tuple[SourceOfTruth, NDArray[np.float32]]:
    """Ids 0..299 added, every third removed: 200 live. Returns the log and 400 vectors."""
    x = unit_vectors(np.random.default_rng(11), 400, D)
    db = SourceOfTruth()
    db.add(index, list(range(300)), x[:300])
    db.remove(index, list(range(0, 300, 3)))
    return db, x


def live_ids(index: NamespaceIndex, probe: NDArray[np.float32]) -> list[int]:
    result = index.search(probe, model_id=MODEL, k=1000)
    return sorted(result.ids[0][result.ids[0] >= 0].tolist())


def test_snapshot_then_replay_of_newer_rows(open_backend: OpenBackend, tmp_path: Path) -> None:
    expected = sorted(set(range(400)) - set(range(0, 300, 3)) - {1, 301})
    with closing(open_backend(tmp_path)) as backend:
        index = backend.get_or_create("org", dimension=D, model_id=MODEL)
        db, x = populate(index)
        snap_at = db.head
        index.snapshot(snap_at)
        db.add(index, list(range(300, 400)), x[300:])
        db.remove(index, [1, 301])
        assert live_ids(index, x[0]) == expected
    with closing(open_backend(tmp_path)) as backend:  # a restart
        loaded = backend.get_or_create("org", dimension=D, model_id=MODEL)
        report = loaded.load_or_rebuild(db.rows_since)
        assert (report.source, report.position, report.replayed) == ("snapshot", snap_at, 102)
        # A snapshot may hold changes after its position too (replaying them is idempotent):
        # the embedded index loads the 200 rows its file holds, Milvus the 298 it kept.
        assert report.loaded in (200, 298)
        assert db.calls == [snap_at]
        assert live_ids(loaded, x[0]) == expected
        assert loaded.count == 298
        for gone in (0, 1, 3, 301):  # removed before and after the snapshot never come back
            assert not loaded.contains(gone)


def test_the_newest_snapshot_is_loaded(open_backend: OpenBackend, tmp_path: Path) -> None:
    x = unit_vectors(np.random.default_rng(12), 3, D)
    db = SourceOfTruth()
    with closing(open_backend(tmp_path)) as backend:
        index = backend.get_or_create("org", dimension=D, model_id=MODEL)
        db.add(index, [10, 11], x[:2])
        index.snapshot(db.head)
        db.add(index, [12], x[2:])
        index.snapshot(db.head)
    with closing(open_backend(tmp_path)) as backend:
        report = backend.get_or_create("org", dimension=D, model_id=MODEL).load_or_rebuild(
            db.rows_since
        )
    assert (report.source, report.position, report.loaded, report.replayed, report.count) == (
        "snapshot", 3, 3, 0, 3,
    )  # fmt: skip
    assert db.calls == [3]


def test_without_a_snapshot_the_rows_rebuild_the_index(backend: IndexBackend) -> None:
    x = unit_vectors(np.random.default_rng(13), 4, D)
    # Id 2 is removed by an (id, None) row; id 1 is replaced by its later row.
    db = SourceOfTruth()
    db.log = [(1, x[0]), (2, x[1]), (3, x[2]), (2, None), (1, x[3])]
    index = backend.get_or_create("org", dimension=D, model_id=MODEL)
    report = index.load_or_rebuild(db.rows_since)
    assert (report.source, report.position, report.loaded, report.replayed, report.count) == (
        "rebuild", BEGINNING, 0, 5, 2,
    )  # fmt: skip
    assert db.calls == [BEGINNING]
    assert not index.contains(2)
    assert index.search(x[3], model_id=MODEL, k=1).hits()[0].id == 1
    np.testing.assert_allclose(index.search(x[3], model_id=MODEL, k=1).scores[0, 0], 1.0, atol=1e-5)
    assert live_ids(index, x[0]) == [1, 3]


def test_failing_source_leaves_index_untouched(backend: IndexBackend) -> None:
    index = backend.get_or_create("org", dimension=D, model_id=MODEL)
    _db, x = populate(index)

    def broken(position: int) -> Iterable[tuple[int, NDArray[np.float32] | None]]:
        yield 1000, x[0]
        raise ConnectionError("database went away")

    before = live_ids(index, x[0])
    with pytest.raises(ConnectionError):
        index.load_or_rebuild(broken)
    assert live_ids(index, x[0]) == before
    assert not index.contains(1000)
    assert index.count == 200


def test_empty_index_round_trips(backend: IndexBackend) -> None:
    index = backend.get_or_create("ns", dimension=4, model_id="m")
    index.snapshot(0)
    report = index.load_or_rebuild(lambda p: [])
    assert (report.source, report.count) == ("snapshot", 0)


# -- the embedded index's snapshot files ---------------------------------------------------


@pytest.fixture
def populated(registry: IndexRegistry) -> tuple[VectorIndex, SourceOfTruth, NDArray[np.float32]]:
    index = registry.get_or_create("org", dimension=D, model_id=MODEL)
    db, x = populate(index)
    return index, db, x


def fresh(index: VectorIndex, **overrides: object) -> VectorIndex:
    kwargs: dict[str, object] = {
        "dimension": index.dimension,
        "model_id": index.model_id,
        "storage": index.storage,
        "snapshot_path": index.snapshot_path,
    }
    kwargs.update(overrides)
    return VectorIndex(index.namespace, **kwargs)  # type: ignore[arg-type]


def _rewrite_header(path: Path, **changes: object) -> None:
    raw = path.read_bytes()
    magic, length, _ = struct.unpack("<8sII", raw[:16])
    fields = json.loads(raw[16 : 16 + length])
    fields.update(changes)
    head = json.dumps(fields).encode()  # a valid header checksum: only the content is wrong
    path.write_bytes(
        struct.pack("<8sII", magic, len(head), zlib.crc32(head)) + head + raw[16 + length :]
    )


def _flip_last_byte(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0x01
    path.write_bytes(bytes(raw))


def _flip_header_byte(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[20] ^= 0x20
    path.write_bytes(bytes(raw))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-7])


def _append(path: Path) -> None:
    path.write_bytes(path.read_bytes() + b"\0")


def _bad_magic(path: Path) -> None:
    path.write_bytes(b"XXXXXXXX" + path.read_bytes()[8:])


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _missing(path: Path) -> None:
    path.unlink()


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (_flip_last_byte, "payload checksum"),
        (_flip_header_byte, "header checksum"),
        (_truncate, "truncated"),
        (_append, "trailing"),
        (_bad_magic, "bad magic"),
        (_empty, "shorter than its prefix"),
        (_missing, "cannot open"),
        (lambda p: _rewrite_header(p, format_version=2), "format version 2"),
        (lambda p: _rewrite_header(p, dimension=32), "payload size"),
        (lambda p: _rewrite_header(p, count=199), "payload size"),
        (lambda p: _rewrite_header(p, model_id="other-mod"), "expected"),
        (lambda p: _rewrite_header(p, namespace="org-x"), "expected"),
    ],
)
def test_damaged_snapshot_is_rebuilt(populated, damage, reason) -> None:  # type: ignore[no-untyped-def]
    index, db, x = populated
    index.snapshot(db.head)
    assert index.snapshot_path is not None
    damage(index.snapshot_path)
    loaded = fresh(index)
    report = loaded.load_or_rebuild(db.rows_since)
    assert report.source == "rebuild"
    assert reason in (report.reason or "")
    assert db.calls == [BEGINNING]
    assert live_ids(loaded, x[0]) == live_ids(index, x[0])
    assert 0 not in loaded


def test_wrong_dimension_or_storage_index_rebuilds(populated) -> None:  # type: ignore[no-untyped-def]
    index, db, _x = populated
    index.snapshot(db.head)
    for overrides in ({"storage": "float16"}, {"model_id": "v2"}):
        db.calls.clear()
        other = fresh(index, **overrides)
        report = other.load_or_rebuild(
            lambda p: [(i, v) for i, v in db.rows_since(p) if v is not None]
        )
        assert report.source == "rebuild"
        assert db.calls == [BEGINNING]
    wrong_dim = fresh(index, dimension=8)
    report = wrong_dim.load_or_rebuild(lambda p: [])
    assert (report.source, report.count) == ("rebuild", 0)
    assert "expected" in (report.reason or "")


def test_disk_full_keeps_previous_snapshot(populated) -> None:  # type: ignore[no-untyped-def]
    index, db, x = populated
    first = index.snapshot(db.head)
    assert index.snapshot_path is not None
    good = index.snapshot_path.read_bytes()
    db.add(index, list(range(300, 400)), x[300:])
    # RLIMIT_FSIZE makes write() fail with EFBIG once the file would pass the limit, as a
    # full disk does with ENOSPC; ignore SIGXFSZ, which would otherwise kill the process.
    previous_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (first.bytes + 1000, hard))
    try:
        with pytest.raises(SnapshotWriteError):
            index.snapshot(db.head)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous_handler)
    assert index.snapshot_path.read_bytes() == good
    assert [p.name for p in index.snapshot_path.parent.iterdir() if p.name != ".lock"] == [
        index.snapshot_path.name
    ]
    report = fresh(index).load_or_rebuild(db.rows_since)
    assert (report.source, report.position, report.count) == ("snapshot", first.position, 300)


def test_file_layout_is_pinned(tmp_path: Path) -> None:
    index = VectorIndex(
        "ns", dimension=2, model_id="m", storage="float16", snapshot_path=tmp_path / "s"
    )
    index.add([7], [[0.6, 0.8]], model_id="m")
    index.snapshot(41)
    raw = (tmp_path / "s").read_bytes()
    assert raw[:8] == MAGIC == b"WJHIDX\r\n"
    (length,) = struct.unpack("<I", raw[8:12])
    header = json.loads(raw[16 : 16 + length])
    assert header == {
        "count": 1,
        "dimension": 2,
        "format_version": 1,
        "model_id": "m",
        "namespace": "ns",
        "payload_bytes": 12,
        "payload_crc32": zlib.crc32(raw[16 + length :]),
        "position": 41,
        "storage": "float16",
    }
    assert raw[16 + length :] == struct.pack("<q", 7) + np.array([0.6, 0.8], "<f2").tobytes()
    assert len(raw) == 16 + length + 12


def test_snapshot_files_are_private_to_namespace(registry: IndexRegistry) -> None:
    a = registry.get_or_create("org/../a", dimension=D, model_id=MODEL)
    b = registry.get_or_create("org-b", dimension=D, model_id=MODEL)
    assert a.snapshot_path is not None and b.snapshot_path is not None
    assert a.snapshot_path.parent == b.snapshot_path.parent == registry.snapshot_dir
    assert a.snapshot_path != b.snapshot_path
    _: Callable[..., object] = os.fspath


def _vector_offset(raw: bytes) -> int:
    (length,) = struct.unpack("<I", raw[8:12])
    return 16 + length + 8 * int(json.loads(raw[16 : 16 + length])["count"])


@pytest.mark.parametrize("storage", ["float32", "float16"])
def test_vectors_start_on_a_page_boundary(tmp_path: Path, storage: str) -> None:
    for count in (1, 3, 1000):
        index = VectorIndex(
            "ns",
            dimension=D,
            model_id=MODEL,
            storage=storage,
            snapshot_path=tmp_path / "s",  # type: ignore[arg-type]
        )
        index.add(list(range(count)), unit_vectors(np.random.default_rng(count), count, D),
                  model_id=MODEL)  # fmt: skip
        index.snapshot(count)
        assert _vector_offset((tmp_path / "s").read_bytes()) % 4096 == 0


def test_unpadded_snapshot_still_loads(populated) -> None:  # type: ignore[no-untyped-def]
    """A snapshot whose vectors are not aligned (an older writer's) loads all the same."""
    index, db, x = populated
    index.snapshot(db.head)
    path = index.snapshot_path
    raw = path.read_bytes()
    (length,) = struct.unpack("<I", raw[8:12])
    head = raw[16 : 16 + length].rstrip(b" ") + b" "  # odd length: unaligned floats
    path.write_bytes(
        struct.pack("<8sII", MAGIC, len(head), zlib.crc32(head)) + head + raw[16 + length :]
    )
    loaded = fresh(index)
    report = loaded.load_or_rebuild(db.rows_since)
    assert (report.source, report.count) == ("snapshot", 200)
    assert _vector_offset(path.read_bytes()) % 4 != 0
    for probe in x[:5]:
        np.testing.assert_array_equal(
            loaded.search(probe, model_id=MODEL, k=20).ids,
            index.search(probe, model_id=MODEL, k=20).ids,
        )


def test_loaded_snapshot_is_mapped_copy_on_write(populated) -> None:  # type: ignore[no-untyped-def]
    """A float32 index loaded from a snapshot scans the file's pages in place: removing rows
    never writes to the file, and writing the next snapshot over it (a rename) leaves the
    loaded index whole."""
    index, db, x = populated
    index.snapshot(db.head)
    path = index.snapshot_path
    before = path.read_bytes()
    loaded = fresh(index)
    assert loaded.load_or_rebuild(db.rows_since).source == "snapshot"
    db.remove(loaded, [1, 2, 4])
    db.add(loaded, list(range(300, 340)), x[300:340])
    assert path.read_bytes() == before
    expected = sorted(set(range(300)) - set(range(0, 300, 3)) - {1, 2, 4} | set(range(300, 340)))
    assert live_ids(loaded, x[0]) == expected
    loaded.snapshot(db.head)  # renamed over the mapped file
    assert path.read_bytes() != before
    assert live_ids(loaded, x[0]) == expected
    for probe in x[300:305]:
        hit = loaded.search(probe, model_id=MODEL, k=1)
        assert hit.ids[0, 0] == np.flatnonzero((x == probe).all(axis=1))[0]
    again = fresh(index)
    assert again.load_or_rebuild(db.rows_since).source == "snapshot"
    assert live_ids(again, x[0]) == expected
    assert again.compact() == 0 and loaded.compact() == 3
    assert live_ids(loaded, x[0]) == expected
