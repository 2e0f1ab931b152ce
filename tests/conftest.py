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


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private model cache for this test run (the default pack is prepared into it once)."""
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def default_pack(models_dir: Path):  # type: ignore[no-untyped-def]
    from models.prepare import prepare_default_pack

    return prepare_default_pack(models_dir)


@pytest.fixture(scope="session")
def pipeline(default_pack):  # type: ignore[no-untyped-def]
    from models.pipeline import FacePipeline

    return FacePipeline.load(default_pack)
