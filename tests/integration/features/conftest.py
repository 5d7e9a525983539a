"""Fixtures of the compiled-features tests: qlib initialised on a bundle, one bundle at a time."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture
def use_qlib() -> Callable[[Path], None]:
    """Point qlib at a bundle (process-global, as qlib's ``init`` is)."""
    import qlib

    def _init(bundle: Path) -> None:
        qlib.init(
            provider_uri=str(bundle),
            region="cn",
            kernels=1,
            logging_level=logging.WARNING,
            clear_mem_cache=True,
        )

    return _init
