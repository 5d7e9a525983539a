"""Version and API coordinates of kubequant."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("kubequant")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+source"

API_GROUP = "kubequant.io"
API_VERSION = "v1alpha1"

# The Ray release kubequant runs: pinned in pyproject.toml (ray[default,train,tune]==RAY_VERSION, a test
# checks), installed in the kubequant image, written as the RayCluster's rayVersion by the operator and
# compared with the cluster's Ray by the training driver at start (a mismatch is a clear error).
RAY_VERSION = "2.60.0"
