"""The Milvus index backend: each namespace a collection on a Milvus server or cluster.

For galleries too large or too slow for one machine. The database stays the source of truth
and Milvus a cache of it, exactly as the embedded index is: ``wajah index rebuild`` refills it,
the change feed keeps it current (``app.services.indexing`` speaks only the protocol).

What lives on the server (format ``wajah-milvus/1``), per namespace:

* one collection, named from the namespace only (:func:`collection_name`): the backend's
  prefix, the namespace with every character outside ``[A-Za-z0-9]`` made ``_`` (at most 48),
  and the first 16 hex digits of its SHA-256, e.g. ``wajah_org_42_8c2f...``; so no caller text
  ever reaches a name, and two namespaces never share one;
* fields ``id`` (INT64, primary key, the caller's id) and ``vector`` (FLOAT_VECTOR of the
  namespace's dimension), one shard, a ``FLAT`` index with metric ``IP``: an exact scan, and
  inner product equals cosine on normalised vectors;
* the description, a JSON object ``{"format", "namespace", "model_id"}``: the pins, checked
  whenever a process opens the collection;
* the position marker: one row with a negative id, ``-1 - position``, and the unit vector
  ``e0``, written by :meth:`MilvusNamespaceIndex.snapshot` after the changes it covers, in the
  same collection (so in the same write-ahead log as the rows). Every search and count filters
  ``id >= 0``, so the marker is never a hit.

Milvus acknowledges an insert or delete once its write-ahead log (the message queue) holds
it; a restart, even after kill -9, finds it (measured on the 2.3.5 server). A snapshot is
therefore only the position marker; ``flush_on_snapshot`` also seals the growing segments
(slower, 2.5 s per collection on 2.3.5, and needed by nothing here). Collection properties
(``alter_collection_properties``) were not used for the position: on the 2.3.5 server a
property set just before a kill -9 was gone after the restart, while rows survived.

Consistency: a search must see every add and remove that returned before it began. Each
namespace keeps a guarantee timestamp, the server's time (``AllocTimestamp``) taken after its
last write or open, and every search, count and lookup passes it as ``guarantee_timestamp``
(consistency level "Customized"): the query node answers once it has applied everything up to
then. Milvus's "Session" level would not do: on 2.3.5 a delete returns no timestamp, so a
session read does not wait for it. The first read after a write waits for the server's next
time tick (``proxy.timeTickInterval``, 200 ms by default); later reads do not wait. Writes from
other processes become visible to a process when it re-applies them (``app.services.indexing``
catches every replica up by position) or opens the collection.

Server APIs used, all present in Milvus 2.3.5 and in later 2.x releases: CreateCollection
(schema, description, shards), CreateIndex (FLAT / IP), LoadCollection, GetLoadState,
DescribeCollection, HasCollection, DropCollection, Insert, Upsert (2.3+), Delete by
expression, Query (``id in [...]``, ``count(*)``, iterator by primary key), Search with an
expression filter and a guarantee timestamp, AllocTimestamp (2.3+), Flush. Client: pymilvus's
``MilvusClient`` (tested: pymilvus 3.0 against the 2.3.5 server).

Ties in score are ordered by ascending id, as the contract says: Milvus returns tied rows in
any order, so a search whose last returned score still ties the k-th asks again for more rows
until the tie is settled, then sorts by (-score, id).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .backend import (
    BEGINNING,
    IndexBackend,
    LoadReport,
    NamespaceIndex,
    Row,
    RowsSince,
    SearchResult,
    SnapshotInfo,
    check_search,
    validate_ids,
    validate_vectors,
)
from .errors import (
    DimensionMismatchError,
    DuplicateIdError,
    IndexUnavailableError,
    InvalidVectorError,
    ModelMismatchError,
    NamespaceNotFoundError,
    VectorIndexError,
)

FORMAT = "wajah-milvus/1"
ID_FIELD = "id"
VECTOR_FIELD = "vector"
#: Milvus refuses a search with a larger limit (``topk`` must be in 1..16384).
MILVUS_MAX_TOPK = 16_384
# Rows per insert/upsert request: 2,000 × 512 floats is 4 MB, well under gRPC's 64 MB limit.
_WRITE_BATCH = 2_000
# Ids per ``id in [...]`` expression, and queries per search request.
_ID_BATCH = 1_000
_QUERY_BATCH = 64
_PREFIX = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
_LIVE = f"{ID_FIELD} >= 0"
_MARKER = f"{ID_FIELD} < 0"
# Milvus's "Customized" consistency level: the request carries its own guarantee timestamp.
_CUSTOMIZED = "Customized"

T = TypeVar("T")


def collection_name(prefix: str, namespace: str) -> str:
    """The collection holding ``namespace``: derived from the namespace alone (see module
    docstring), valid in Milvus (letters, digits, ``_``; at most 255 characters)."""
    if not _PREFIX.fullmatch(prefix):
        raise ValueError("prefix must be a letter then up to 63 letters, digits or '_'")
    if not isinstance(namespace, str) or not namespace:
        raise ValueError("namespace must be a non-empty string")
    slug = re.sub(r"[^A-Za-z0-9]", "_", namespace)[:48]
    digest = hashlib.sha256(namespace.encode()).hexdigest()[:16]
    return f"{prefix}_{slug}_{digest}"


def parse_url(url: str) -> str:
    """``milvus://host:port`` (or ``http(s)://host:port``) as the URI pymilvus expects."""
    parts = urlsplit(url)
    if parts.scheme not in ("milvus", "http", "https") or not parts.hostname:
        raise ValueError("an index URL looks like milvus://host:19530")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError("an index URL has no path or query: milvus://host:19530")
    scheme = "https" if parts.scheme == "https" else "http"
    return f"{scheme}://{parts.hostname}:{parts.port or 19530}"


class MilvusBackend:
    """An :class:`~index.backend.IndexBackend` whose namespaces are Milvus collections.

    ``uri`` is ``http://host:port`` (see :func:`parse_url`); ``prefix`` starts every
    collection name, so that several deployments (or test runs) can share one cluster.
    ``timeout_s`` bounds every call, retries included: past it, or when the server cannot be
    reached at all, the call raises :class:`~index.errors.IndexUnavailableError` and changes
    nothing that the caller acknowledged (the service answers 503; the database still holds
    every change, and catching up replays it).

    The connection is opened on first use, so a service can start its other parts while the
    cluster is down. ``namespaces()`` lists the namespaces this process has opened, as the
    embedded registry does; the server may hold more.
    """

    def __init__(
        self,
        uri: str,
        *,
        prefix: str = "wajah",
        token: str = "",
        timeout_s: float = 10.0,
        flush_on_snapshot: bool = False,
    ) -> None:
        collection_name(prefix, "probe")  # validates the prefix now, not at first use
        self.uri = uri
        self.prefix = prefix
        self.timeout_s = float(timeout_s)
        self.flush_on_snapshot = flush_on_snapshot
        self._token = token
        self._client: Any = None
        self._lock = threading.RLock()
        self._indexes: dict[str, MilvusNamespaceIndex] = {}
        self._closed = False

    # -- the connection ---------------------------------------------------------------------

    @property
    def client(self) -> Any:
        """The pymilvus ``MilvusClient``, connected on first use."""
        with self._lock:
            if self._closed:
                raise VectorIndexError("this Milvus backend is closed")
            if self._client is None:
                self._client = self._call("connect", self._connect)
            return self._client

    def _connect(self) -> Any:
        from pymilvus import MilvusClient

        return MilvusClient(uri=self.uri, token=self._token, timeout=self.timeout_s)

    def _call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)``, one server call; a server that is down, slow or refusing
        becomes :class:`IndexUnavailableError` (the service's 503)."""
        from pymilvus import MilvusException

        try:
            return fn(*args, **kwargs)
        except MilvusException as exc:
            # After a lost connection pymilvus's client may stay broken (its own reconnect
            # can fail for good while the server is away): the next call connects anew.
            self._forget_client()
            raise IndexUnavailableError(
                f"Milvus at {self.uri} failed to {what}: {exc.message} (code {exc.code})"
            ) from exc

    def _forget_client(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            with suppress(Exception):  # closing a broken client may fail too; it is dropped
                client.close()

    def server_timestamp(self) -> int:
        """A timestamp from the server's oracle: every write acknowledged before this call is
        older than it."""
        # AllocTimestamp has no MilvusClient method; its connection handler has one.
        handler = self.client._get_connection()
        ts = self._call("allocate a timestamp", handler.alloc_timestamp, timeout=self.timeout_s)
        return int(ts or 0)

    # -- the protocol -----------------------------------------------------------------------

    def collection_name(self, namespace: str) -> str:
        return collection_name(self.prefix, namespace)

    def get_or_create(
        self, namespace: str, *, dimension: int, model_id: str
    ) -> MilvusNamespaceIndex:
        """Return the namespace's index, opening its collection or creating it (and waiting
        for it to load) on first use in this process.

        Raises :class:`DimensionMismatchError` or :class:`ModelMismatchError` if the
        namespace (here or on the server) is pinned otherwise.
        """
        name = self.collection_name(namespace)
        with self._lock:
            index = self._indexes.get(namespace)
        if index is None:
            index = self._open(namespace, name, dimension=int(dimension), model_id=model_id)
            with self._lock:
                index = self._indexes.setdefault(namespace, index)
        _check_pins(index.dimension, index.model_id, dimension, model_id)
        return index

    def _open(
        self, namespace: str, name: str, *, dimension: int, model_id: str
    ) -> MilvusNamespaceIndex:
        client, timeout = self.client, self.timeout_s
        exists = self._call("look up a collection", client.has_collection, name, timeout=timeout)
        if exists:
            found_dimension, found_model = self._pins(namespace, name)
            _check_pins(found_dimension, found_model, dimension, model_id)
        else:
            self._create(namespace, name, dimension=dimension, model_id=model_id)
        self._call("load a collection", client.load_collection, name, timeout=timeout)
        index = MilvusNamespaceIndex(self, namespace, name, dimension=dimension, model_id=model_id)
        index.observe_server()
        return index

    def _pins(self, namespace: str, name: str) -> tuple[int, str]:
        client, timeout = self.client, self.timeout_s
        info = self._call(
            "describe a collection", client.describe_collection, name, timeout=timeout
        )
        try:
            meta = json.loads(info.get("description") or "")
            dims = [f["params"]["dim"] for f in info["fields"] if f["name"] == VECTOR_FIELD]
            pins = (int(dims[0]), str(meta["model_id"]))
            ours = meta["format"] == FORMAT and meta["namespace"] == namespace
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise VectorIndexError(f"collection {name} was not made by wajah") from exc
        if not ours:
            raise VectorIndexError(f"collection {name} belongs to another namespace or format")
        return pins

    def _create(self, namespace: str, name: str, *, dimension: int, model_id: str) -> None:
        from pymilvus import DataType, MilvusClient

        if not 1 <= dimension <= 32_768:
            raise DimensionMismatchError("dimension must be 1..32768")
        description = json.dumps(
            {"format": FORMAT, "namespace": namespace, "model_id": model_id},
            separators=(",", ":"),
        )
        schema = MilvusClient.create_schema(
            auto_id=False, enable_dynamic_field=False, description=description
        )
        schema.add_field(ID_FIELD, DataType.INT64, is_primary=True)
        schema.add_field(VECTOR_FIELD, DataType.FLOAT_VECTOR, dim=dimension)
        params = MilvusClient.prepare_index_params()
        params.add_index(field_name=VECTOR_FIELD, index_type="FLAT", metric_type="IP")
        client, timeout = self.client, self.timeout_s
        # One shard: a shard is a write channel, and one org's write rate needs no more; the
        # read side scales by query nodes and segments, not shards.
        self._call(
            "create a collection",
            client.create_collection,
            name,
            schema=schema,
            num_shards=1,
            timeout=timeout,
        )
        # The index coordinator may not know a collection made a moment ago ("collection not
        # found", seen on 2.3.5 under load): ask again briefly.
        for attempt in range(20):
            try:
                self._call("index a collection", client.create_index, name, params, timeout=timeout)
                return
            except IndexUnavailableError as exc:
                if "not found" not in str(exc) or attempt == 19:
                    raise
                time.sleep(0.25)

    def get(self, namespace: str) -> MilvusNamespaceIndex:
        with self._lock:
            index = self._indexes.get(namespace)
        if index is None:
            raise NamespaceNotFoundError(f"no index for namespace {namespace!r}")
        return index

    def __contains__(self, namespace: object) -> bool:
        with self._lock:
            return namespace in self._indexes

    def namespaces(self) -> list[str]:
        with self._lock:
            return sorted(self._indexes)

    def drop(self, namespace: str) -> None:
        """Drop the namespace's collection on the server (its rows and position with it)."""
        with self._lock:
            if namespace not in self._indexes:
                raise NamespaceNotFoundError(f"no index for namespace {namespace!r}")
        name = self.collection_name(namespace)
        client, timeout = self.client, self.timeout_s
        self._call("drop a collection", client.drop_collection, name, timeout=timeout)
        with self._lock:
            self._indexes.pop(namespace, None)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            client, self._client = self._client, None
            self._indexes.clear()
        if client is not None:
            client.close()

    def __enter__(self) -> MilvusBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class MilvusNamespaceIndex:
    """One namespace's collection: the :class:`~index.backend.NamespaceIndex` contract over
    Milvus (see the module docstring for the layout, consistency and tie rules)."""

    def __init__(
        self, backend: MilvusBackend, namespace: str, collection: str, *, dimension: int,
        model_id: str,
    ) -> None:  # fmt: skip
        self.backend = backend
        self.namespace = namespace
        self.collection = collection
        self.dimension = dimension
        self.model_id = model_id
        # Serialises this process's writes to the namespace and the bookkeeping below.
        self._writer = threading.RLock()
        self._guarantee = 1
        # True when a write may have reached the server after the guarantee was taken.
        self._unobserved = True
        self._count: int | None = None

    # -- reads ------------------------------------------------------------------------------

    @property
    def count(self) -> int:
        """Live ids as this process sees the collection (cached until its next write)."""
        cached = self._count
        if cached is not None:
            return cached
        rows = self._query(_LIVE, ["count(*)"], what="count rows")
        counted = int(rows[0]["count(*)"]) if rows else 0
        self._count = counted
        return counted

    def contains(self, id_: int) -> bool:
        key = int(validate_ids([id_])[0])
        return bool(self._query(f"{ID_FIELD} == {key}", [ID_FIELD], what="look up an id"))

    def search(
        self,
        queries: ArrayLike,
        *,
        model_id: str,
        k: int = 10,
        min_score: float | None = None,
    ) -> SearchResult:
        check_search(self.model_id, model_id, k, min_score)
        q = validate_vectors(queries, self.dimension, "query")
        k = int(k)
        ids = np.full((len(q), k), -1, dtype=np.int64)
        scores = np.full((len(q), k), -np.inf, dtype=np.float32)
        for start in range(0, len(q), _QUERY_BATCH):
            for offset, hits in enumerate(self._top_k(q[start : start + _QUERY_BATCH], k)):
                kept = [h for h in hits if min_score is None or h[1] >= min_score]
                for j, (id_, score) in enumerate(kept):
                    ids[start + offset, j] = id_
                    scores[start + offset, j] = score
        return SearchResult(ids=ids, scores=scores)

    def _top_k(self, q: NDArray[np.float32], k: int) -> list[list[tuple[int, float]]]:
        """Best k per query, ties by ascending id.

        Asks for k + 1 rows: when the last one returned still ties the k-th, rows of that
        score may be missing (Milvus cuts ties anywhere), so it asks for more until one
        scores lower or the collection is exhausted, then sorts by (-score, id)."""
        limit = min(k + 1, MILVUS_MAX_TOPK)
        while True:
            answer = self._search(q, limit)
            rows = [sorted(((int(h["id"]), float(h["distance"])) for h in r), key=_by_rank)
                    for r in answer]  # fmt: skip
            tied = any(len(r) == limit and r[-1][1] >= r[k - 1][1] for r in rows)
            if not tied or limit >= MILVUS_MAX_TOPK:
                return [r[:k] for r in rows]
            limit = min(2 * limit, MILVUS_MAX_TOPK)

    def _search(self, q: NDArray[np.float32], limit: int) -> list[Any]:
        answer = self.backend._call(
            "search",
            self.backend.client.search,
            self.collection,
            data=list(q),
            filter=_LIVE,
            limit=limit,
            output_fields=[ID_FIELD],
            search_params={"metric_type": "IP"},
            timeout=self.backend.timeout_s,
            consistency_level=_CUSTOMIZED,
            guarantee_timestamp=self._read_guarantee(),
        )
        return list(answer)

    def _query(self, expr: str, fields: list[str], *, what: str) -> list[dict[str, Any]]:
        answer = self.backend._call(
            what,
            self.backend.client.query,
            self.collection,
            filter=expr,
            output_fields=fields,
            timeout=self.backend.timeout_s,
            consistency_level=_CUSTOMIZED,
            guarantee_timestamp=self._read_guarantee(),
        )
        return list(answer)

    def _present(self, ids: list[int]) -> set[int]:
        found: set[int] = set()
        for start in range(0, len(ids), _ID_BATCH):
            rows = self._query(
                _id_in(ids[start : start + _ID_BATCH]), [ID_FIELD], what="look up ids"
            )
            found.update(int(r[ID_FIELD]) for r in rows)
        return found

    def _live_ids(self) -> set[int]:
        """Every live id, paged by the server's query iterator (a rebuild's diff)."""
        self._read_guarantee()
        iterator = self.backend._call(
            "list ids",
            self.backend.client.query_iterator,
            self.collection,
            batch_size=MILVUS_MAX_TOPK,
            filter=_LIVE,
            output_fields=[ID_FIELD],
            timeout=self.backend.timeout_s,
        )
        found: set[int] = set()
        try:
            while page := self.backend._call("list ids", iterator.next):
                found.update(int(r[ID_FIELD]) for r in page)
        finally:
            iterator.close()
        return found

    def _read_guarantee(self) -> int:
        if self._unobserved:
            self.observe_server()
        return self._guarantee

    def observe_server(self) -> None:
        """Make later reads wait for everything the server acknowledged before now."""
        self._guarantee = max(self._guarantee, self.backend.server_timestamp())
        self._unobserved = False

    # -- writes -----------------------------------------------------------------------------

    def add(self, ids: ArrayLike, vectors: ArrayLike, *, model_id: str) -> None:
        _check_model(self.model_id, model_id)
        id_array = validate_ids(ids)
        v = validate_vectors(vectors, self.dimension, "vector")
        if len(v) != len(id_array):
            raise InvalidVectorError(f"{len(id_array)} ids but {len(v)} vectors")
        if len(np.unique(id_array)) != len(id_array):
            raise DuplicateIdError("an id appears twice in the batch")
        with self._writer:
            present = self._present(id_array.tolist())
            if present:
                raise DuplicateIdError(f"{len(present)} id(s) already present, e.g. {min(present)}")
            with self._writing():
                self._write("insert", id_array, v)

    def remove(self, ids: ArrayLike) -> int:
        wanted = sorted(set(validate_ids(ids).tolist()))
        with self._writer:
            live = sorted(self._present(wanted))
            with self._writing():
                self._delete(live)
            return len(live)

    def apply(self, rows: Iterable[Row]) -> int:
        final, applied = self._collapse(rows)
        with self._writing():
            self._apply_final(final)
        return applied

    def _collapse(self, rows: Iterable[Row]) -> tuple[dict[int, NDArray[np.float32] | None], int]:
        """Each id's last row (replay semantics), validated, and how many rows there were.
        Reads ``rows`` to the end before anything is written."""
        final: dict[int, NDArray[np.float32] | None] = {}
        applied = 0
        for id_, vector in rows:
            applied += 1
            key = int(validate_ids([id_])[0])
            final.pop(key, None)
            final[key] = (
                None if vector is None else validate_vectors(vector, self.dimension, "vector")[0]
            )
        return final, applied

    def _apply_final(self, final: dict[int, NDArray[np.float32] | None]) -> None:
        self._delete([i for i, v in final.items() if v is None])
        kept = [(i, v) for i, v in final.items() if v is not None]
        if kept:
            ids = np.fromiter((i for i, _ in kept), dtype=np.int64, count=len(kept))
            self._write("upsert", ids, np.stack([v for _, v in kept]))

    def _write(self, how: str, ids: NDArray[np.int64], vectors: NDArray[np.float32]) -> None:
        client = self.backend.client
        method = client.insert if how == "insert" else client.upsert
        for start in range(0, len(ids), _WRITE_BATCH):
            end = start + _WRITE_BATCH
            batch = [
                {ID_FIELD: int(i), VECTOR_FIELD: v}
                for i, v in zip(ids[start:end], vectors[start:end], strict=True)
            ]
            self.backend._call(
                f"{how} rows", method, self.collection, batch, timeout=self.backend.timeout_s
            )

    def _delete(self, ids: list[int], expr: str | None = None) -> None:
        exprs = (
            [expr]
            if expr
            else [_id_in(ids[s : s + _ID_BATCH]) for s in range(0, len(ids), _ID_BATCH)]
        )
        for e in exprs:
            self.backend._call(
                "delete rows",
                self.backend.client.delete,
                self.collection,
                filter=e,
                timeout=self.backend.timeout_s,
            )

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """One write at a time per namespace in this process. Afterwards (also after a
        failure: part of it may have reached the server) the count is read again and reads
        first take a new guarantee, so they see the write."""
        with self._writer:
            try:
                yield
            finally:
                self._count = None
                self._unobserved = True

    # -- position: "snapshots" --------------------------------------------------------------

    def recorded_position(self) -> int | None:
        """The position the last snapshot recorded, or None if none was."""
        markers = [
            int(r[ID_FIELD]) for r in self._query(_MARKER, [ID_FIELD], what="read the position")
        ]
        return max(-1 - m for m in markers) if markers else None

    def forget_position(self) -> None:
        """Delete the recorded position: the next :meth:`load_or_rebuild` rebuilds from
        ``BEGINNING`` in place (searches keep answering from the rows meanwhile)."""
        with self._writing():
            self._delete([], expr=_MARKER)

    def snapshot(self, position: int) -> SnapshotInfo:
        """Record ``position`` in the collection. Rows are durable in Milvus's log once
        written, so this writes only the position marker (and seals the collection's segments
        if the backend has ``flush_on_snapshot``)."""
        start = time.perf_counter()
        position = int(position)
        if position < 0:
            raise ValueError("position must be non-negative")
        marker = -1 - position
        e0 = np.zeros(self.dimension, dtype=np.float32)
        e0[0] = 1.0
        backend, timeout = self.backend, self.backend.timeout_s
        with self._writing():
            row = {ID_FIELD: marker, VECTOR_FIELD: e0}
            backend._call(
                "record a position", backend.client.upsert, self.collection, [row], timeout=timeout
            )
            self._delete([], expr=f"{_MARKER} and {ID_FIELD} != {marker}")
            if backend.flush_on_snapshot:
                backend._call("flush", backend.client.flush, self.collection, timeout=timeout)
        count = self.count
        return SnapshotInfo(
            path=Path(self.collection),
            count=count,
            position=position,
            bytes=count * self.dimension * 4,
            seconds=time.perf_counter() - start,
        )

    def load_or_rebuild(self, rows_since: RowsSince) -> LoadReport:
        """The recorded position plus ``rows_since(it)`` applied on top; or, with none
        recorded, ``rows_since(BEGINNING)`` as the whole contents (rows the server holds that
        those do not are deleted).

        The rows are read to the end before anything is written, so a failing source changes
        nothing. If the server fails part-way, the recorded position has not moved and a
        retry converges (rows are idempotent).
        """
        start = time.perf_counter()
        with self._writer:
            self.observe_server()  # see what other processes wrote before now
            position = self.recorded_position()
            loaded = self.count if position is not None else 0
            final, replayed = self._collapse(
                rows_since(BEGINNING if position is None else position)
            )
            with self._writing():
                if position is None:
                    self._delete(sorted(self._live_ids() - final.keys()))
                self._apply_final(final)
            return LoadReport(
                source="rebuild" if position is None else "snapshot",
                position=BEGINNING if position is None else position,
                loaded=loaded,
                replayed=replayed,
                count=self.count,
                seconds=time.perf_counter() - start,
                reason="no position recorded in Milvus" if position is None else None,
            )

    # -- validation -------------------------------------------------------------------------


def _id_in(ids: list[int]) -> str:
    return f"{ID_FIELD} in [{','.join(map(str, ids))}]"


def _by_rank(hit: tuple[int, float]) -> tuple[float, int]:
    return (-hit[1], hit[0])


def _check_model(pinned: str, model_id: str) -> None:
    if model_id != pinned:
        raise ModelMismatchError(f"namespace is pinned to model {pinned!r}, got {model_id!r}")


def _check_pins(dimension: int, model_id: str, want_dimension: int, want_model: str) -> None:
    if dimension != want_dimension:
        raise DimensionMismatchError(
            f"namespace is pinned to dimension {dimension}, not {want_dimension}"
        )
    if model_id != want_model:
        raise ModelMismatchError(f"namespace is pinned to model {model_id!r}, not {want_model!r}")


# mypy fails here, not in the service, if either class drifts from its protocol.
_MILVUS_BACKEND: type[IndexBackend] = MilvusBackend
_MILVUS_NAMESPACE_INDEX: type[NamespaceIndex] = MilvusNamespaceIndex
