"""Locks, the search thread pool and the micro-batcher used by :class:`VectorIndex`."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from typing import Generic, TypeVar

import faiss

T = TypeVar("T")
R = TypeVar("R")


class RWLock:
    """Many readers or one writer; a waiting writer holds back new readers.

    Writers only hold it for the short moment they mutate the store, so preferring them keeps
    adds from starving under a steady stream of searches without stalling searches for long.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False
        self._waiting_writers = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._waiting_writers:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if self._readers == 0:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._waiting_writers += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._waiting_writers -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


class SearchPool:
    """A fixed pool of threads that help scan big indexes (the scan itself is C without the
    GIL, ``index/_scan.c``; the threads still start with one OpenMP thread each, so that
    nothing of FAISS's run on them could start more).

    A big index is shared between the caller and the pool threads by work stealing
    (:meth:`share`): every thread takes the next small piece until none is left, so the
    pieces go to whichever threads the kernel actually runs. A static split into one equal
    group per thread waits for its slowest group: with one of 2 cores busy (a capture loop),
    the group whose thread shares that core ran at half speed and the search took 1.8x numpy's
    (whose sgemv holds up better); measured on 2 cores, 1M x 512, see benchmarks/index.py.
    """

    def __init__(self, threads: int) -> None:
        if threads < 1:
            raise ValueError("threads must be >= 1")
        self.threads = threads
        self._executor = ThreadPoolExecutor(
            max_workers=threads,
            thread_name_prefix="wajah-index-search",
            initializer=faiss.omp_set_num_threads,
            initargs=(1,),
        )

    def map(self, fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
        if len(items) == 1:
            return [self._executor.submit(fn, items[0]).result()]
        futures: list[Future[R]] = [self._executor.submit(fn, item) for item in items]
        return [f.result() for f in futures]

    def share(self, work: Callable[[Iterator[T]], R], items: Sequence[T], threads: int) -> list[R]:
        """Run ``work`` on up to ``threads`` threads, the caller's and pool threads, over one
        shared queue of ``items`` (one thread: a pool thread alone).

        Each call of ``work`` gets the same iterator and consumes items from it until it is
        exhausted; it returns one result (e.g. its running top-k). A thread that starts late,
        because the pool is busy with other searches, finds fewer items or none, so a search
        never waits for a pool thread that has nothing left to do for it.
        """
        queue = _SharedIterator(items)
        helpers = max(1, min(threads, self.threads, len(items)))
        if helpers == 1:
            return [self._executor.submit(work, queue).result()]
        futures: list[Future[R]] = [self._executor.submit(work, queue) for _ in range(helpers - 1)]
        # The caller scans too (it is running now; a pool thread may first have to be woken):
        # back to back, 1M x 128 float16 on 2 cores took 10.1 ms at the median this way and
        # 12.3 with both scanning threads taken from the pool.
        try:
            mine = work(queue)
        finally:
            # Even when the caller's share failed: no helper may go on reading the segments
            # after the caller has let go of the index's read lock.
            wait(futures)
        return [mine, *(f.result() for f in futures)]

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True)


class _SharedIterator(Iterator[T]):
    """An iterator over a sequence that several threads may advance at once."""

    __slots__ = ("_items", "_lock", "_next")

    def __init__(self, items: Sequence[T]) -> None:
        self._items = items
        self._lock = threading.Lock()
        self._next = 0

    def __next__(self) -> T:
        with self._lock:
            i = self._next
            if i >= len(self._items):
                raise StopIteration
            self._next = i + 1
        return self._items[i]


class _Request(Generic[T, R]):
    __slots__ = ("done", "error", "item", "lead", "result")

    def __init__(self, item: T) -> None:
        self.item = item
        self.done = threading.Event()
        self.lead = False
        self.result: R | None = None
        self.error: BaseException | None = None


class MicroBatcher(Generic[T, R]):
    """Coalesces concurrent calls into one batched call.

    The first caller becomes the leader and runs a batch of everything pending; callers that
    arrive meanwhile queue up and are served by the next batch, whose leader is the oldest of
    them. A lone caller therefore pays no extra latency, and under load the batch size grows
    by itself to the number of requests in flight.

    One refinement keeps batches whole under steady load: when fewer calls are pending than
    the previous batch held, the leader waits for the rest, at most a tenth of the previous
    batch's run time and never more than ``max_linger_s``. Without it, 16 callers settle into
    alternating batches of 1 and 15 (the straggler that queued during a batch leads the next
    one alone, just before the 15 served callers come back), and a batch of one costs a full
    scan: on 2 cores, 1M x 512, 46 queries/s instead of 90-100. Bounding the wait by the run
    time keeps it negligible for small indexes, whose batches take a millisecond.
    """

    def __init__(
        self, run: Callable[[list[T]], list[R]], max_batch: int, max_linger_s: float = 0.005
    ) -> None:
        self._run = run
        self._max_batch = max_batch
        self._max_linger_s = max_linger_s
        self._lock = threading.Condition(threading.Lock())
        self._pending: list[_Request[T, R]] = []
        self._busy = False
        self._last_batch = 1
        self._last_seconds = 0.0

    def submit(self, item: T) -> R:
        request: _Request[T, R] = _Request(item)
        with self._lock:
            self._pending.append(request)
            self._lock.notify()
            lead = not self._busy
            self._busy = True
        if not lead:
            request.done.wait()
            if not request.lead:
                return self._outcome(request)
        self._run_batch()
        return self._outcome(request)

    @staticmethod
    def _outcome(request: _Request[T, R]) -> R:
        if request.error is not None:
            raise request.error
        assert request.result is not None
        return request.result

    def _run_batch(self) -> None:
        with self._lock:
            wanted = min(self._last_batch, self._max_batch)
            if len(self._pending) < wanted:
                linger = min(self._max_linger_s, self._last_seconds / 10)
                self._lock.wait_for(lambda: len(self._pending) >= wanted, linger)
            batch = self._pending[: self._max_batch]
            self._last_batch = len(batch)
            del self._pending[: self._max_batch]
        started = time.perf_counter()
        try:
            results = self._run([r.item for r in batch])
            for request, result in zip(batch, results, strict=True):
                request.result = result
        except BaseException as exc:
            for request in batch:
                request.error = exc
        finally:
            with self._lock:
                self._last_seconds = time.perf_counter() - started
                if self._pending:
                    successor = self._pending[0]
                    successor.lead = True
                    successor.done.set()
                else:
                    self._busy = False
            for request in batch:
                request.lead = False
                request.done.set()
