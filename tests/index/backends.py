"""The index backends that the shared tests run against.

A test that takes the ``backend`` or ``open_backend`` fixture (see ``conftest.py``) uses only
the :class:`index.IndexBackend` / :class:`index.NamespaceIndex` surface and runs once per entry
of ``BACKENDS``; tests of one backend's internals (snapshot files, memory mapping, locks,
segments) take ``registry`` or build a ``VectorIndex`` instead.

An entry opens a backend whose state lives under ``root``: opening the same root again after
``close()`` must find what the previous backend snapshotted, as a restarted replica does.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from index import IndexBackend, IndexRegistry

OpenBackend = Callable[[Path], IndexBackend]


def embedded(root: Path) -> IndexBackend:
    """The embedded exact index over FAISS, snapshots in a directory under ``root``."""
    return IndexRegistry(root / "snapshots", threads=2)


BACKENDS = [
    pytest.param(embedded, id="embedded"),
    # The Milvus backend joins here, for example as Milvus Lite in a file under ``root``
    # (with its marker registered in pyproject.toml):
    #   pytest.param(milvus, id="milvus", marks=pytest.mark.milvus),
]
