"""Compiled qlib features: Alpha158 and Alpha360 with numba kernels, value for value equal to qlib's.

``kubequant.workloads.features.Alpha158`` (``Alpha360``) is a drop-in for qlib's handler of that name
(same kwargs, columns, index, label and processors). See ``docs/features.md``.
"""

from kubequant.workloads.features.numba_cache import configure as _configure_numba_cache

_configure_numba_cache()

from kubequant.workloads.features.handler import Alpha158, Alpha158vwap, Alpha360, Alpha360vwap  # noqa: E402

__all__ = ["Alpha158", "Alpha158vwap", "Alpha360", "Alpha360vwap"]
