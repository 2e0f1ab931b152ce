"""Fixtures for the service-layer specifications: the domain verbs called directly, no HTTP.

The API suite's session `runtime` (one per database backend: SQLite, and PostgreSQL where
marked) and its real faces are re-exported here, since pytest only shows a conftest's
fixtures to the tests below it. Each test makes its own orgs, so tests share nothing but the
runtime. Callers are real: `new_admin` creates an org and authenticates its first admin key.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from app.crypto import Scope
from app.runtime import Runtime
from app.services.orgs import create_org
from app.services.principal import Principal, authenticate
from tests.app.api.conftest import backend_url, face_images, runtime

__all__ = ["backend_url", "face_images", "new_admin", "runtime"]


@pytest.fixture()
def new_admin(runtime: Runtime) -> Callable[..., Principal]:
    """Make a new org; return the principal its first admin key authenticates as."""

    def make(name: str = "Test Bank") -> Principal:
        _, key = create_org(runtime, name)
        return authenticate(runtime, key.plaintext, Scope.ADMIN)

    return make
