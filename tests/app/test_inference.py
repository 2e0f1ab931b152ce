"""The inference pool: a lone capture runs on every core, concurrent ones one core each."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app.inference import InferencePool, usable_cores
from models.pipeline import FacePipeline


@pytest.fixture(scope="module")
def pipelines(default_pack: Any) -> tuple[FacePipeline, FacePipeline]:
    return FacePipeline.load(default_pack, threads=1), FacePipeline.load(default_pack, threads=2)


@pytest.fixture()
def pool(pipelines: tuple[FacePipeline, FacePipeline]) -> Any:
    pool = InferencePool(pipelines[0], pipelines[1], workers=2)
    yield pool
    pool.shutdown()


def test_a_lone_capture_runs_solo_and_embeds_like_one_thread(
    pool: InferencePool, single_face_path: Path
) -> None:
    data = single_face_path.read_bytes()
    alone = pool.run(lambda pipeline: (pipeline, pipeline.capture(data)))
    assert alone[0] is pool.solo and pool.solo_runs == 1
    one_thread = pool.pipeline.capture(data)
    # Splitting a graph over threads reorders float sums: the same face to the last bits.
    np.testing.assert_allclose(alone[1].embedding, one_thread.embedding, atol=1e-5)
    assert alone[1].quality == one_thread.quality


def test_a_capture_that_starts_while_another_runs_gets_one_core(pool: InferencePool) -> None:
    started, release = threading.Event(), threading.Event()
    seen: list[FacePipeline] = []

    def first(pipeline: FacePipeline) -> None:
        seen.append(pipeline)
        started.set()
        release.wait(10)

    running = pool.submit(first)
    assert started.wait(10)
    second = pool.submit(lambda pipeline: seen.append(pipeline))
    second.result(10)
    release.set()
    running.result(10)
    assert seen == [pool.solo, pool.pipeline]
    # Quiet again: the next capture is alone.
    assert pool.run(lambda pipeline: pipeline) is pool.solo


def test_a_capture_beside_another_request_gets_one_core(pool: InferencePool) -> None:
    """Another request in flight will submit a capture soon: neither runs solo."""
    with pool.request():
        assert pool.run(lambda pipeline: pipeline) is pool.solo
        with pool.request():
            assert pool.run(lambda pipeline: pipeline) is pool.pipeline
        assert pool.run(lambda pipeline: pipeline) is pool.solo


def occupy(pool: InferencePool, release: threading.Event) -> list[Any]:
    """Hold every thread of the pool: the first capture lands on the solo thread, the others
    on each shared worker."""
    started = threading.Semaphore(0)

    def hold(pipeline: FacePipeline) -> FacePipeline:
        started.release()
        release.wait(10)
        return pipeline

    blockers = [pool.submit(hold) for _ in range(pool.workers + 1)]
    for _ in blockers:
        assert started.acquire(timeout=10)
    return blockers


def test_waiting_captures_keep_everyone_on_one_core(pool: InferencePool) -> None:
    """Captures submitted while others run wait for a shared worker, even if they start
    when everything else has finished."""
    release = threading.Event()
    blockers = occupy(pool, release)
    queued = [pool.submit(lambda pipeline: pipeline) for _ in range(2)]
    release.set()
    assert all(f.result(10) is pool.pipeline for f in queued)
    assert [b.result(10) for b in blockers] == [pool.solo] + [pool.pipeline] * pool.workers


def test_solo_captures_run_on_one_thread_of_their_own(pool: InferencePool) -> None:
    threads = {pool.run(lambda _: threading.get_ident()) for _ in range(5)}
    assert len(threads) == 1 and pool.solo_runs == 5
    release = threading.Event()
    blockers = occupy(pool, release)
    shared = pool.submit(lambda _: threading.get_ident())
    release.set()
    assert shared.result(10) not in threads
    for blocker in blockers:
        blocker.result(10)


def test_a_cancelled_capture_is_not_counted_as_waiting(pool: InferencePool) -> None:
    release = threading.Event()
    blockers = occupy(pool, release)
    dropped = pool.submit(lambda pipeline: pipeline)
    assert dropped.cancel()
    release.set()
    for blocker in blockers:
        blocker.result(10)
    assert pool.run(lambda pipeline: pipeline) is pool.solo


def test_errors_reach_the_caller_and_free_the_solo_pipeline(pool: InferencePool) -> None:
    def fails(_: FacePipeline) -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        pool.run(fails)
    assert pool.run(lambda pipeline: pipeline) is pool.solo


def test_without_a_solo_pipeline_everything_runs_on_the_shared_one(
    pipelines: tuple[FacePipeline, FacePipeline],
) -> None:
    pool = InferencePool(pipelines[0], None, workers=1)
    try:
        assert pool.run(lambda pipeline: pipeline) is pipelines[0]
        assert pool.solo_runs == 0
    finally:
        pool.shutdown()


def test_usable_cores_is_at_least_one() -> None:
    assert usable_cores() >= 1


@pytest.mark.parametrize(
    ("serving", "solo_threads", "has_solo"),
    [(True, 2, True), (True, 1, False), (False, 2, False)],
)
def test_the_runtime_builds_a_solo_pipeline_only_to_serve_with_more_threads(
    tmp_path: Path, default_pack: Any, serving: bool, solo_threads: int, has_solo: bool
) -> None:
    import base64
    import os

    from app.services.lifecycle import start_runtime, stop_runtime
    from app.settings import Settings

    settings = Settings(
        home=tmp_path,
        root_key=base64.b64encode(os.urandom(32)).decode(),  # type: ignore[arg-type]
        model_cache_dir=default_pack.directory.parent,
        solo_inference_threads=solo_threads,
    )
    runtime = start_runtime(settings, serving=serving)
    try:
        assert (runtime.inference.solo is not None) is has_solo
    finally:
        stop_runtime(runtime)


FAULT_COUNT = """
import resource, sys
from pathlib import Path

import cv2

from app.inference import InferencePool
from app.main import use_one_malloc_arena
from models.imaging import decode_image, encode_jpeg
from models.packs import load_pack
from models.pipeline import FacePipeline

use_one_malloc_arena()  # as create_app does, before any thread starts
pack = load_pack(Path(sys.argv[1]))
frame = cv2.resize(decode_image(Path(sys.argv[2]).read_bytes()), (640, 480))
data = encode_jpeg(frame, 90)
pool = InferencePool(FacePipeline.load(pack, 1), FacePipeline.load(pack, 2), workers=2)
for _ in range(5):
    pool.run(lambda pipeline: pipeline.capture(data))
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    pool.run(lambda pipeline: pipeline.capture(data))
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20, pool.solo_runs)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc arenas")
def test_solo_captures_reuse_their_memory(default_pack: Any, single_face_path: Path) -> None:
    """With the server's one malloc arena, a capture's buffers stay mapped between captures.
    With an arena per thread, the solo thread's heap was unmapped after every 640×480
    capture and faulted in again: 1,800 page faults per capture, several milliseconds."""
    done = subprocess.run(
        [sys.executable, "-c", FAULT_COUNT, str(default_pack.directory), str(single_face_path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    faults, solo_runs = done.stdout.split()
    assert int(solo_runs) == 25
    assert float(faults) < 100
