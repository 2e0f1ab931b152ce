"""Everything the service holds for its lifetime, built once from `Settings`.

`Runtime` is a container: it opens the database (migrating it), the key manager, the object
store, the model pack, the inference pool and the index backend, and closes them again. It
holds things; it does nothing with them. Keeping the indexes in step with the database is
`app.services.indexing`'s job; `app.main`'s lifespan and the CLI call it after `start`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from app.crypto import EnvelopeCipher, KeyManager, ReferenceHasher, build_kms
from app.inference import InferencePool, usable_cores
from app.settings import Settings
from app.storage import Engine, LocalObjectStore, create_engine_for, upgrade_database
from app.storage.audit import SYSTEM_CHAIN
from index import IndexBackend, IndexRegistry, LoadReport
from models.imaging import ImageLimits
from models.pipeline import FacePipeline
from models.prepare import resolve_pack
from models.quality import QualityPolicy


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
    """What the last replay of the indexes found (served by `/readyz`)."""

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
    model_id: str  # the pipeline's: every stored vector and index is pinned to it
    indexes: IndexBackend
    inference: InferencePool
    health: IndexHealth = field(default_factory=IndexHealth)
    # One lock per index namespace (see `app.services.indexing.changing`).
    namespace_locks: dict[str, threading.Lock] = field(default_factory=dict)
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
        upgrade_database(engine)
        kms = build_kms(settings)
        if not kms.has_org(SYSTEM_CHAIN):
            kms.create_org(SYSTEM_CHAIN)
        pipeline, solo = _pipelines(settings, serving)
        settings.resolved_index_dir.mkdir(parents=True, exist_ok=True)
        return cls(
            settings=settings,
            engine=engine,
            kms=kms,
            cipher=EnvelopeCipher(kms),
            hasher=ReferenceHasher(kms),
            objects=LocalObjectStore(settings.resolved_object_store_dir),
            pipeline=pipeline,
            model_id=pipeline.model_id,
            indexes=IndexRegistry(
                settings.resolved_index_dir if serving else None, threads=settings.faiss_threads
            ),
            inference=InferencePool(pipeline, solo, settings.inference_workers),
            serving=serving,
        )

    def close(self) -> None:
        self.ready = False
        try:
            self.inference.shutdown()
            self.indexes.close()
        finally:
            self.kms.close()
            self.engine.dispose()


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
    return pipeline, solo
