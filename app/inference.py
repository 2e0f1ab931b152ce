"""The bounded pool that runs the face models, off the event loop.

Two ways to spend the cores on captures: one capture per core, each on single-threaded
sessions (the most captures per second), or one capture split across every core (the lowest
latency for that capture). A service wants the second when it is quiet and the first when it
is busy, so the pool holds both pipelines and picks per capture: a capture submitted while
its request is the only one in flight, and no other capture is running or waiting, gets the
`solo` pipeline, whose sessions split each graph over all the cores; every other capture gets
the shared single-threaded one. Requests count, not only captures: a request still parsing
its body or reading the database will submit a capture in a moment, and a solo capture that
it lands beside would share its cores with that one for the rest of its graph.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

from models.pipeline import FacePipeline

T = TypeVar("T")


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class InferencePool:
    def __init__(self, pipeline: FacePipeline, solo: FacePipeline | None, workers: int) -> None:
        self.pipeline = pipeline
        self.solo = solo
        self.workers = workers
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="wajah-inference")
        # Solo captures run on one thread of their own: it is always free when one is chosen
        # (nothing else is outstanding then), and the solo sessions are only ever called
        # from it, so whatever onnxruntime and malloc keep per calling thread is set up once.
        self._solo_executor = (
            ThreadPoolExecutor(1, thread_name_prefix="wajah-inference-solo") if solo else None
        )
        self._lock = threading.Lock()
        self._outstanding = 0  # submitted and not finished: waiting or running
        self._requests = 0  # requests in flight (see `request`)
        self.solo_runs = 0  # how many captures took the solo pipeline

    @contextmanager
    def request(self) -> Iterator[None]:
        """Mark a request in flight for as long as the block runs (the HTTP layer wraps
        every request in it)."""
        with self._lock:
            self._requests += 1
        try:
            yield
        finally:
            with self._lock:
                self._requests -= 1

    @property
    def outstanding(self) -> int:
        """Captures submitted and not finished (waiting or running): the queue depth."""
        return self._outstanding

    def submit(self, work: Callable[[FacePipeline], T]) -> Future[T]:
        """Run `work(pipeline)` on the pool: on the solo pipeline if nothing else is running
        or waiting and no other request is in flight, else on the shared one."""
        with self._lock:
            alone = self._solo_executor is not None and self._outstanding == 0
            alone = alone and self._requests <= 1
            self._outstanding += 1
            if alone:
                self.solo_runs += 1
        if alone:
            assert self._solo_executor is not None and self.solo is not None
            future = self._solo_executor.submit(work, self.solo)
        else:
            future = self._executor.submit(work, self.pipeline)
        # A cancelled future never runs, so the count is settled when it is done, not by it.
        future.add_done_callback(self._finished)
        return future

    def run(self, work: Callable[[FacePipeline], T]) -> T:
        return self.submit(work).result()

    def _finished(self, _: Future[T]) -> None:
        with self._lock:
            self._outstanding -= 1

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True)
        if self._solo_executor is not None:
            self._solo_executor.shutdown(wait=True)
