"""Fixtures shared by the test files."""

import pytest


@pytest.fixture(scope="session")
def cache(tmp_path_factory):
    """One tiny-model cache folder for the whole run: each tiny model is pretrained once, and every
    test loads a fresh copy of it from the folder (``policies.tiny_policy(config, cache)``)."""
    return tmp_path_factory.mktemp("cache")
