"""Following the change feed: this replica hears what other replicas committed.

A `FeedFollower` thread holds a PostgreSQL connection that LISTENs for the notifications
every change sends at commit (`app.storage.feed`) and applies them: an org's index catches
up, a watchlist's namespace is rebuilt, a cached org setting or API key is forgotten, the
key manager re-reads its state (a key rotated or destroyed elsewhere). It
blocks on the connection's socket between notifications (no polling). Whenever it
(re)connects it first catches up on everything by position, since notifications sent while
it was away are lost, and until then the replica's caches stay off. Searches do not depend
on it for correctness (they check positions themselves, see `app.services.indexing`); it
keeps them from having to catch up, and it is what makes a revoked key stop working here.

SQLite serves one process: there is nothing to follow, and no follower runs.
"""

from __future__ import annotations

import logging
import threading
import time

from app.errors import IndexNotCurrentError
from app.runtime import Runtime
from app.services import indexing
from app.services.webhook_delivery import DeliveryWorker
from app.storage import feed

log = logging.getLogger("wajah")

# Wait this long on the socket before checking whether we are asked to stop.
WAKE_S = 1.0
RECONNECT_BACKOFF_S = (0.1, 0.5, 1.0, 2.0, 5.0)


class FeedFollower:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="wajah-feed", daemon=True)
        self._connected = threading.Event()

    def start(self, timeout: float = 30.0) -> None:
        """Start following; returns once the first catch-up is done (or raises)."""
        self._thread.start()
        if not self._connected.wait(timeout):
            raise RuntimeError("the change feed did not connect in time")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                listener = feed.Listener(self.runtime.engine)
            except Exception:  # the database may be down: retry
                log.exception("change feed: cannot connect")
                failures += 1
                self._stop.wait(RECONNECT_BACKOFF_S[min(failures, len(RECONNECT_BACKOFF_S)) - 1])
                continue
            try:
                self._follow(listener)
                failures = 0
            except Exception:  # reconnect on any failure of the connection
                log.exception("change feed: connection lost; reconnecting")
                failures += 1
            finally:
                self._disconnected()
                listener.close()

    def _follow(self, listener: feed.Listener) -> None:
        runtime = self.runtime
        caught_up = indexing.catch_up_all(runtime)
        runtime.kms.refresh()
        runtime.api_keys.clear(enabled=True)
        runtime.org_settings.clear(enabled=True)
        runtime.feed.listening = True
        runtime.feed.connected_at = time.time()
        self._connected.set()
        log.info("change feed: listening (%d namespaces caught up)", caught_up)
        while not self._stop.is_set():
            for payload in listener.wait(WAKE_S):
                try:
                    apply_notification(runtime, payload)
                except IndexNotCurrentError:
                    # Busy catching up already; the next search checks positions itself.
                    log.warning("change feed: %s deferred (index busy)", payload)

    def _disconnected(self) -> None:
        runtime = self.runtime
        runtime.feed.listening = False
        # Deaf to changes: cached keys and settings could go stale.
        runtime.api_keys.clear(enabled=False)
        runtime.org_settings.clear(enabled=False)


def apply_notification(runtime: Runtime, payload: str) -> None:
    """Act on one notification (`kind:ident`, see `app.storage.feed`)."""
    kind, _, ident = payload.partition(":")
    runtime.feed.notifications += 1
    if kind == "org":
        indexing.catch_up_org(runtime, ident)
    elif kind == "wl":
        indexing.refresh_watchlist(runtime, ident)
    elif kind == "cfg":
        runtime.org_settings.forget(ident)
    elif kind == "key":
        runtime.api_keys.forget(ident)
    elif kind == "keys":
        runtime.kms.refresh()
    elif kind == "wh":
        for worker in runtime.background:
            if isinstance(worker, DeliveryWorker):
                worker.wake()
    else:
        log.warning("change feed: unknown notification %r", payload)
