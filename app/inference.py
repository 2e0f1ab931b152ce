"""The bounded pool that runs the face models, off the event loop.

Two ways to spend the cores on captures: one capture per core, each on single-threaded
sessions (the most captures per second), or one capture split across every core (the lowest
latency for that capture). A service wants the second when it is quiet and the first when it
is busy, so the pool holds both pipelines and picks per capture: a capture that starts while
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
        self._lock = threading.Lock()
        self._outstanding = 0  # submitted and not finished: waiting or running
        self._requests = 0  # requests in flight (see `request`)
        self._solo_running = False
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

    def submit(self, work: Callable[[FacePipeline], T]) -> Future[T]:
        """Run `work(pipeline)` on the pool; the pipeline is chosen when it starts."""
        with self._lock:
            self._outstanding += 1
        future = self._executor.submit(self._run, work)
        # A cancelled future never runs `_run`, so the count is settled here, not there.
        future.add_done_callback(self._finished)
        return future

    def run(self, work: Callable[[FacePipeline], T]) -> T:
        return self.submit(work).result()

    def _run(self, work: Callable[[FacePipeline], T]) -> T:
        with self._lock:
            alone = (
                self.solo is not None
                and self._outstanding == 1
                and self._requests <= 1
                and not self._solo_running
            )
            if alone:
                self._solo_running = True
                self.solo_runs += 1
        if not alone:
            return work(self.pipeline)
        assert self.solo is not None
        try:
            return work(self.solo)
        finally:
            with self._lock:
                self._solo_running = False

    def _finished(self, _: Future[T]) -> None:
        with self._lock:
            self._outstanding -= 1

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True)
