"""One real Milvus server for the test session: the ``milvus`` wheel's standalone 2.3.5.

The wheel carries the server binaries; ``MilvusServer.start`` unpacks them into a base
directory, writes a config with free ports and waits for the health check (about 8 s here).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# Test-only server settings. The proxy's time tick paces how soon a read may see a write (a
# read waits for the tick after the write, 200 ms by default); 50 ms keeps the suite quick.
TEST_SERVER_CONFIG: dict[str, Any] = {"proxy.timeTickInterval": 50}


def required() -> bool:
    """CI sets WAJAH_REQUIRE_MILVUS=1: a server that cannot start fails the run there."""
    return bool(os.environ.get("WAJAH_REQUIRE_MILVUS"))


@contextmanager
def running_server(base_dir: Path) -> Iterator[str]:
    """Start a Milvus standalone server under ``base_dir``; yield its URI; stop it."""
    from milvus import MilvusServer, MilvusServerConfig

    server = MilvusServer(MilvusServerConfig())
    server.set_base_dir(str(base_dir))
    for key, value in TEST_SERVER_CONFIG.items():
        server.config.set(key, value)
    try:
        server.start()
        yield f"http://127.0.0.1:{server.listen_port}"
    finally:
        server.stop()
