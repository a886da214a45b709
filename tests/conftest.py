"""Shared pytest fixtures."""

from pathlib import Path

import pytest

# The real model files live beside the repo, in ../shared/models; a fresh clone has none.
SHARED_MODELS = Path(__file__).resolve().parents[1].parent / "shared" / "models"


@pytest.fixture(scope="session")
def shared_models():
    """Path of ../shared/models; skips the test when the folder is absent."""
    if not SHARED_MODELS.is_dir():
        pytest.skip("../shared/models not found: real-model tests need the shared model folder beside the repo")
    return SHARED_MODELS
