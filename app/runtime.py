"""Everything the service holds for its lifetime, built once from `Settings`.

`Runtime.start` opens the database (migrating it), the key manager, the object store, the
model pack and the per-org indexes, and replays each index from the database. Nothing heavy
happens at import time; `app.main.create_app` calls this from its lifespan.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import sqlalchemy as sa
from numpy.typing import NDArray
from sqlalchemy.engine import Engine

from app.crypto import EnvelopeCipher, KeyManager, ReferenceHasher, build_kms
from app.inference import InferencePool, usable_cores
from app.settings import Settings
from app.storage import LocalObjectStore, create_engine_for, read_only, repo, upgrade_database
from app.storage.audit import SYSTEM_CHAIN
from app.storage.schema import enrollments, orgs
from index import IndexRegistry, LoadReport, VectorIndex, VectorIndexError
from models.imaging import ImageLimits
from models.pipeline import FacePipeline
from models.prepare import resolve_pack
from models.quality import QualityPolicy

log = logging.getLogger("wajah")

T = TypeVar("T")

# Index namespaces of shared watchlists; every other namespace is an org id.
WATCHLIST_PREFIX = "watchlist:"


def quality_policy(settings: Settings) -> QualityPolicy:
    return QualityPolicy(
        min_interocular_px=settings.min_interocular_px,
        min_detector_score=settings.min_detector_score,
        min_blur_variance=settings.min_blur_variance,
        max_yaw_degrees=settings.max_yaw_degrees,
        max_pitch_degrees=settings.max_pitch_degrees,
        multiple_faces=settings.multiple_faces,
    )


@dataclass
class IndexHealth:
    orgs: int = 0
    vectors: int = 0
    tampered: list[str] = field(default_factory=list)
    other_model: int = 0
    reports: dict[str, LoadReport] = field(default_factory=dict)


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    kms: KeyManager
    cipher: EnvelopeCipher
    hasher: ReferenceHasher
    objects: LocalObjectStore
    pipeline: FacePipeline
    indexes: IndexRegistry
    inference: InferencePool
    health: IndexHealth = field(default_factory=IndexHealth)
    ready: bool = False
    serving: bool = True
    _org_locks: dict[str, threading.Lock] = field(default_factory=dict)
    _locks_guard: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def start(cls, settings: Settings, serving: bool = True) -> Runtime:
        """Open everything. `serving=False` is for CLI tools next to a running server: no
        index snapshots (the server holds their directory lock), no index replay and no solo
        pipeline."""
        settings.home.mkdir(parents=True, exist_ok=True)
        engine = create_engine_for(settings.resolved_database_url)
        upgrade_database(engine)
        kms = build_kms(settings)
        if not kms.has_org(SYSTEM_CHAIN):
            kms.create_org(SYSTEM_CHAIN)
        pack = resolve_pack(settings.model_pack, settings.models_dir, settings.model_dir)
        policy = quality_policy(settings)
        limits = ImageLimits(settings.max_image_bytes, settings.max_image_pixels)
        pipeline = FacePipeline.load(
            pack, threads=settings.inference_threads, policy=policy, limits=limits
        )
        # The solo pipeline (see `app.inference`) only pays off for a server's lone requests.
        solo_threads = settings.solo_inference_threads or usable_cores()
        solo = (
            FacePipeline.load(pack, threads=solo_threads, policy=policy, limits=limits)
            if serving and solo_threads > settings.inference_threads
            else None
        )
        settings.resolved_index_dir.mkdir(parents=True, exist_ok=True)
        runtime = cls(
            settings=settings,
            engine=engine,
            kms=kms,
            cipher=EnvelopeCipher(kms),
            hasher=ReferenceHasher(kms),
            objects=LocalObjectStore(settings.resolved_object_store_dir),
            pipeline=pipeline,
            indexes=IndexRegistry(
                settings.resolved_index_dir if serving else None, threads=settings.faiss_threads
            ),
            inference=InferencePool(pipeline, solo, settings.inference_workers),
        )
        runtime.serving = serving
        if serving:
            runtime.replay_indexes()
        runtime.ready = True
        return runtime

    # --- database ---------------------------------------------------------------------------

    @contextmanager
    def read(self) -> Iterator[sa.Connection]:
        """A read-only transaction: on SQLite a deferred BEGIN, so readers never queue behind
        the writer (WAL) and a read nested inside a write transaction cannot deadlock it."""
        with self.engine.connect() as conn, read_only(conn).begin():
            yield conn

    # --- inference -------------------------------------------------------------------------

    def infer(self, work: Callable[[FacePipeline], T]) -> T:
        """Run `work(pipeline)` on the bounded inference pool (never on the event loop)."""
        return self.inference.run(work)

    def infer_later(self, work: Callable[[FacePipeline], T]) -> Future[T]:
        """Start `work(pipeline)` on the inference pool; the caller does its reads meanwhile."""
        return self.inference.submit(work)

    # --- per-org index ---------------------------------------------------------------------

    @property
    def model_id(self) -> str:
        return self.pipeline.model_id

    def org_index(self, org_id: str) -> VectorIndex:
        return self.indexes.get_or_create(
            org_id, dimension=self.pipeline.dimension, model_id=self.model_id
        )

    @contextmanager
    def org_writer(self, org_id: str) -> Iterator[None]:
        """Serialises "commit a change, then apply it to the index" per org.

        A snapshot taken under the same lock at the database's current seq therefore never
        claims a position whose change is committed but not yet in the index.
        """
        with self._locks_guard:
            lock = self._org_locks.setdefault(org_id, threading.Lock())
        with lock:
            yield

    def intact_vector(self, org_id: str, row: Any) -> NDArray[np.float32] | None:
        """An enrollment row's vector if its hashed reference verifies under the org's key.

        `row` needs `id`, `vector`, `hashed_ref` and `model_id`. None means erased or edited
        behind the service's back: such a row never takes part in a match.
        """
        if row.vector is None or row.hashed_ref is None:
            return None
        vector: NDArray[np.float32] = np.frombuffer(row.vector, dtype="<f4")
        ok = self.hasher.verify(
            bytes(row.hashed_ref),
            org_id=org_id,
            model_id=row.model_id,
            enrollment_id=row.id,
            vector=vector,
        )
        return vector if ok else None

    def index_rows_since(self, org_id: str) -> Callable[[int], Iterator[tuple[int, Any]]]:
        """The `rows_since` callback of an org index: verified adds, and removals."""

        def rows_since(position: int) -> Iterator[tuple[int, Any]]:
            stmt = (
                sa.select(
                    enrollments.c.id,
                    enrollments.c.vector_id,
                    enrollments.c.status,
                    enrollments.c.vector,
                    enrollments.c.hashed_ref,
                    enrollments.c.model_id,
                )
                .where(enrollments.c.org_id == org_id, enrollments.c.seq > position)
                .order_by(enrollments.c.seq)
            )
            with self.read() as conn:
                for row in conn.execute(stmt):
                    if row.status != "active" or row.vector is None:
                        yield int(row.vector_id), None
                        continue
                    if row.model_id != self.model_id:
                        self.health.other_model += 1
                        yield int(row.vector_id), None
                        continue
                    vector = self.intact_vector(org_id, row)
                    if vector is None:
                        # Tampered on disk: keep it out of the index, say so loudly.
                        log.error("enrollment %s failed its hashed-reference check", row.id)
                        self.health.tampered.append(row.id)
                        yield int(row.vector_id), None
                        continue
                    yield int(row.vector_id), vector

        return rows_since

    def index_committed(self, org_id: str, ids: list[int], vectors: Any) -> None:
        """Apply rows just committed to the org index (caller holds `org_writer`).

        The database is the truth and the index a cache: if the cache disagrees (it never
        should), it is rebuilt from the database instead of failing a committed request.
        """
        try:
            self.org_index(org_id).add(ids, vectors, model_id=self.model_id)
        except VectorIndexError:
            log.exception("index %s disagreed with the database; rebuilding it", org_id)
            self.org_index(org_id).load_or_rebuild(self.index_rows_since(org_id))

    def replay_indexes(self) -> None:
        """Load each org's snapshot and replay newer rows (or rebuild from the database)."""
        with self.read() as conn:
            org_ids = [r.id for r in conn.execute(sa.select(orgs.c.id))]
        health = IndexHealth(orgs=len(org_ids))
        self.health = health
        for org_id in org_ids:
            with self.org_writer(org_id):
                report = self.org_index(org_id).load_or_rebuild(self.index_rows_since(org_id))
            health.reports[org_id] = report
            health.vectors += report.count
            log.info(
                "index %s: %s, %d vectors (%d replayed) in %.2fs",
                org_id,
                report.source,
                report.count,
                report.replayed,
                report.seconds,
            )
        # Watchlist indexes depend on memberships and settings, not just on their rows:
        # always rebuilt from the database, never snapshotted.
        from app.services.watchlists import replay_all

        replay_all(self)

    def snapshot_indexes(self) -> None:
        for org_id in self.indexes.namespaces():
            if org_id.startswith(WATCHLIST_PREFIX):
                continue
            with self.org_writer(org_id):
                with self.read() as conn:
                    position = repo.current_seq(conn, org_id)
                self.indexes.get(org_id).snapshot(position)

    def close(self) -> None:
        self.ready = False
        try:
            if self.serving:
                self.snapshot_indexes()
        finally:
            self.inference.shutdown()
            self.indexes.close()
            self.kms.close()
            self.engine.dispose()
