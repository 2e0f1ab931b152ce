"""Shared fixtures: the real face images that ship inside the insightface wheel."""

from __future__ import annotations

from pathlib import Path

import insightface
import pytest

INSIGHTFACE_IMAGES = Path(insightface.__file__).parent / "data" / "images"


@pytest.fixture(scope="session")
def group_photo_path() -> Path:
    """t1.jpg: a group photo of six people."""
    return INSIGHTFACE_IMAGES / "t1.jpg"


@pytest.fixture(scope="session")
def single_face_path() -> Path:
    """Tom_Hanks_54745.png: one face."""
    return INSIGHTFACE_IMAGES / "Tom_Hanks_54745.png"
