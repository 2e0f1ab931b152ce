"""Starting and stopping the service around its `Runtime`: what happens between opening the
parts and serving (indexes replayed from the database, the change feed followed, the
webhook delivery worker started), and
between serving and closing them (index snapshots written)."""

from __future__ import annotations

from app.runtime import Runtime
from app.services import indexing, webhook_delivery
from app.services.feed import FeedFollower
from app.services.residency import refused_orgs
from app.settings import Settings


def start_runtime(settings: Settings, serving: bool = True) -> Runtime:
    """Open the runtime and, for a server, replay every index from the database and (with
    PostgreSQL, where other replicas write too) follow the change feed.

    `serving=False` is for CLI tools next to a running server: indexes stay empty, no feed
    is followed and no snapshot is written (the server owns them).
    """
    runtime = Runtime.start(settings, serving=serving)
    try:
        if serving:
            # Orgs this region may not hold are named in the log; their requests get 403.
            refused_orgs(runtime)
            indexing.replay_all(runtime)
            if runtime.feed.required:
                follower = FeedFollower(runtime)
                runtime.background.append(follower)
                follower.start()
            # After the indexes: a round of deliveries may be waiting since the last stop.
            worker = webhook_delivery.start_worker(runtime)
            if worker is not None:
                runtime.background.append(worker)
    except BaseException:
        runtime.close()
        raise
    runtime.ready = True
    return runtime


def stop_runtime(runtime: Runtime) -> None:
    """Snapshot a server's indexes (the next start replays less), then close everything."""
    runtime.ready = False
    try:
        for worker in runtime.background:
            worker.stop()
        if runtime.serving:
            indexing.snapshot_all(runtime)
    finally:
        runtime.close()
