"""Fixtures of the training integration tests: a small synthetic bundle."""

from __future__ import annotations

from pathlib import Path

import pytest
from training_manifests import SAMPLE

from kubequant.workloads.data.sample import write_sample_bundle


@pytest.fixture(scope="session")
def training_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eighteen months of thirty synthetic stocks."""
    out = tmp_path_factory.mktemp("training-bundle") / "bundle"
    write_sample_bundle(out, SAMPLE)
    return out
