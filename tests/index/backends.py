"""The index backends that the shared tests run against.

A test that takes the ``backend`` or ``open_backend`` fixture (see ``conftest.py``) uses only
the :class:`index.IndexBackend` / :class:`index.NamespaceIndex` surface and runs once per entry
of ``BACKENDS``; tests of one backend's internals (snapshot files, memory mapping, locks,
segments) take ``registry`` or build a ``VectorIndex`` instead.

An entry opens a backend whose state lives under ``root``: opening the same root again after
``close()`` must find what the previous backend snapshotted, as a restarted replica does.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest

from index import IndexBackend, IndexRegistry

OpenBackend = Callable[[Path], IndexBackend]


def embedded(root: Path) -> IndexBackend:
    """The embedded exact index over FAISS, snapshots in a directory under ``root``."""
    return IndexRegistry(root / "snapshots", threads=2)


class Milvus:
    """The Milvus backend on the session's real server (the ``milvus_uri`` fixture binds
    ``uri``): each ``root`` is a collection-name prefix of its own, so tests and hypothesis
    examples never see each other's collections on the shared server."""

    #: Creating a collection takes about 2.5 s (the server waits for it to load): property
    #: tests run fewer, smaller examples on this backend.
    heavy = True
    test_prefix = "wt"

    def __init__(self, uri: str = "") -> None:
        self.uri = uri

    def bound(self, uri: str) -> Milvus:
        return Milvus(uri)

    def __call__(self, root: Path) -> IndexBackend:
        from index.milvus import MilvusBackend

        prefix = self.test_prefix + hashlib.sha256(str(root).encode()).hexdigest()[:12]
        return MilvusBackend(self.uri, prefix=prefix, timeout_s=60)


milvus = Milvus()

BACKENDS = [
    pytest.param(embedded, id="embedded"),
    pytest.param(milvus, id="milvus", marks=pytest.mark.milvus),
]
