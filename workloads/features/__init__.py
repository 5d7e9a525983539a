"""Compiled qlib features: Alpha158 with numba kernels, value for value equal to qlib's.

``kubequant.workloads.features.Alpha158`` is a drop-in for ``qlib.contrib.data.handler.Alpha158``
(same kwargs, columns, index, label and processors). See ``docs/features.md``.
"""

from kubequant.workloads.features.numba_cache import configure as _configure_numba_cache

_configure_numba_cache()

from kubequant.workloads.features.handler import Alpha158, Alpha158vwap  # noqa: E402

__all__ = ["Alpha158", "Alpha158vwap"]
