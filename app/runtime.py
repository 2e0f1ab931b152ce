"""Everything the service holds for its lifetime, built once from `Settings`.

`Runtime` is a container: it opens the database (migrating it), the key manager, the object
store, the model pack, the inference pool and the index backend, and closes them again. It
holds things; it does nothing with them. Keeping the indexes in step with the database is
`app.services.indexing`'s job; `app.main`'s lifespan and the CLI call it after `start`.
"""

from __future__ import annotations

import logging
import secrets
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import crashsafe
from app.crypto import (
    AuditKey,
    EnvelopeCipher,
    FileKeyringStore,
    KeyManager,
    KeyringStore,
    ReferenceHasher,
    build_kms,
)
from app.inference import InferencePool, usable_cores
from app.settings import Settings
from app.storage import (
    DatabaseClaim,
    Engine,
    LocalObjectStore,
    ObjectStore,
    claim_database,
    create_engine_for,
    upgrade_database,
)
from app.storage.audit import SYSTEM_CHAIN
from app.storage.keyring import DatabaseKeyringStore
from app.storage.objects import DatabaseObjectStore
from index import IndexBackend, IndexRegistry, LoadReport
from models.imaging import ImageLimits, PixelBudget
from models.liveness import PadModelSlot
from models.pipeline import FacePipeline
from models.prepare import resolve_pack
from models.quality import QualityPolicy

log = logging.getLogger("wajah")

V = TypeVar("V")


def quality_policy(settings: Settings) -> QualityPolicy:
    return QualityPolicy(
        min_interocular_px=settings.min_interocular_px,
        min_detector_score=settings.min_detector_score,
        min_blur_variance=settings.min_blur_variance,
        max_yaw_degrees=settings.max_yaw_degrees,
        max_pitch_degrees=settings.max_pitch_degrees,
        multiple_faces=settings.multiple_faces,
    )


def keyring_store(settings: Settings, engine: Engine) -> KeyringStore | None:
    """Where the key manager keeps its state: on PostgreSQL a row of the database, so
    replicas that share it (and the key configuration) share the keys; otherwise None,
    `build_kms`'s file under `home/keys`."""
    return DatabaseKeyringStore(engine) if settings.uses_postgresql else None


def import_home_keyring(store: KeyringStore, settings: Settings) -> None:
    """A deployment that kept its keyring in `home/keys` before the database held it: the
    first start brings the document over, once, so what it sealed still opens."""
    legacy = FileKeyringStore(settings.home / "keys")
    document = legacy.load() if store.load() is None else None
    if document is not None:
        with store.mutate(lambda: document):
            pass
        log.warning("imported the keyring from %s into the database", legacy.location)


def open_key_manager(settings: Settings, engine: Engine) -> KeyManager:
    """The configured key manager over this deployment's keyring state (a migrated
    database's on PostgreSQL), with the system org that seals system audit details."""
    store = keyring_store(settings, engine)
    if store is not None:
        import_home_keyring(store, settings)
    kms = build_kms(settings, store=store)
    if not kms.has_org(SYSTEM_CHAIN):
        kms.create_org(SYSTEM_CHAIN)
    return kms


def object_store(settings: Settings, engine: Engine) -> ObjectStore:
    """Where sealed frames live (`WAJAH_OBJECT_STORE`; `auto`: the database on PostgreSQL,
    so replicas share them, the directory otherwise)."""
    choice = settings.object_store
    if choice == "auto":
        choice = "database" if settings.uses_postgresql else "local"
    if choice == "database":
        return DatabaseObjectStore(engine)
    return LocalObjectStore(settings.resolved_object_store_dir)


@dataclass
class IndexHealth:
    """What the last replay of the indexes found (served by `/readyz`)."""

    orgs: int = 0
    vectors: int = 0
    tampered: list[str] = field(default_factory=list)
    other_model: int = 0
    reports: dict[str, LoadReport] = field(default_factory=dict)


class ReplicaCache(Generic[V]):
    """Values read from the database, kept by this replica until a change says otherwise.

    Whoever changes a cached value forgets it here after committing, and the change feed
    makes every other replica forget it too (`app.services.feed`). While the feed is down a
    replica cannot hear of changes, so the cache is switched off (`enabled`) and every read
    goes to the database.

    A reader that fetched a value just before a change and stores it just after the change
    was forgotten would keep it forever: `generation` (taken before the read, checked by
    `put`) makes such a store a no-op.
    """

    def __init__(self, *, enabled: bool = True) -> None:
        self._values: dict[str, V] = {}
        self._lock = threading.Lock()
        self._generation = 0
        self.enabled = enabled

    def get(self, key: str) -> V | None:
        return self._values.get(key) if self.enabled else None

    def generation(self) -> int:
        return self._generation

    def put(self, key: str, value: V, generation: int) -> None:
        with self._lock:
            if self.enabled and generation == self._generation:
                self._values[key] = value

    def forget(self, key: str) -> None:
        with self._lock:
            self._generation += 1
            self._values.pop(key, None)

    def clear(self, *, enabled: bool | None = None) -> None:
        with self._lock:
            self._generation += 1
            self._values.clear()
            if enabled is not None:
                self.enabled = enabled


@dataclass
class FeedStatus:
    """The change feed as this replica follows it (served by `/readyz`)."""

    required: bool = False  # PostgreSQL: other replicas may write
    listening: bool = False
    connected_at: float | None = None
    notifications: int = 0


class Stoppable(Protocol):
    def stop(self) -> None: ...


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    kms: KeyManager
    cipher: EnvelopeCipher
    hasher: ReferenceHasher
    audit_key: AuditKey  # hashes audit rows, signs audit checkpoints
    objects: ObjectStore
    pipeline: FacePipeline
    model_id: str  # the pipeline's: every stored vector and index is pinned to it
    indexes: IndexBackend
    inference: InferencePool
    # Who this process is among replicas: kept in its home, so a restart is the same replica.
    replica_id: str
    pad: PadModelSlot  # passive liveness, loaded on first use (app.services.liveness)
    health: IndexHealth = field(default_factory=IndexHealth)
    # Per index namespace: the database position this replica's copy includes, and the lock
    # that serialises changing it (see `app.services.indexing`).
    positions: dict[str, int] = field(default_factory=dict)
    namespace_locks: dict[str, threading.RLock] = field(default_factory=dict)
    # API keys and org settings as read from the database (see `ReplicaCache`).
    api_keys: ReplicaCache[Any] = field(default_factory=ReplicaCache)
    org_settings: ReplicaCache[Any] = field(default_factory=ReplicaCache)
    feed: FeedStatus = field(default_factory=FeedStatus)
    # Threads started for a serving runtime (the feed follower), stopped before closing.
    background: list[Stoppable] = field(default_factory=list)
    claim: DatabaseClaim | None = None
    ready: bool = False
    serving: bool = True

    @classmethod
    def start(cls, settings: Settings, serving: bool = True) -> Runtime:
        """Open everything; the indexes start empty (`indexing.replay_all` fills them).

        `serving=False` is for CLI tools next to a running server: no index snapshots (the
        server holds their directory lock) and no solo pipeline.
        """
        settings.home.mkdir(parents=True, exist_ok=True)
        engine = create_engine_for(settings.resolved_database_url)
        # SQLite serves one process; with PostgreSQL any number of replicas may.
        claim = claim_database(engine) if serving else None
        upgrade_database(engine)
        kms = open_key_manager(settings, engine)
        pipeline, solo = _pipelines(settings, serving)
        return cls(
            settings=settings,
            engine=engine,
            kms=kms,
            cipher=EnvelopeCipher(kms),
            hasher=ReferenceHasher(kms),
            audit_key=AuditKey(kms),
            objects=object_store(settings, engine),
            pipeline=pipeline,
            model_id=pipeline.model_id,
            indexes=open_index_backend(settings, serving),
            inference=InferencePool(pipeline, solo, settings.inference_workers),
            # Until the feed follower listens, this replica would not hear of changes.
            api_keys=ReplicaCache(enabled=not settings.uses_postgresql),
            org_settings=ReplicaCache(enabled=not settings.uses_postgresql),
            feed=FeedStatus(required=settings.uses_postgresql),
            claim=claim,
            replica_id=_replica_id(settings.home),
            pad=PadModelSlot.prepared(settings.models_dir, settings.inference_threads),
            serving=serving,
        )

    def close(self) -> None:
        self.ready = False
        try:
            for worker in self.background:
                worker.stop()
            self.inference.shutdown()
            self.indexes.close()
        finally:
            self.kms.close()
            self.engine.dispose()
            if self.claim is not None:
                self.claim.release()


def open_index_backend(settings: Settings, serving: bool = True) -> IndexBackend:
    """The embedded exact index (snapshots in the home, only for a serving runtime), or the
    Milvus cluster `WAJAH_INDEX_URL` names (which keeps its own state: nothing local)."""
    if settings.index_url:
        from index.milvus import MilvusBackend, parse_url

        return MilvusBackend(parse_url(settings.index_url), prefix=settings.index_prefix)
    settings.resolved_index_dir.mkdir(parents=True, exist_ok=True)
    return IndexRegistry(
        settings.resolved_index_dir if serving else None, threads=settings.faiss_threads
    )


def _replica_id(home: Path) -> str:
    path = home / "replica-id"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        made = secrets.token_hex(8)
        crashsafe.write_bytes(path, made.encode())
        return made


def _pipelines(settings: Settings, serving: bool) -> tuple[FacePipeline, FacePipeline | None]:
    """The shared single-threaded pipeline, and the solo one where it pays off (see
    `app.inference`): only for a server's lone requests."""
    pack = resolve_pack(settings.model_pack, settings.models_dir, settings.model_dir)
    policy = quality_policy(settings)
    limits = ImageLimits(settings.max_image_bytes, settings.max_image_pixels)
    pipeline = FacePipeline.load(
        pack, threads=settings.inference_threads, policy=policy, limits=limits
    )
    solo_threads = settings.solo_inference_threads or usable_cores()
    solo = (
        FacePipeline.load(pack, threads=solo_threads, policy=policy, limits=limits)
        if serving and solo_threads > settings.inference_threads
        else None
    )
    # One budget for the process: the solo and shared pipelines decode side by side.
    pipeline.budget = PixelBudget(settings.decode_pixel_budget)
    if solo is not None:
        solo.budget = pipeline.budget
    return pipeline, solo
