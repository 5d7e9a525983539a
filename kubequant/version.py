"""Version and API coordinates of kubequant."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("kubequant")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+source"

API_GROUP = "kubequant.io"
API_VERSION = "v1alpha1"
